"""Soak: N requests through one worker on the instant mock backend; RSS over time, cold starts.

    scripts/soak --n 1000000                  # what issue 12 asks for
    scripts/soak --n 50000 --window-s 60      # a quicker look

One worker (default store: RocksDB) serves N requests from a few clients at up to
``--rate`` per second, never more than ``--max-outstanding`` unanswered. Every
``--sample-s`` the worker's RSS, its data directory's size and the counts are
sampled. With a dedupe window shorter than the run, the ``done`` table's eviction is
exercised the whole time: RSS and the data directory should level off once ids
start to expire, instead of growing with N.

Afterwards it measures:
- the ids the ``done`` table still holds (opened read-only after the worker stops);
- a warm restart: the same data directory, time from process start to the reply of
  a new request (group join + reading the changelog's tail);
- a cold start: the data directory wiped, the same measurement (group join + reading
  the whole ``done`` changelog, of which evicted ids are only tombstones).

It prints sent / answered / lost / duplicated and writes everything to ``--out``.
Numbers from a shared machine carry its load: compare shapes, not milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.types import Request
from turnout.client import ensure_topics

ROOT = pathlib.Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "turnout.cli"]


def free_port(lo: int, hi: int) -> int:
    for port in range(lo, hi + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}..{hi}")


def rss_mb(pid: int) -> float | None:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def dir_mb(path: pathlib.Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return round(total / 1024 / 1024, 1)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
        run = uuid.uuid4().hex[:6]
        self.run_id = run
        self.app_id = f"soak-{run}"
        self.request_topic = f"soak-{run}.requests"
        self.clients = [f"soak{run}-c{i}" for i in range(args.clients)]
        self.reply_topics = [f"turnout.replies.{c}" for c in self.clients]
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"soak-{run}-"))
        self.data_dir = self.tmp / "data"
        self.seen = bytearray(args.n)
        self.sent = 0
        self.answered = 0
        self.duplicated = 0
        self.errors = 0
        self.probes: dict[str, float] = {}
        self.samples: list[dict[str, Any]] = []
        self.mock: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_runs = 0

    # -- processes -------------------------------------------------------------------

    def start_mock(self) -> str:
        port = free_port(self.args.port_lo, self.args.port_hi)
        log = open(self.tmp / "mock.log", "wb")
        self.mock = subprocess.Popen(
            [*PY, "mock-backend", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return url
            time.sleep(0.1)
        raise RuntimeError("mock backend did not start")

    def start_worker(self) -> float:
        self.worker_runs += 1
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "TURNOUT_CONFIG": str(self.tmp / "config.yaml"),
            "TURNOUT_APP_ID": self.app_id,
            "TURNOUT_REQUEST_TOPIC": self.request_topic,
            "TURNOUT_REQUEST_PARTITIONS": str(self.args.partitions),
            "TURNOUT_DATA_DIR": str(self.data_dir),
            "TURNOUT_HEALTH_TOPIC": f"{self.app_id}.health",
            "TURNOUT_DEDUPE_RETENTION_S": str(self.args.window_s),
            "TURNOUT_LOG_LEVEL": "warning",
            "TURNOUT_LOG_FORMAT": "json",
        }
        log = open(self.tmp / f"worker-{self.worker_runs}.log", "wb")
        started = time.monotonic()
        self.worker = subprocess.Popen(
            [*PY, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        return started

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()

    def stop_all(self) -> None:
        self.stop_worker()
        if self.mock is not None and self.mock.poll() is None:
            self.mock.terminate()
            self.mock.wait(timeout=10)

    # -- traffic ---------------------------------------------------------------------

    def request(self, rid: str, i: int) -> Request:
        return Request(
            id=rid,
            client_id=self.clients[i % len(self.clients)],
            kind="chat",
            model="default",
            body={"messages": [{"role": "user", "content": f"soak {i}"}]},
            timeout_ms=600_000,
        )

    async def read_replies(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for rec in records:
                    reply = orjson.loads(rec.value)
                    if "seq" in reply:  # a stream chunk: none expected
                        continue
                    rid = reply.get("id", "")
                    if rid in self.probes and self.probes[rid] == 0.0:
                        self.probes[rid] = time.monotonic()
                        continue
                    if not rid.startswith("s"):
                        continue
                    i = int(rid[1:])
                    if reply.get("status") != "ok":
                        self.errors += 1
                    if self.seen[i]:
                        self.duplicated += 1
                    else:
                        self.seen[i] = 1
                        self.answered += 1

    async def sample(self, t0: float) -> None:
        while True:
            pid = self.worker.pid if self.worker is not None else 0
            self.samples.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "sent": self.sent,
                    "answered": self.answered,
                    "rss_mb": rss_mb(pid),
                    "data_dir_mb": dir_mb(self.data_dir),
                }
            )
            s = self.samples[-1]
            print(
                f"soak t={s['t_s']}s sent={s['sent']} answered={s['answered']} "
                f"rss={s['rss_mb']}MB data={s['data_dir_mb']}MB",
                flush=True,
            )
            await asyncio.sleep(self.args.sample_s)

    async def send_all(self, producer: AIOKafkaProducer) -> None:
        n, rate = self.args.n, self.args.rate
        t0 = time.monotonic()
        for i in range(n):
            if time.monotonic() - t0 > self.args.max_s:
                break  # out of time: what was sent is still answered and counted
            while self.sent - self.answered >= self.args.max_outstanding:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            ahead = self.sent / rate - (time.monotonic() - t0)
            if ahead > 0.005:
                await asyncio.sleep(ahead)
            req = self.request(f"s{i}", i)
            await producer.send(self.request_topic, req.to_wire(), key=req.client_id.encode())
            self.sent += 1
        await producer.flush()

    async def probe(self, producer: AIOKafkaProducer, name: str, timeout_s: float) -> float | None:
        """Time from now until a new request's reply arrives."""
        rid = f"probe-{name}-{uuid.uuid4().hex[:6]}"
        self.probes[rid] = 0.0
        started = time.monotonic()
        req = self.request(rid, 0)
        await producer.send_and_wait(self.request_topic, req.to_wire(), key=req.client_id.encode())
        while time.monotonic() - started < timeout_s:
            if self.probes[rid]:
                return self.probes[rid]
            await asyncio.sleep(0.02)
        return None

    async def changelog_records(self) -> int:
        topic = f"{self.app_id}-done-changelog"
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(self.args.partitions)]
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            return sum(ends[tp] - starts[tp] for tp in tps)
        finally:
            await consumer.stop()

    def held_ids(self) -> int:
        """Entries in the worker's done table on disk (the worker must be stopped)."""
        import rocksdict

        held = 0
        for db_path in sorted((self.data_dir / "v1" / "tables").glob("done-*.db")):
            db = rocksdict.Rdict(
                str(db_path),
                rocksdict.Options(raw_mode=True),
                access_type=rocksdict.AccessType.read_only(),
            )
            held += sum(1 for k in db.keys() if not k.startswith(b"__faust"))
            db.close()
        return held

    async def restart(self, producer: AIOKafkaProducer, *, wipe: bool) -> dict[str, Any]:
        self.stop_worker()
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        records = await self.changelog_records()
        started = self.start_worker()
        # The probe waits in Kafka until the worker has joined and recovered its tables.
        replied = await self.probe(
            producer, "wipe" if wipe else "warm", self.args.restart_timeout_s
        )
        return {
            "data_dir_wiped": wipe,
            "changelog_records": records,
            "first_reply_s": None if replied is None else round(replied - started, 2),
        }

    async def run(self) -> dict[str, Any]:
        a = self.args
        await ensure_topics(self.bootstrap, [self.request_topic], a.partitions)
        await ensure_topics(self.bootstrap, self.reply_topics, 1)
        url = self.start_mock()
        (self.tmp / "config.yaml").write_text(
            "backends:\n"
            f"  - {{id: mock, protocol: openai, base_url: '{url}', models: [echo], "
            "max_concurrency: 4096}\n"
            "routes:\n  default:\n    targets:\n      - {backend: mock, model: echo}\n"
            "default_route: default\n"
        )
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await consumer.start()
        await producer.start()
        consumer.assign([TopicPartition(t, 0) for t in self.reply_topics])
        await consumer.seek_to_beginning()
        reader = asyncio.create_task(self.read_replies(consumer))
        sampler: asyncio.Task[None] | None = None
        result: dict[str, Any] = {}
        try:
            t0 = time.monotonic()
            self.start_worker()
            sampler = asyncio.create_task(self.sample(t0))
            sending = asyncio.create_task(self.send_all(producer))
            last, still = -1, time.monotonic()
            while self.answered < a.n:
                await asyncio.sleep(1)
                if sending.done() and self.answered >= self.sent:
                    break
                if self.answered != last:
                    last, still = self.answered, time.monotonic()
                elif time.monotonic() - still > a.stall_s:
                    break
                if self.worker is not None and self.worker.poll() is not None:
                    break
            elapsed = time.monotonic() - t0
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            await asyncio.sleep(2)  # time for a duplicate to show up
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            self.samples.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "sent": self.sent,
                    "answered": self.answered,
                    "rss_mb": rss_mb(self.worker.pid) if self.worker else None,
                    "data_dir_mb": dir_mb(self.data_dir),
                }
            )
            warm = await self.restart(producer, wipe=False)
            self.stop_worker()
            held = self.held_ids()
            cold = await self.restart(producer, wipe=True)
            result = {
                "run": self.run_id,
                "n": a.n,
                "max_s": a.max_s if a.max_s < 1e9 else None,
                "offered_rate_max": a.rate,
                "dedupe_window_s": a.window_s,
                "sent": self.sent,
                "answered": self.answered,
                "lost": self.sent - self.answered,
                "duplicated": self.duplicated,
                "errors": self.errors,
                "elapsed_s": round(elapsed, 1),
                "mean_rate": round(self.answered / elapsed, 1) if elapsed else None,
                "done_ids_held_at_end": held,
                "restart_warm": warm,
                "restart_cold": cold,
                "samples": self.samples,
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "nice": os.nice(0),
                    "note": "shared 2-core machine: broker, worker, mock, load generator and "
                    "other agents' work on the same cores; times carry that load",
                },
                "logs": str(self.tmp),
            }
        finally:
            for task in (reader, sampler):
                if task is not None:
                    task.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await consumer.stop()
            await producer.stop()
            self.stop_all()
        return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, default=1_000_000, help="requests to send")
    p.add_argument("--rate", type=float, default=2000.0, help="most requests offered per second")
    p.add_argument("--max-outstanding", type=int, default=4000, help="most sent but unanswered")
    p.add_argument("--window-s", type=int, default=120, help="the worker's dedupe window")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--max-s", type=float, default=1e9, help="stop sending after this long")
    p.add_argument("--stall-s", type=float, default=120.0, help="give up after no progress")
    p.add_argument("--restart-timeout-s", type=float, default=300.0)
    p.add_argument("--port-lo", type=int, default=39150, help="mock backend port range")
    p.add_argument("--port-hi", type=int, default=39199)
    p.add_argument("--out", default="docs/soak-results.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = asyncio.run(Soak(args).run())
    if not result:
        return 1
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"soak: sent={result['sent']} answered={result['answered']} lost={result['lost']} "
        f"duplicated={result['duplicated']} errors={result['errors']} "
        f"ids held at end={result['done_ids_held_at_end']} "
        f"warm restart first reply={result['restart_warm']['first_reply_s']}s "
        f"cold start first reply={result['restart_cold']['first_reply_s']}s "
        f"({result['restart_cold']['changelog_records']} changelog records)"
    )
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
