"""scripts/bench's options (--quick, the ramp's refinement, the replication scenario) and the
shape of its like-for-like report. Pure: no broker, no processes, no timing."""

from __future__ import annotations

from typing import Any

import pytest

from bench import bench_http, bench_load
from bench import run as bench


@pytest.fixture
def no_litellm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_http, "installed_version", lambda venv: None)


# -- options --------------------------------------------------------------------------------------


def test_quick_runs_the_kafka_ratios_and_writes_no_docs(no_litellm: None) -> None:
    a = bench.parse(["--quick"])
    assert a.quick and a.scenarios == ["instant"] and a.search
    assert a.rates == [500.0] and a.docs == "" and a.json == ""  # json: the run's own dir
    assert a.duration <= 5 and a.search_duration <= 4 and len(a.search_rates) <= 4
    assert not a.http_direct and a.refine > 0


def test_quick_adds_the_http_path_when_litellm_is_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_http, "installed_version", lambda venv: "1.108.7")
    assert bench.parse(["--quick"]).scenarios == ["instant", "gateway"]


def test_options_given_with_quick_win(no_litellm: None) -> None:
    a = bench.parse(["--quick", "--rates", "250", "--scenarios", "instant,gateway",
                     "--refine", "0"])
    assert a.rates == [250.0] and a.scenarios == ["instant", "gateway"] and a.refine == 0


def test_without_quick_the_defaults_are_the_full_run() -> None:
    a = bench.parse([])
    assert not a.quick and a.rates == [100.0, 250.0, 500.0] and a.refine == 0.1
    assert a.floor_to_failure and a.docs == "docs/benchmarks.md"
    assert "replication" not in a.scenarios and "gateway" in a.scenarios


def test_replication_is_a_scenario_and_unknown_ones_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    a = bench.parse(["--scenarios", "replication", "--cluster-bootstrap", "127.0.0.1:9440"])
    assert a.scenarios == ["replication"] and a.cluster_bootstrap == "127.0.0.1:9440"
    with pytest.raises(SystemExit):
        bench.parse(["--scenarios", "instant,nope"])
    assert "unknown scenarios: nope" in capsys.readouterr().err


@pytest.mark.parametrize(("lo", "hi", "frac", "want"), [
    (50, 75, 0.1, [55.0, 60.0, 65.0, 70.0]),
    (850, 1000, 0.1, [935.0]),
    (1000, 1500, 0.2, [1200.0, 1400.0]),
    (None, 75, 0.1, []),     # failed at its first rate: no lower bound to refine from
    (100, 110, 0.1, []),     # already within 10%
    (50, 75, 0.0, []),       # --refine 0
])
def test_refine_rates_fill_the_gap_in_steps_of_a_fraction(
        lo: float | None, hi: float, frac: float, want: list[float]) -> None:
    got = bench.refine_rates(lo, hi, frac)
    assert got == want
    for a, b in zip([lo, *got], [*got, hi], strict=False):
        if lo and frac:
            assert b / a <= 1 + frac + 1e-9 or b == hi  # each step at most frac of lo apart


def test_broker_pids_one_node_and_a_cluster() -> None:
    assert bench.broker_pids("kafka: running (pid 2447, bootstrap 127.0.0.1:9340)") == {
        "broker": 2447}
    status = ("node 1: running (pid 11, 127.0.0.1:9440, quorum port 9441)\n"
              "node 2: running (pid 12, 127.0.0.1:9442, quorum port 9443)\n"
              "node 3: running (pid 13, 127.0.0.1:9444, quorum port 9445)")
    assert bench.broker_pids(status) == {"broker1": 11, "broker2": 12, "broker3": 13}
    assert bench.broker_pids("kafka: not running") == {}


def test_a_clusters_nodes_are_summed_as_broker() -> None:
    got = bench.per_reply({"broker1": 1.0, "broker2": 2.0, "worker0": 0.0},
                          {"broker1": 1.5, "broker2": 3.0, "worker0": 1.0}, 1000,
                          ["broker1", "broker2", "worker0", "gone"])
    assert got == {"broker1": 0.5, "broker2": 1.0, "worker0": 1.0, "broker": 1.5}
    assert bench.with_brokers({"broker": 0.3, "echo": 0.1}) == {"broker": 0.3, "echo": 0.1}


# -- the like-for-like report -------------------------------------------------------------------


