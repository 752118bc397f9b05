"""The benchmark's HTTP path: an open-loop OpenAI-style load generator and the LiteLLM baseline.

    python -m bench.bench_http load --url http://127.0.0.1:8080 --model default \\
        --rate 50 --duration 10 [--key-env VAR] [--out raw.json]

``load`` sends ``POST <url>/v1/chat/completions`` number ``i`` at ``t0 + i / rate`` by the wall
clock, never waiting for earlier answers (aiohttp, up to ``--connections`` connections), and
prints one JSON line: sent, ok, errors, ok replies/s over the steady window, latency from the
*scheduled* time (so generator lag counts against the target) and, when the target reports it,
the backend's own time. The API key is read from the environment variable named by
``--key-env``, never from the command line.

bench.run's ``gateway`` scenario runs it against the mock backend directly, LiteLLM's proxy
(one worker, in its own virtualenv: ``ensure_litellm``) and turnout's gateway with one worker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from bench import bench_load

# The newest litellm whose [proxy] extra installs from PyPI on Python 3.11 (checked 2026-11-30:
# 1.108.8 to 1.110.2 pin litellm-enterprise / litellm-proxy(-extras) versions PyPI does not have).
LITELLM_VERSION = "1.108.7"
LITELLM_MODEL = "echo"  # the model_name LiteLLM serves; it calls the mock's "echo"
LITELLM_KEY_ENV = "LITELLM_MASTER_KEY"


# -- the load generator ---------------------------------------------------------------------------


def schedule(rate: float, duration: float) -> list[float]:
    """When each request is due, in s after t0: ``i / rate``, ``round(rate * duration)`` of them."""
    return [i / rate for i in range(round(rate * duration))]


def chat_body(model: str, tag: str, i: int) -> bytes:
    """A small OpenAI chat completion request, unique per request."""
    content = f"benchmark request {i} of {tag}"
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": content}]})


def reported_backend_ms(headers: Mapping[str, str]) -> float | None:
    """The backend's own time if the response says: LiteLLM's duration minus its overhead.

    turnout's gateway answers with the worker's OpenAI body only (its timings stay in the Kafka
    reply), and the mock says nothing: for those, added latency is measured against the direct
    call to the mock in the same run.
    """
    try:
        total = float(headers["x-litellm-response-duration-ms"])
        return max(0.0, total - float(headers["x-litellm-overhead-duration-ms"]))
    except (KeyError, TypeError, ValueError):
        return None


async def load(a: argparse.Namespace) -> dict[str, Any]:
    due = schedule(a.rate, a.duration)
    n = len(due)
    url = a.url.rstrip("/") + "/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(a.key_env, "") if a.key_env else ""
    if key:
        headers["Authorization"] = f"Bearer {key}"
    bodies = [chat_body(a.model, a.tag, i) for i in range(n)]  # encode first: the loop only sends
    sent_at = [0.0] * n
    received: dict[int, list[Any]] = {}  # seq -> [answered at, ok, backend ms, 0, 0]
    reported: list[float] = []
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        sent_at[i] = time.time()
        try:
            async with session.post(url, data=bodies[i], headers=headers) as r:
                body = await r.read()
                now = time.time()
                status, backend = r.status, reported_backend_ms(r.headers)
        except TimeoutError:
            failures["timeout"] += 1
            return
        except aiohttp.ClientError as exc:
            failures[type(exc).__name__] += 1
            return
        statuses[str(status)] += 1
        received[i] = [now, status == 200 and b'"choices"' in body, backend or 0.0, 0.0, 0.0]
        if backend is not None:
            reported.append(backend)

    connector = aiohttp.TCPConnector(limit=a.connections)
    timeout = aiohttp.ClientTimeout(total=a.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.time() + 0.1
        tasks = []
        for i, offset in enumerate(due):
            wait = t0 + offset - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(session, i)))
        await asyncio.gather(*tasks)
    return {"t0": t0, "rate": a.rate, "n": n, "sent_at": sent_at, "received": received,
            "reported_backend_ms": reported, "statuses": dict(statuses),
            "failures": dict(failures)}


def summarize(raw: dict[str, Any], duration: float) -> dict[str, Any]:
    """One step's metrics (ms), from ``load``'s raw records, with bench_load's definitions.

    ``lost`` is requests with no HTTP answer at all (timeouts, refused connections), ``errors``
    answers that are not a 200 chat completion; ``throughput_rps`` counts ok answers only.
    """
    n = raw["n"]
    prod = {"t0": raw["t0"], "rate": raw["rate"], "n": n, "sent_at": raw["sent_at"],
            "priority": [0] * n, "send_errors": 0}
    cons = {"received": raw["received"], "repeats": [], "strays": 0}
    m = bench_load.summarize(prod, cons, duration=duration)
    ok = {int(k): v for k, v in raw["received"].items() if v[1]}
    lo, hi = raw["t0"] + 1.0, raw["t0"] + duration
    m["throughput_rps"] = round(sum(1 for v in ok.values() if lo <= v[0] < hi) / (hi - lo), 1)
    m["ok"] = len(ok)
    for k in ("duplicates", "strays", "send_errors", "by_priority", "router_ms"):
        m.pop(k)
    m.update(t0=raw["t0"], statuses=raw["statuses"], failures=raw["failures"],
             reported_backend_ms=bench_load.percentiles(raw["reported_backend_ms"]))
    return m


def verdict(m: dict[str, Any]) -> list[str]:
    """Why a step is not sustainable: bench_load's reasons, or any error answer."""
    return bench_load.verdict(m) + (["errors"] if m["errors"] else [])


# -- comparing targets -----------------------------------------------------------------------------

