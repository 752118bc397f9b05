"""The HTTP path of the benchmark: schedule, summary, verdicts, comparisons, LiteLLM's config,
and the report's tables. Pure: no network, no processes."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import orjson
import pytest
import yaml

from bench import bench_http, bench_load
from bench import run as bench

T0 = 1_000.0


def raw(rate: float, duration: float, answers: dict[int, tuple[float, bool]],
        reported: list[float] | None = None, failures: dict[str, int] | None = None
        ) -> dict[str, Any]:
    """``load``'s raw output: request i sent on time, answered ``latency`` s after it was due."""
    n = round(rate * duration)
    return {"t0": T0, "rate": rate, "n": n, "sent_at": [T0 + i / rate for i in range(n)],
            "received": {i: [T0 + i / rate + lat, ok, 0.0, 0.0, 0.0]
                         for i, (lat, ok) in answers.items()},
            "reported_backend_ms": reported or [], "statuses": {}, "failures": failures or {}}


def step(rate: float, p50: float, p99: float, ok_rps: float | None = None, **kw: Any
         ) -> dict[str, Any]:
    return {"offered_rps": rate, "throughput_rps": rate if ok_rps is None else ok_rps,
            "e2e_ms": {"p50": p50, "p90": p99, "p99": p99, "max": p99}, "lost": 0, "errors": 0,
            **kw}


# -- the load generator's pure parts ---------------------------------------------------------------


def test_schedule_spaces_requests_evenly_from_zero() -> None:
    due = bench_http.schedule(50, 10)
    assert len(due) == 500
    assert due[0] == 0.0 and due[1] == pytest.approx(0.02) and due[-1] == pytest.approx(9.98)
    assert bench_http.schedule(3, 0.5) == [0.0, pytest.approx(1 / 3)]  # round(1.5) == 2


def test_chat_body_is_a_small_openai_chat_request() -> None:
    body = orjson.loads(bench_http.chat_body("default", "run.01", 7))
    assert body == {"model": "default", "messages": [
        {"role": "user", "content": "benchmark request 7 of run.01"}]}


def test_reported_backend_ms_reads_litellm_headers_only() -> None:
    h = {"x-litellm-response-duration-ms": "12.5", "x-litellm-overhead-duration-ms": "10.0"}
    assert bench_http.reported_backend_ms(h) == pytest.approx(2.5)
    assert bench_http.reported_backend_ms({**h, "x-litellm-overhead-duration-ms": "20"}) == 0.0
    assert bench_http.reported_backend_ms({}) is None
    assert bench_http.reported_backend_ms({**h, "x-litellm-response-duration-ms": "x"}) is None


def test_summarize_measures_from_the_scheduled_time_and_counts_ok_answers_only() -> None:
    answers = {i: (0.010, True) for i in range(100)}
    answers.update({i: (0.500, False) for i in range(100, 110)})  # 10 error answers
    m = bench_http.summarize(raw(50, 4, answers, reported=[1.0, 2.0, 3.0],
                                 failures={"timeout": 90}), duration=4)
    assert (m["sent"], m["replies"], m["ok"], m["errors"], m["lost"]) == (200, 110, 100, 10, 90)
    assert m["e2e_ms"]["p50"] == 10.0 and m["e2e_ms"]["max"] == 500.0
    # ok answers in [t0 + 1, t0 + 4): requests 50..99 (2 s of the 3 s window at 50/s)
    assert m["throughput_rps"] == pytest.approx(50 / 3, abs=0.1)
    assert m["reported_backend_ms"]["p50"] == 2.0
    assert m["failures"] == {"timeout": 90} and m["t0"] == T0
    assert "by_priority" not in m and "router_ms" not in m and "duplicates" not in m


def test_summarize_with_nothing_answered() -> None:
    m = bench_http.summarize(raw(10, 2, {}), duration=2)
    assert (m["ok"], m["lost"], m["throughput_rps"]) == (0, 20, 0.0)
    assert m["e2e_ms"]["p50"] is None
    assert bench_http.verdict(m) == ["p99 > 1 s", "lost", "replies < 95% of offered"]


def test_verdict_fails_a_step_on_any_error_answer() -> None:
    assert bench_http.verdict(step(100, 5, 20)) == []
    assert bench_http.verdict(step(100, 5, 20, errors=1)) == ["errors"]
    assert bench_http.verdict(step(100, 5, 1500)) == ["p99 > 1 s"]
    assert bench_http.verdict(step(100, 5, 20, ok_rps=94.9)) == ["replies < 95% of offered"]
    assert bench_http.verdict(step(100, 5, 20, lost=3)) == ["lost"]


# -- comparing targets ---------------------------------------------------------------------------