def kstep(tag: str, rate: float, p50: float, p99: float, cores: dict[str, float],
          cpu: dict[str, float], ok: float | None = None, **kw: Any) -> dict[str, Any]:
    return {"tag": tag, "offered_rps": rate, "throughput_rps": rate if ok is None else ok,
            "e2e_ms": {"p50": p50, "p90": p99, "p99": p99, "max": p99}, "lost": 0,
            "cores": cores, "cpu_ms_per_reply": cpu, "cpu_ms_per_ok": cpu, **kw}


def results() -> dict[str, Any]:
    floor = [kstep("f1", 500, 10, 20, {"echo": 0.4, "broker": 0.5}, {"echo": 0.8, "broker": 1.0})]
    inst = [kstep("t1", 500, 20, 50, {"worker0": 0.6, "broker": 0.4, "mock": 0.1},
                  {"worker0": 1.2, "broker": 0.8, "mock": 0.2}, floor_tag="f1")]
    search = {
        "floor": {"max_sustainable_rps": 1500, "limited_by": "lost at 2000/s", "steps": [
            kstep("f2", 1500, 9, 30, {"echo": 0.9, "broker": 0.9}, {"echo": 0.6, "broker": 0.6}),
            kstep("f3", 2000, 900, 3000, {}, {}, ok=1600, failed=["lost"])]},
        "instant": {"max_sustainable_rps": 1000, "limited_by": "p99 > 1 s at 1100/s", "steps": [
            kstep("t2", 1000, 30, 90, {"worker0": 0.8, "broker": 0.6}, {"worker0": 0.8,
                                                                         "broker": 0.6}),
            kstep("t3", 1100, 600, 1500, {}, {}, ok=1050, failed=["p99 > 1 s"])]}}
    lite_fixed = kstep("l1", 50, 15, 26, {"litellm": 0.8, "broker": 0.1}, {"litellm": 16.0,
                                                                           "broker": 2.0})
    turn_fixed = kstep("g1", 50, 12, 16, {"gateway": 0.2, "worker0": 0.3, "broker": 0.2},
                       {"gateway": 4.0, "worker0": 5.0, "broker": 3.0})
    gateway = {"targets": {
        "direct": {"label": "direct", "fixed": kstep("d1", 50, 1, 2, {}, {}), "steps": [],
                   "max_sustainable_rps": 1200, "limited_by": "not reached"},
        "litellm": {"label": "LiteLLM", "fixed": lite_fixed, "max_sustainable_rps": 60,
                    "limited_by": "p99 > 1 s at 65/s", "steps": [
                        kstep("l2", 60, 40, 300, {"litellm": 1.0}, {"litellm": 16.5})]},
        "turnout": {"label": "turnout", "fixed": turn_fixed, "max_sustainable_rps": 900,
                    "limited_by": "replies < 95% at 1000/s", "steps": [
                        kstep("g2", 900, 30, 100, {"gateway": 0.4, "worker0": 0.6, "broker": 0.4},
                              {"gateway": 0.5, "worker0": 0.7, "broker": 0.5})]}}}
    return {"run": "abc123", "scenarios": {"floor": {"steps": floor},
                                           "instant": {"steps": inst, "search": search},
                                           "gateway": gateway}}


def test_headline_compares_each_path_with_its_own_baseline() -> None:
    kafka, http = bench_load.headline(results())
    assert kafka["path"] == "Kafka path" and list(kafka["systems"]) == ["floor", "turnout"]
    assert http["path"] == "HTTP path" and list(http["systems"]) == ["litellm", "turnout"]
    t = kafka["systems"]["turnout"]
    assert t["max_sustainable_rps"] == 1000 and t["peak_rps"] == 1050
    assert t["processes"] == ["worker", "Kafka broker"]  # the mock backend is not the router
    assert t["cpu_ms"] == 2.0 and t["cores"] == 1.0 and t["cpu_ms_at_max"] == 1.4
    assert kafka["ratio"]["max_sustainable_rps"] == 0.667
    assert kafka["ratio"]["cpu_ms"] == 1.11
    lt, tt = http["systems"]["litellm"], http["systems"]["turnout"]
    assert lt["processes"] == ["LiteLLM proxy (1 worker)"]
    assert tt["processes"] == ["gateway", "worker", "Kafka broker"]
    assert tt["cpu_ms"] == 12.0 and lt["cpu_ms"] == 16.0 and tt["cores_at_max"] == 1.4
    assert http["ratio"]["max_sustainable_rps"] == 15.0
    assert http["ratio"]["cpu_ms_at_max"] == 0.103  # three figures: a small ratio is not 0


