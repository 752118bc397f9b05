"""turnout's own CPU per request, without Kafka or HTTP: the dispatcher's whole request path
(admission, dedupe, rate limits, routing, health, tracing, metrics, the reply's encoding
and the publisher, the `done` write, the request_completed log line) against an instant
fake backend and a producer that takes every record at once.

    .venv/bin/python -m bench.profile_dispatch            # CPU µs per request, 3 runs
    .venv/bin/python -m bench.profile_dispatch --profile  # and cProfile's top functions
    .venv/bin/python -m bench.profile_dispatch --cap 16 --call-ms 1  # a cap that binds: ~240 wait

Figures are process CPU time (time.process_time), so other work on the machine changes
them far less than wall-clock rates. What it leaves out is the I/O around it: aiokafka's
fetch and produce, faust's stream, aiohttp's call, RocksDB. Compare with the worker's
whole CPU per reply from ``scripts/bench-inflight --drain``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import time
from typing import Any

import orjson
import structlog
from faust.types import TP

from schemas.types import Request
from turnout import config as cfg
from turnout import logs, tracing
from turnout.core.admission import Record
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient
from turnout.worker.dispatch import Dispatcher
from turnout.worker.publisher import Publisher
from turnout.worker.state import MemoryTable

CONFIG = """
backends:
  - {id: mock-openai, protocol: openai, base_url: "http://127.0.0.1:1", models: [echo],
     max_concurrency: CAP}
routes:
  default: {targets: [{backend: mock-openai, model: echo}]}
default_route: default
"""
TOPIC = "bench.requests"
TP0 = TP(TOPIC, 0)


class _Producer:
    def __init__(self) -> None:
        self.sent = 0

    async def send_and_wait(self, topic: str, key: Any, value: bytes, **kw: Any) -> None:
        self.sent += 1


class _Topic:
    async def maybe_declare(self) -> None:
        return None


class _App:
    """What Publisher uses of a faust app: a producer that takes every record at once."""

    def __init__(self) -> None:
        self.producer = _Producer()

    def topic(self, *a: Any, **kw: Any) -> _Topic:
        return _Topic()


def records(n: int, run: str) -> list[Record]:
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        client = f"bench-c{i % 20:02d}"
        req = Request(id=f"{run}-{i}", client_id=client, kind="chat", model="default",
                      priority=5, body={"messages": [{"role": "user", "content": "hello"}]})
        out.append(Record(topic=TOPIC, partition=0, offset=i, timestamp_ms=now,
                          key=client.encode(), value=req.to_wire()))
    return out


async def one_run(
    n: int, run: str, profile: cProfile.Profile | None, cap: int = 16384, call_ms: float = 0.0
) -> float:
    settings = Settings.from_env({"TURNOUT_REQUEST_TOPIC": TOPIC})
    config = cfg.loads(CONFIG.replace("CAP", str(cap)), env={})
    d = Dispatcher(settings=settings, config=config,
                   client=tracing.TracedClient(ScriptedBackendClient(delay_s=call_ms / 1000)),
                   publisher=Publisher(_App(), settings),  # type: ignore[arg-type]
                   done=MemoryTable(), buckets=MemoryTable())
    d.assigned({TP0})
    d.anchor({TP0: 0})
    recs = records(n, run)
    acks = [0]
    all_done = asyncio.Event()

    def ack() -> None:
        acks[0] += 1
        if acks[0] >= n:
            all_done.set()

    t0 = time.process_time()
    if profile:
        profile.enable()
    for r in recs:
        await d.submit(TP0, r, ack)
        if d.in_flight >= 256:  # let the tasks run, as the worker's loop would
            await asyncio.sleep(0)
    await all_done.wait()
    if profile:
        profile.disable()
    took = time.process_time() - t0
    return took * 1e6 / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_dispatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--cap", type=int, default=16384,
                   help="the backend's max_concurrency; below 256 requests wait for it")
    p.add_argument("--call-ms", type=float, default=0.0,
                   help="each backend call's duration (an instant one never holds the cap)")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--json", default="", help="append the result as a JSON line to this file")
    a = p.parse_args(argv)
    # the worker's own log set-up (JSON lines), written where they cost a write and no disk
    logs.configure("info", "json")
    devnull = open(os.devnull, "wb")
    structlog.configure(logger_factory=structlog.BytesLoggerFactory(devnull))
    us = [asyncio.run(one_run(a.n, f"r{i}", None, a.cap, a.call_ms)) for i in range(a.runs)]
    out: dict[str, Any] = {"n": a.n, "cap": a.cap, "call_ms": a.call_ms,
                           "cpu_us_per_request": [round(u, 1) for u in us]}  # fmt: skip
    print(f"turnout's request path, no I/O, backend cap {a.cap}, calls of {a.call_ms} ms: "
          f"CPU µs per request {out['cpu_us_per_request']}")
    if a.profile:
        prof = cProfile.Profile()
        asyncio.run(one_run(a.n, "prof", prof, a.cap, a.call_ms))
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(a.top)
        print(s.getvalue())
    if a.json:
        import subprocess

        out["git"] = subprocess.run(["git", "describe", "--always", "--dirty"],
                                    capture_output=True, text=True).stdout.strip()
        with open(a.json, "ab") as f:
            f.write(orjson.dumps(out) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