DIRECT, LITELLM, TURNOUT = "direct", "litellm", "turnout"
LABELS = {DIRECT: "direct to the mock", LITELLM: "LiteLLM proxy (1 worker)",
          TURNOUT: "turnout gateway + 1 worker"}


def added(m: dict[str, Any] | None, direct: dict[str, Any] | None) -> dict[str, float | None]:
    """Latency a target adds over the direct call to the mock at the same rate (ms)."""
    out: dict[str, float | None] = {}
    for q in ("p50", "p99"):
        a = (m or {}).get("e2e_ms", {}).get(q)
        b = (direct or {}).get("e2e_ms", {}).get(q)
        out[q] = round(a - b, 1) if a is not None and b is not None else None
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def annotate(targets: dict[str, Any]) -> None:
    """Add ``added_ms`` (over the direct call at the same rate) to every measured step."""
    direct = targets.get(DIRECT, {})
    by_rate = {m["offered_rps"]: m for m in [direct.get("fixed"), *direct.get("steps", [])] if m}
    for t in targets.values():
        for m in [t.get("fixed"), *t.get("steps", [])]:
            if m:
                m["added_ms"] = added(m, by_rate.get(m["offered_rps"]))


def targets_met(targets: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's two targets for the HTTP path, turnout against LiteLLM, measured here."""
    t, lite, direct = (targets.get(k, {}) for k in (TURNOUT, LITELLM, DIRECT))
    a_t, a_l = added(t.get("fixed"), direct.get("fixed")), added(lite.get("fixed"),
                                                                 direct.get("fixed"))
    s_t, s_l = t.get("max_sustainable_rps"), lite.get("max_sustainable_rps")
    rows = [{"target": "added p50 at the fixed rate below LiteLLM's (ms)", "turnout": a_t["p50"],
             "litellm": a_l["p50"], "ratio": ratio(a_t["p50"], a_l["p50"]),
             "met": None if a_t["p50"] is None or a_l["p50"] is None else a_t["p50"] < a_l["p50"]},
            {"target": "saturation (max sustainable req/s) at least 10x LiteLLM's",
             "turnout": s_t, "litellm": s_l, "ratio": ratio(s_t, s_l),
             "met": None if s_t is None or not s_l else s_t >= 10 * s_l}]
    return rows


# -- LiteLLM: its own virtualenv, config and environment ---------------------------------------


def litellm_venv() -> pathlib.Path:
    default = pathlib.Path.home() / ".cache" / "turnout" / "litellm-venv"
    return pathlib.Path(os.environ.get("TURNOUT_LITELLM_VENV") or default)


def installed_version(venv: pathlib.Path) -> str | None:
    py = venv / "bin" / "python"
    if not py.exists():
        return None
    out = subprocess.run([str(py), "-c", "from importlib.metadata import version as v; "
                          "print(v('litellm'))"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_litellm(venv: pathlib.Path, version: str, log: pathlib.Path,
                   timeout_s: float = 900) -> tuple[pathlib.Path | None, str]:
    """``(litellm executable, version)``, installing ``litellm[proxy]==version`` into ``venv``
    (never into .venv) when it is not there; ``(None, reason)`` if that fails."""
    exe = venv / "bin" / "litellm"
    if installed_version(venv) == version and exe.exists():
        return exe, version
    py = venv / "bin" / "python"
    steps = [] if py.exists() else [[sys.executable, "-m", "venv", str(venv)]]
    steps.append([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  f"litellm[proxy]=={version}"])
    with open(log, "ab") as out:
        for argv in steps:
            try:
                rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=timeout_s).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                return None, f"{' '.join(argv[1:3])} failed: {exc}"
            if rc:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                return None, f"installing litellm[proxy]=={version} failed: {tail[0][:200]}"
    return (exe, version) if installed_version(venv) == version else (None, "not installed")


def litellm_config(mock_url: str) -> str:
    """One model entry: LiteLLM's OpenAI-compatible provider pointing at the mock backend.

    No database (no DATABASE_URL: no spend logs, no key table); the master key is read from
    the environment so that it is never written to a file.
    """
    return (
        "model_list:\n"
        f"  - model_name: {LITELLM_MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/echo\n"
        f"      api_base: {mock_url.rstrip('/')}/v1\n"
        "      api_key: sk-bench-dummy  # the mock checks no key\n"
        "general_settings:\n"
        f"  master_key: os.environ/{LITELLM_KEY_ENV}\n"
    )


def litellm_env(master_key: str) -> dict[str, str]:
    """What the proxy runs with, and why (each is a documented LiteLLM setting)."""
    return {
        LITELLM_KEY_ENV: master_key,
        # the bundled model cost map instead of a download at start-up (no internet here)
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # warnings and errors only: no uvicorn access-log line per request (turnout's gateway
        # writes none either)
        "LITELLM_LOG": "WARNING",
    }


# -- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.bench_http", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["load"])
    p.add_argument("--url", required=True, help="the target's base URL (no /v1)")
    p.add_argument("--model", default="default", help="the model/route name the target expects")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--connections", type=int, default=1000, help="at most this many at once")
    p.add_argument("--timeout-s", type=float, default=10.0, help="per request")
    p.add_argument("--key-env", default="", help="environment variable holding the API key")
    p.add_argument("--tag", default="bench", help="names the requests")
    p.add_argument("--out", default="", help="write the raw per-request records here")
    a = p.parse_args(argv)
    try:  # uvloop when installed: less generator CPU, for every target alike
        from uvloop import run
    except ImportError:
        run = asyncio.run
    raw = run(load(a))
    if a.out:
        pathlib.Path(a.out).write_bytes(orjson.dumps(raw, option=orjson.OPT_NON_STR_KEYS))
    print(orjson.dumps(summarize(raw, a.duration)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