def test_headline_leaves_out_a_path_this_run_did_not_measure() -> None:
    res = results()
    del res["scenarios"]["gateway"]
    assert [h["path"] for h in bench_load.headline(res)] == ["Kafka path"]
    res = results()
    res["scenarios"]["gateway"]["from_run"] = "older1"  # merged in from an earlier run
    assert [h["path"] for h in bench_load.headline(res)] == ["Kafka path"]
    del res["scenarios"]["instant"]["search"]
    assert bench_load.headline(res) == [] and bench_load.headline_tables(res) == []


def test_headline_table_has_a_ratio_row_per_path() -> None:
    [(title, head, rows)] = bench_load.headline_tables(results())
    assert "abc123" in title and len(head) == 10
    assert all(len(r) == len(head) for r in rows)
    ratios = [r for r in rows if "ratio" in r[1]]
    assert [r[0] for r in ratios] == ["Kafka path", "HTTP path"]
    assert ratios[1][3] == "15x"


def test_replication_table_one_node_against_three() -> None:
    def system(rate: float, p99: float, brokers: float) -> dict[str, Any]:
        fixed = kstep("x", 500, 10, p99, {"echo": 0.3, "worker0": 0.5, "broker": brokers},
                      {"echo": 0.5, "worker0": 1.0, "broker": brokers})
        return {"fixed": fixed, "search": {"max_sustainable_rps": rate, "limited_by": "lost",
                                           "steps": []}}

    topics = {"brokers": 3, "t": {"replication_factor": 3, "min.insync.replicas": "2"}}
    rep = {"rate": 500, "clusters": {
        "1 node": {"brokers": ["broker"], "floor": system(2000, 20, 0.5),
                   "turnout": system(1000, 50, 0.5), "topics": {"brokers": 1, "t": {
                       "replication_factor": 1, "min.insync.replicas": "1"}}},
        "3 nodes": {"brokers": ["broker1", "broker2", "broker3"], "floor": system(1000, 40, 1.5),
                    "turnout": system(800, 100, 1.5), "topics": topics}}}
    [(_, head, rows), (_, rhead, ratio)] = bench_load.replication_tables(
        {"run": "r", "scenarios": {"replication": rep}})
    assert [r[:3] for r in rows] == [["1 node", bench_load.SYSTEM_LABELS["floor"], "1 / 1"],
                                     ["1 node", "turnout", "1 / 1"],
                                     ["3 nodes", bench_load.SYSTEM_LABELS["floor"], "3 / 2"],
                                     ["3 nodes", "turnout", "3 / 2"]]
    assert all(len(r) == len(head) for r in rows)
    assert ratio[1][0] == "turnout" and ratio[1][1] == "0.8x" and ratio[1][2] == "1x / 2x"
    assert ratio[0][1] == "0.5x" and len(rhead) == 4


def fake_steps(capacity: float) -> tuple[list[float], Any]:
    """A system that sustains up to ``capacity`` req/s; the rates it was offered."""
    asked: list[float] = []

    def step(rate: float) -> dict[str, Any]:
        asked.append(rate)
        return {"offered_rps": rate, "failed_if": rate > capacity}

    return asked, step


def fails(m: dict[str, Any]) -> list[str]:
    return ["replies < 95% of offered"] if m["failed_if"] else []


def test_knee_steps_up_by_the_fraction_until_a_step_fails() -> None:
    asked, step = fake_steps(63)
    r = {"steps": [], "max_sustainable_rps": 50, "limited_by": "p99 > 1 s at 75/s"}
    bench.knee(step, fails, r, 75, 0.1)
    assert asked == [55.0, 60.0, 65.0]  # 60 passed: the knee lies in (60, 65], within 10%
    assert r["max_sustainable_rps"] == 60.0
    assert r["limited_by"] == "replies < 95% of offered at 65/s"
    assert [m["offered_rps"] for m in r["steps"]] == [55.0, 60.0, 65.0]


def test_knee_below_a_first_rate_that_failed_starts_from_a_quarter() -> None:
    asked, step = fake_steps(30)
    r = {"steps": [], "max_sustainable_rps": None, "limited_by": "p99 > 1 s at 50/s"}
    bench.knee(step, fails, r, 50, 0.1)
    assert asked == [12.5, 25.0, 27.5, 30.0, 32.5] and r["max_sustainable_rps"] == 30.0
    asked, step = fake_steps(5)
    r = {"steps": [], "max_sustainable_rps": None, "limited_by": "x"}
    bench.knee(step, fails, r, 50, 0.1)
    assert asked == [12.5] and r["max_sustainable_rps"] is None