def targets(turnout_added: float = 4.0, lite_added: float = 11.0, t_max: float | None = 1200,
            l_max: float | None = 100) -> dict[str, Any]:
    return {
        "direct": {"fixed": step(50, 1.0, 3.0), "steps": [step(100, 1.5, 4.0)],
                   "max_sustainable_rps": 1200},
        "litellm": {"fixed": step(50, 1.0 + lite_added, 30.0), "steps": [step(100, 80, 900)],
                    "max_sustainable_rps": l_max},
        "turnout": {"fixed": step(50, 1.0 + turnout_added, 9.0), "steps": [step(100, 6, 12),
                                                                            step(200, 7, 20)],
                    "max_sustainable_rps": t_max},
    }


def test_added_is_the_difference_to_the_direct_call_at_the_same_rate() -> None:
    assert bench_http.added(step(50, 12.5, 40), step(50, 1.5, 4)) == {"p50": 11.0, "p99": 36.0}
    assert bench_http.added(step(50, 12.5, 40), None) == {"p50": None, "p99": None}
    ts = targets()
    bench_http.annotate(ts)
    assert ts["turnout"]["fixed"]["added_ms"] == {"p50": 4.0, "p99": 6.0}
    assert ts["turnout"]["steps"][0]["added_ms"] == {"p50": 4.5, "p99": 8.0}
    assert ts["turnout"]["steps"][1]["added_ms"] == {"p50": None, "p99": None}  # no direct at 200
    assert ts["direct"]["fixed"]["added_ms"] == {"p50": 0.0, "p99": 0.0}


def test_targets_met_compares_turnout_with_litellm() -> None:
    lat, sat = bench_http.targets_met(targets())
    assert (lat["turnout"], lat["litellm"], lat["met"]) == (4.0, 11.0, True)
    assert lat["ratio"] == pytest.approx(0.36)
    assert (sat["turnout"], sat["litellm"], sat["ratio"], sat["met"]) == (1200, 100, 12.0, True)
    lat, sat = bench_http.targets_met(targets(turnout_added=12.0, t_max=400))
    assert lat["met"] is False and sat["met"] is False and sat["ratio"] == 4.0


def test_targets_met_without_litellm_says_nothing() -> None:
    ts = targets()
    ts["litellm"] = {"not_measured": "not measured: pip failed"}
    lat, sat = bench_http.targets_met(ts)
    assert lat["met"] is None and lat["litellm"] is None
    assert sat["met"] is None and sat["ratio"] is None


# -- LiteLLM -------------------------------------------------------------------------------------


