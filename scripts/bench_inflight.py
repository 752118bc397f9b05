"""How many requests one worker holds in flight: the ``inflight`` scenario (issue 19.2).

One worker, one mock backend with a fixed latency, open-loop load at ``rate``: Little's law
says ``rate * latency`` requests are in flight and the bound on replies/s is ``rate`` itself.
Each step reports replies/s against that bound, the peak in flight (sent - answered), the most
backend calls the mock saw at once, and the worker's peak RSS (VmHWM) and cores. Every step
gets its own worker and mock (a fresh RSS high-water mark), with ``TURNOUT_MAX_IN_FLIGHT``,
``TURNOUT_MAX_WAITING`` and the backend's ``max_concurrency`` set from the options.

    scripts/bench-inflight --steps 2000:1000,20000:500 --duration 30
    scripts/bench-inflight --help

It reuses the machinery of ``scripts/bench`` (processes, load generator, CPU sampling) and
writes its own results file (``--json``, default docs/inflight-results.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any

import orjson

try:  # turnout.bench may move to a top-level bench package
    from turnout import bench as tb
except ImportError:  # pragma: no cover
    import bench.run as tb  # type: ignore[no-redef]


class InflightBench(tb.Bench):
    def worker(self, name: str, latency_ms: float) -> tb.System:
        a = self.args
        mock, url = self.mock(latency_ms)
        app_id, topic = f"bench-{self.run}-{name}", f"bench-{self.run}.requests.{name}"
        config = self.dir / f"{name}.yaml"
        config.write_text(
            f"backends:\n  - {{id: mock-openai, protocol: openai, base_url: '{url}', "
            f"models: [echo], max_concurrency: {a.max_concurrency}, "
            # a call as slow as the mock's latency is normal here, not a hang
            f"hang_after_ms: {int(latency_ms * 2 + 5000)}}}\nroutes:\n  default:\n"
            "    targets: [{backend: mock-openai, model: echo}]\ndefault_route: default\n")
        env = {"KAFKA_BOOTSTRAP": a.bootstrap, "TURNOUT_CONFIG": str(config),
               "TURNOUT_APP_ID": app_id, "TURNOUT_REQUEST_TOPIC": topic,
               "TURNOUT_REQUEST_PARTITIONS": str(a.partitions),
               "TURNOUT_DEAD_LETTER_TOPIC": self.dead_letters, "TURNOUT_LOG_FORMAT": "json",
               "TURNOUT_DATA_DIR": str(self.dir / f"data-{name}"),
               "TURNOUT_MAX_IN_FLIGHT": str(a.max_in_flight),
               "TURNOUT_MAX_WAITING": str(a.max_in_flight),
               # the prober's one-token request takes the mock's latency too
               "TURNOUT_PROBE_TIMEOUT_S": str(max(5.0, latency_ms / 1000 * 1.5 + 5)),
               "TURNOUT_PROBE_INTERVAL_S": str(max(5.0, latency_ms / 1000 * 1.5 + 10))}
        proc = self.procs.start(f"{name}-worker0", [tb.PY, "-m", "turnout.cli", "worker"], env)
        return tb.System(name, topic, {"mock": mock, "worker0": proc}, url)

    def inflight(self) -> dict[str, Any]:
        a = self.args
        asyncio.run(tb.ensure_topics(a.bootstrap, self.reply_topics, 2))
        res: dict[str, Any] = {"run": self.run, "settings": vars(a), "machine": self.machine,
                               "steps": []}
        for i, (latency_ms, rate) in enumerate(a.steps):
            lat = latency_ms / 1000
            print(f"one worker, {latency_ms:g} ms backend, {rate:g} req/s "
                  f"({rate * lat:.0f} in flight needed):", flush=True)
            t = self.worker(f"inflight{i}", latency_ms)
            out: dict[str, Any] = {"latency_ms": latency_ms, "offered_rps": rate,
                                   "target_in_flight": round(rate * lat),
                                   "littles_bound_rps": rate, "warmup": self.warm(t, lat)}
            profile = None
            if a.profile:
                pid = t.pids["worker0"]
                profile = lambda pid=pid: tb.pyspy(pid, a.duration, self.dir)  # noqa: E731
            m = self.step(t, "inflight", rate, a.duration, latency_s=lat, grace=a.grace,
                          on_running=profile)
            m["replies_over_bound"] = round(m["throughput_rps"] / rate, 3)
            out["step"] = m
            self.finish(t, out)
            out["worker_peak_rss_mb"] = out["peak_rss_mb"].get("worker0")
            mock_peak = out.get("mock_stats", {}).get("max_in_flight")
            print(f"  -> {m['replies_over_bound']}x of Little's bound, peak in flight "
                  f"{m['peak_in_flight']}, mock peak {mock_peak}, worker RSS "
                  f"{out['worker_peak_rss_mb']} MB", flush=True)
            res["steps"].append(out)
        return res


def parse(argv: list[str]) -> argparse.Namespace:
    def steps(s: str) -> list[tuple[float, float]]:
        return [(float(x.split(":")[0]), float(x.split(":")[1])) for x in s.split(",") if x]

    p = argparse.ArgumentParser(prog="scripts/bench-inflight", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=steps, default=[(2000, 1000), (20000, 500)],
                   help="comma-separated latency_ms:rate pairs, one worker each")
    p.add_argument("--duration", type=float, default=30, help="seconds of load per step")
    p.add_argument("--grace", type=float, default=20, help="seconds to wait for late replies")
    p.add_argument("--max-in-flight", type=int, default=16384,
                   help="TURNOUT_MAX_IN_FLIGHT and TURNOUT_MAX_WAITING of the worker")
    p.add_argument("--max-concurrency", type=int, default=16384,
                   help="the mock backend's max_concurrency in the worker's config")
    p.add_argument("--profile", action="store_true", help="py-spy the worker during each step")
    p.add_argument("--json", default="docs/inflight-results.json")
    base = tb.parse([])  # the shared options (clients, partitions, nice, quiet, bootstrap)
    p.set_defaults(**{k: v for k, v in vars(base).items() if k not in ("json", "profile")})
    p.add_argument("--clients", type=int, default=base.clients)
    p.add_argument("--partitions", type=int, default=base.partitions)
    p.add_argument("--bootstrap", default=base.bootstrap)
    a = p.parse_args(argv)
    a.command = " ".join(["scripts/bench-inflight", *argv])
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = InflightBench(args)
    print(f"run {bench.run}: logs and raw records in {bench.dir}", flush=True)
    started = time.time()
    try:
        results = bench.inflight()
    finally:
        bench.cleanup()
    results["elapsed_s"] = round(time.time() - started, 1)
    for s in results["steps"]:
        for m in (s["step"], s["warmup"]):
            m.pop("by_client", None)
    path = tb.ROOT / args.json
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
                                  default=str))
    print(f"results: {path}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
