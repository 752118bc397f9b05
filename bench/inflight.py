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

import bench.run as tb


class InflightBench(tb.Bench):
    def worker(self, name: str, latency_ms: float, *, topic: str = "", app_id: str = "",
               url: str = "", max_in_flight: int | None = None) -> tb.System:
        a = self.args
        mock, url = (None, url) if url else self.mock(latency_ms)
        app_id = app_id or f"bench-{self.run}-{name}"
        topic = topic or f"bench-{self.run}.requests.{name}"
        config = self.dir / f"{name}.yaml"
        config.write_text(
            f"backends:\n  - {{id: mock-openai, protocol: openai, base_url: '{url}', "
            f"models: [echo], max_concurrency: {a.max_concurrency}, "
            # a call as slow as the mock's latency is normal here, not a hang
            f"hang_after_ms: {int(latency_ms * 2 + 5000)}, "
            f"timeout_ms: {max(120_000, int(latency_ms * 2 + 10_000))}}}\nroutes:\n  default:\n"
            "    targets: [{backend: mock-openai, model: echo}]\ndefault_route: default\n")
        env = {"KAFKA_BOOTSTRAP": a.bootstrap, "TURNOUT_CONFIG": str(config),
               "TURNOUT_APP_ID": app_id, "TURNOUT_REQUEST_TOPIC": topic,
               "TURNOUT_REQUEST_PARTITIONS": str(a.partitions),
               "TURNOUT_DEAD_LETTER_TOPIC": self.dead_letters, "TURNOUT_LOG_FORMAT": "json",
               "TURNOUT_DATA_DIR": str(self.dir / f"data-{name}"),
               **({"TURNOUT_MAX_IN_FLIGHT": str(cap), "TURNOUT_MAX_WAITING": str(cap)}
                  if (cap := a.max_in_flight if max_in_flight is None else max_in_flight)
                  else {}),
               # the prober's one-token request takes the mock's latency too
               "TURNOUT_PROBE_TIMEOUT_S": str(max(5.0, latency_ms / 1000 * 1.5 + 5)),
               "TURNOUT_PROBE_INTERVAL_S": str(max(5.0, latency_ms / 1000 * 1.5 + 10))}
        proc = self.procs.start(f"{name}-worker0", [tb.PY, "-m", "turnout.cli", "worker"], env)
        return tb.System(name, topic, {"worker0": proc, **({"mock": mock} if mock else {})}, url)

    def drain(self, name: str, workers: int) -> dict[str, Any]:
        """Fill a request topic with ``--drain`` requests, then start the system and time
        it working them off: its CPU per reply and best rate, with no load generator
        running while it works (the 10th to 90th percentile of the replies' arrivals)."""
        a, n = self.args, self.args.drain
        topic = f"bench-{self.run}.requests.{name}"
        asyncio.run(tb.ensure_topics(a.bootstrap, [topic], a.partitions))
        tag = f"{self.run}.{name}"
        out_c, out_p = self.dir / f"{tag}.consume.json", self.dir / f"{tag}.produce.json"
        common = [*self.nice, tb.PY, "-m", "bench.run"]
        cons = self.procs.start(f"{tag}.consume", [
            *common, "load-consume", "--bootstrap", a.bootstrap, "--tag", tag,
            "--topics", ",".join(self.reply_topics), "--n", str(n), "--out", str(out_c),
            "--max-s", str(a.drain_max_s)], pipe=True)
        tb.wait_line(cons, b"ready", 60)
        rate = a.drain_fill_rps
        prod = self.procs.start(f"{tag}.produce", [
            *common, "load-produce", "--bootstrap", a.bootstrap, "--tag", tag, "--topic", topic,
            "--rate", str(rate), "--duration", str(n / rate), "--clients", ",".join(self.clients),
            "--priorities", "5", "--out", str(out_p)])
        prod.wait(n / rate + 300)
        if name == "floor":
            procs = {"echo": self.procs.start("drain-floor-echo", [
                tb.PY, "-m", "bench.run", "echo", "--bootstrap", a.bootstrap, "--topic",
                topic, "--group", f"bench-{self.run}-floor"], pipe=True)}
        else:
            mock, url = self.mock(0)
            procs = {"mock": mock}
            for i in range(workers):  # one group; every worker calls the same mock
                w = self.worker(f"{name}{i}", 0, topic=topic, app_id=f"bench-{self.run}-{name}",
                                url=url)
                procs[f"worker{i}"] = w.procs["worker0"]
        pids = {k: p.pid for k, p in procs.items()}
        if self.broker_pid:
            pids["broker"] = self.broker_pid
        sampler = tb.CpuSampler(pids)
        sampler.start()
        profile = tb.pyspy(pids["worker0"], a.drain_profile_s, self.dir) \
            if a.profile and "worker0" in pids else None
        cons.wait(a.drain_max_s + 60)
        sampler.done.set()
        sampler.join()
        out: dict[str, Any] = {"name": name, "workers": workers, "requests": n}
        if profile is not None:
            out["profile"] = profile() if callable(profile) else profile
        out["peak_rss_mb"] = {k: tb.status_mb(p) for k, p in pids.items() if k != "broker"}
        for proc in procs.values():
            self.procs.stop(proc)
        consumed = orjson.loads(out_c.read_bytes())
        sent_at = orjson.loads(out_p.read_bytes())["sent_at"]
        # when the system built each reply (its send time plus the reply's total_ms), not
        # when the load consumer, at nice 10, got round to reading it
        times = sorted(sent_at[int(k)] + v[4] / 1000 for k, v in consumed["received"].items())
        out.update(replies=len(times), lost=n - len(times), duplicates=len(consumed["repeats"]),
                   errors=sum(1 for v in consumed["received"].values() if not v[1]))
        if len(times) < 100:
            return out
        lo, hi = times[len(times) // 10], times[len(times) * 9 // 10]
        inside = sum(1 for t in times if lo <= t <= hi)
        cores = sampler.cores(lo, hi)
        first, last = sampler.samples[0], sampler.samples[-1]
        out["cpu_s_whole_run"] = {k: round(last[1][k] - first[1].get(k, 0.0), 2)
                                  for k in last[1] if k in procs}
        out["window_s"] = round(hi - lo, 2)
        out["replies_per_s"] = round(inside / (hi - lo), 1)
        out["cores"] = cores
        out["cpu_ms_per_reply"] = {k: round(v * (hi - lo) * 1000 / inside, 3)
                                   for k, v in cores.items()}
        print(f"  drain {name} x{workers}: {out['replies_per_s']} replies/s, CPU ms/reply "
              f"{out['cpu_ms_per_reply']}, lost {out['lost']} dup {out['duplicates']}",
              flush=True)
        return out

    def inflight(self) -> dict[str, Any]:
        a = self.args
        asyncio.run(tb.ensure_topics(a.bootstrap, self.reply_topics, 2))
        res: dict[str, Any] = {"run": self.run, "settings": vars(a), "machine": self.machine,
                               "steps": [], "drain": []}
        if a.drain:
            for name, workers in (("floor", 1), ("turnout", 1), ("turnout2w", 2)):
                if name in a.drain_systems:
                    res["drain"].append(self.drain(name, workers))
        for i, (latency_ms, rate, *cap) in enumerate(a.steps):
            lat = latency_ms / 1000
            slots = int(cap[0]) if cap else a.max_in_flight
            print(f"one worker, {latency_ms:g} ms backend, {rate:g} req/s "
                  f"({rate * lat:.0f} in flight needed):", flush=True)
            t = self.worker(f"inflight{i}", latency_ms, max_in_flight=slots)
            out: dict[str, Any] = {"latency_ms": latency_ms, "offered_rps": rate,
                                   "max_in_flight": slots or "worker default",
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
    def steps(s: str) -> list[tuple[float, ...]]:
        return [tuple(float(v) for v in x.split(":")) for x in s.split(",") if x]

    p = argparse.ArgumentParser(prog="scripts/bench-inflight", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=steps, default=[(2000, 1000), (20000, 500)],
                   help="comma-separated latency_ms:rate[:max_in_flight], one worker each "
                   "(max_in_flight: this step's TURNOUT_MAX_IN_FLIGHT, default the worker's own)")
    p.add_argument("--duration", type=float, default=30, help="seconds of load per step")
    p.add_argument("--grace", type=float, default=20, help="seconds to wait for late replies")
    p.add_argument("--max-in-flight", type=int, default=0,
                   help="TURNOUT_MAX_IN_FLIGHT and TURNOUT_MAX_WAITING of the worker "
                   "(0: the worker's defaults)")
    p.add_argument("--max-concurrency", type=int, default=16384,
                   help="the mock backend's max_concurrency in the worker's config")
    p.add_argument("--profile", action="store_true", help="py-spy the worker during each step")
    p.add_argument("--drain", type=int, default=0,
                   help="before the steps: N requests worked off from a full topic by the "
                   "floor, one worker and two workers (CPU per reply, best rate)")
    p.add_argument("--drain-systems", default="floor,turnout,turnout2w")
    p.add_argument("--drain-fill-rps", type=float, default=3000)
    p.add_argument("--drain-max-s", type=float, default=240)
    p.add_argument("--drain-profile-s", type=float, default=30,
                   help="with --profile: seconds of py-spy on the first worker of a drain")
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