def test_litellm_config_points_one_model_at_the_mock() -> None:
    doc = yaml.safe_load(bench_http.litellm_config("http://127.0.0.1:8123/"))
    assert doc["model_list"] == [{"model_name": "echo", "litellm_params": {
        "model": "openai/echo", "api_base": "http://127.0.0.1:8123/v1",
        "api_key": "sk-bench-dummy"}}]
    assert doc["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    assert set(doc) == {"model_list", "general_settings"}  # no database, no callbacks


def test_litellm_env_carries_the_key_and_documented_switches_only() -> None:
    env = bench_http.litellm_env("sk-secret")
    assert env == {"LITELLM_MASTER_KEY": "sk-secret", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                   "LITELLM_LOG": "WARNING"}


def test_ensure_litellm_reuses_an_installed_venv(tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "litellm").write_text("")
    monkeypatch.setattr(bench_http, "installed_version", lambda venv: "1.2.3")

    def no_install(*a: Any, **kw: Any) -> None:
        raise AssertionError("nothing should be installed")

    monkeypatch.setattr(subprocess, "run", no_install)
    assert bench_http.ensure_litellm(tmp_path, "1.2.3", tmp_path / "log") == (
        tmp_path / "bin" / "litellm", "1.2.3")


def test_ensure_litellm_reports_a_failed_install(tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    venv, log = tmp_path / "venv", tmp_path / "install.log"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")  # exists: no new venv, just pip
    calls: list[list[str]] = []
    monkeypatch.setattr(bench_http, "installed_version", lambda venv: None)

    def pip(argv: list[str], stdout: Any, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        stdout.write(b"ERROR: No matching distribution found for litellm-proxy==9.9\n")
        stdout.flush()
        return subprocess.CompletedProcess(argv, 1)

    monkeypatch.setattr(subprocess, "run", pip)
    exe, why = bench_http.ensure_litellm(venv, "9.9", log)
    assert exe is None and "No matching distribution" in why and "9.9" in why
    assert len(calls) == 1 and calls[0][-1] == "litellm[proxy]==9.9"
    assert calls[0][0] == str(venv / "bin" / "python")  # never the project's .venv


# -- the report ----------------------------------------------------------------------------------


def http_result(litellm_measured: bool = True) -> dict[str, Any]:
    def measured(p50: float, rate: float = 50, **kw: Any) -> dict[str, Any]:
        m = step(rate, p50, p50 * 3, **kw)
        m.update(cores={"gateway": 0.1, "worker0": 0.2, "litellm": 0.5, "mock": 0.05,
                        "broker": 0.2, "loadgen": 0.05, "other": 0.1},
                 cpu_ms_per_ok={"gateway": 2.0, "worker0": 3.0, "litellm": 9.0, "mock": 0.5},
                 reported_backend_ms={"p50": None}, generator_lag_ms={"p99": 1.0})
        return m

    ts = {"direct": {"label": "direct", "processes": [], "fixed": measured(1.0),
                     "steps": [measured(1.0, 100)], "max_sustainable_rps": 100,
                     "limited_by": "not reached"},
          "litellm": {"label": "LiteLLM", "processes": ["litellm"], "fixed": measured(12.0),
                      "steps": [], "max_sustainable_rps": 50, "limited_by": "p99 > 1 s at 100/s"},
          "turnout": {"label": "turnout", "processes": ["gateway", "worker0"],
                      "fixed": measured(5.0), "steps": [measured(6.0, 100)],
                      "max_sustainable_rps": 100, "limited_by": "not reached"}}
    if not litellm_measured:
        ts["litellm"] = {"label": "LiteLLM", "not_measured": "not measured: no PyPI"}
    bench_http.annotate(ts)
    log = {"completed": {"x": 3}, "not_ok": 0, "events": {"info:started": 1}, "other": []}
    g = {"rate": 50, "targets": ts, "summary": bench_http.targets_met(ts),
         "litellm": {"version": "1.0", "venv": "/v", "command": "litellm --config c",
                     "env": {"LITELLM_LOG": "WARNING"}, "config": "model_list: []\n"},
         "mock_stats": {"requests": 10, "max_in_flight": 2},
         "peak_rss_mb": {"gateway": 50.0, "worker0": 70.0}, "worker_log": [log],
         "gateway_log": log}
    return {"run": "abc123", "elapsed_s": 1.0, "scenarios": {"gateway": g}}


def test_http_tables_render_every_target_and_the_targets() -> None:
    tables = bench_load.http_tables(http_result())
    assert [len(rows) for _, _, rows in tables] == [3, 3, 2, 2]
    for _, head, rows in tables:
        assert all(len(r) == len(head) for r in rows)
    fixed = {r[0]: r for r in tables[0][2]}
    assert fixed["turnout"][6] == "4.0 / 12.0" and fixed["turnout"][7] == "0.36x"
    assert fixed["turnout"][9] == "0.1+0.2" and fixed["turnout"][14] == 5.0
    assert fixed["direct"][14] == 0.5  # the direct target's CPU is the mock's
    targets = tables[2][2]
    assert targets[0][-1] == "yes" and targets[1][-1] == "**no**"  # 100/s is 2x, not 10x


def test_http_tables_with_litellm_not_measured() -> None:
    tables = bench_load.http_tables(http_result(litellm_measured=False))
    for _, head, rows in tables:
        assert all(len(r) == len(head) for r in rows)
    assert "not measured: no PyPI" in tables[0][2][1]
    assert [r[-1] for r in tables[2][2]] == ["-", "-"]
    assert bench_load.http_tables({"scenarios": {}}) == []


def test_kafka_tables_without_kafka_scenarios_are_empty() -> None:
    assert bench_load.tables(http_result()) == []


def test_splice_puts_a_new_section_after_the_kafka_results() -> None:
    start, end = bench_load.HSTART, bench_load.HEND
    text = f"# B\n\n{bench_load.START}\nold\n{bench_load.END}\n\n## Profile\n"
    out = bench_load._splice(text, start, end, f"{start}\nfirst\n{end}", after=bench_load.END)
    assert out.index("old") < out.index("first") < out.index("## Profile")
    again = bench_load._splice(out, start, end, f"{start}\nsecond\n{end}", after=bench_load.END)
    assert "second" in again and "first" not in again and again.count(start) == 1


def test_results_file_keeps_the_other_paths_earlier_scenarios(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(orjson.dumps({"run": "old", "scenarios": {
        "floor": {"steps": []}, "instant": {"steps": [1]}, "gateway": {"rate": 1}}}))
    merged = bench_load._merged({"run": "new", "scenarios": {"gateway": {"rate": 50}}}, path)
    assert merged["run"] == "new" and merged["scenarios"]["gateway"] == {"rate": 50}
    assert merged["scenarios"]["instant"] == {"from_run": "old", "steps": [1]}
    kafka = bench_load._merged({"run": "new", "scenarios": {"floor": {}, "slow": {}}}, path)
    assert kafka["scenarios"]["gateway"]["from_run"] == "old"
    assert "instant" not in kafka["scenarios"]
    assert bench_load._merged({"run": "x", "scenarios": {}}, tmp_path / "none.json")["run"] == "x"


def test_bench_accepts_the_gateway_scenario_and_its_options() -> None:
    a = bench.parse(["--scenarios", "gateway", "--http-ramp", "100,200", "--http-rate", "25"])
    assert a.scenarios == ["gateway"] and a.http_ramp == [100.0, 200.0] and a.http_rate == 25
    assert a.http_duration == 10 and a.http_ramp_duration == 6