def test_knee_does_nothing_when_refinement_is_off_or_the_gap_is_small() -> None:
    asked, step = fake_steps(1000)
    r = {"steps": [], "max_sustainable_rps": 100, "limited_by": "x at 150/s"}
    bench.knee(step, fails, r, 150, 0)
    bench.knee(step, fails, r, 105, 0.1)
    assert asked == [] and r["max_sustainable_rps"] == 100 and r["limited_by"] == "x at 150/s"


def test_the_report_states_how_much_other_work_loaded_the_machine() -> None:
    res = results()
    res["machine"] = {"nproc": 2}
    res["scenarios"]["floor"]["steps"][0]["cores"]["other"] = 1.5
    res["scenarios"]["instant"]["steps"][0]["cores"]["other"] = 0.5
    [line] = bench_load.other_load(res)
    assert "1.00 cores on average during the 2 measured steps (max 1.50) of the 2" in line
    assert bench_load.other_load({"scenarios": {}, "machine": {"nproc": 2}}) == []


def searcher(capacity: dict[str, float]) -> tuple[Any, list[tuple[str, float]]]:
    """A Bench whose steps pass up to each system's capacity (no processes, no broker)."""
    import argparse

    b = object.__new__(bench.Bench)
    b.args = argparse.Namespace(search_rates=[600.0, 1000.0, 2000.0, 3000.0], refine=0.1,
                                floor_to_failure=True, search_duration=1.0)
    asked: list[tuple[str, float]] = []

    def step(system: bench.System, label: str, rate: float, duration: float) -> dict[str, Any]:
        asked.append((system.name, rate))
        ok = rate <= capacity[system.name]
        return kstep(label, rate, 10, 20 if ok else 2000, {}, {}, ok=rate if ok else rate / 2,
                     generator_lag_ms={"p99": 1.0})

    b.step = step  # type: ignore[method-assign]
    b.wait_idle = lambda pids: 0.0  # type: ignore[method-assign]
    return b, asked


def test_search_ramps_the_floor_to_its_own_failure_and_refines_both_knees() -> None:
    b, asked = searcher({"floor": 2100, "turnout": 700})
    floor, turnout = bench.System("floor", "t", {}), bench.System("turnout", "t", {})
    fixed = {"floor": [kstep("f", 500, 10, 20, {}, {})],
             "turnout": [kstep("t", 500, 10, 20, {}, {})]}
    res = b.search(floor, turnout, fixed)
    # turnout: 600 passes, 1000 fails, then 660 passes and 720 fails (steps of 10% of 600)
    assert [r for n, r in asked if n == "turnout"] == [600.0, 1000.0, 660.0, 720.0]
    assert res["turnout"]["max_sustainable_rps"] == 660.0
    assert res["turnout"]["limited_by"] == "p99 > 1 s, replies < 95% of offered at 720/s"
    # the floor goes on past turnout's failure to its own: 3000 fails, 2200 fails
    assert [r for n, r in asked if n == "floor"] == [600.0, 1000.0, 2000.0, 3000.0, 2200.0]
    assert res["floor"]["max_sustainable_rps"] == 2000.0
    assert [m["offered_rps"] for m in res["floor"]["steps"]] == [600, 1000, 2000, 2200, 3000]


def test_search_treats_a_failure_below_a_passing_fixed_rate_as_noise() -> None:
    b, asked = searcher({"floor": 1200, "turnout": 1200})
    floor, turnout = bench.System("floor", "t", {}), bench.System("turnout", "t", {})
    noisy = kstep("f2", 250, 10, 1009.6, {}, {})  # p99 just over 1 s at 250, then 500 passes
    fixed = {"floor": [kstep("f1", 100, 10, 20, {}, {}), noisy, kstep("f3", 500, 10, 20, {}, {})],
             "turnout": [kstep("t", 500, 10, 20, {}, {})]}
    res = b.search(floor, turnout, fixed)
    assert ("floor", 600.0) in asked and ("floor", 1000.0) in asked
    assert res["floor"]["max_sustainable_rps"] == 1200.0  # 1000, then 1100, 1200 by 10%
