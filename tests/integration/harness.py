"""Real processes for integration tests: mock backends and turnout workers.

Each test gets its own request topic, consumer group and client ids, so tests
share one broker without seeing each other's messages.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable

import orjson

ROOT = pathlib.Path(__file__).parents[2]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
TURNOUT = [sys.executable, "-m", "turnout.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class MockBackend:
    """A ``turnout mock-backend`` process; ``configure`` changes its behaviour live."""

    def __init__(self, tmp: pathlib.Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tmp
        self._args = args
        self.start()

    def start(self) -> None:
        """Start (again) on the same port, with the options it was created with."""
        self._log = open(self._tmp / f"mock-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [*TURNOUT, "mock-backend", "--port", str(self.port), *self._args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mock backend exited with {self.proc.returncode}")
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mock backend did not start in 20 s")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=2) as r:
            return orjson.loads(r.read())

    def configure(self, **options) -> None:
        req = urllib.request.Request(
            f"{self.url}/admin/config",
            data=orjson.dumps(options),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=2) as r:
            r.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Worker:
    """A ``turnout worker`` process with its own topic, group and config."""

    def __init__(
        self,
        tmp: pathlib.Path,
        config_text: str,
        *,
        app_id: str,
        request_topic: str,
        partitions: int = 4,
        extra_env: dict[str, str] | None = None,
        name: str = "worker",
    ) -> None:
        self.tmp = tmp
        self.name = name
        self.config_path = tmp / f"{app_id}.yaml"
        self.config_path.write_text(config_text)
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": BOOTSTRAP,
            "TURNOUT_CONFIG": str(self.config_path),
            "TURNOUT_APP_ID": app_id,
            "TURNOUT_REQUEST_TOPIC": request_topic,
            "TURNOUT_REQUEST_PARTITIONS": str(partitions),
            "TURNOUT_DATA_DIR": str(tmp / f"data-{app_id}-{name}"),
            "TURNOUT_LOG_FORMAT": "json",
            "TURNOUT_COMMIT_INTERVAL_S": "0.5",
            "TURNOUT_HEALTH_TOPIC": f"{app_id}.health",
            **(extra_env or {}),
        }
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def log_path(self) -> pathlib.Path:
        return self.tmp / f"{self.name}-{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*TURNOUT, "worker"], env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_assigned(self, timeout_s: float = 120) -> None:
        """Until this run of the worker has been given its request partitions."""
        deadline = time.monotonic() + timeout_s
        while b'"partitions_assigned"' not in self.log_path.read_bytes():
            assert self.alive(), self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log_path.read_text()[-3000:]
            time.sleep(0.2)

    def log_lines(self) -> list[dict]:
        out = []
        for i in range(1, self.runs + 1):
            for line in (self.tmp / f"{self.name}-{i}.log").read_bytes().splitlines():
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    out.append({"raw": line.decode("utf-8", "replace")})
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)


def config_for(
    *backends: tuple[str, str, str],
    route_policy: str = "round_robin",
    max_concurrency: int = 4096,
    max_attempts: int = 2,
) -> str:
    """Config text: backends as (id, protocol, url), all serving "echo" on route "default"."""
    lines = ["backends:"]
    for bid, proto, url in backends:
        lines.append(
            f"  - {{id: {bid}, protocol: {proto}, base_url: '{url}', "
            f"models: [echo, embed], max_concurrency: {max_concurrency}}}"
        )
    lines.append("routes:")
    lines.append("  default:")
    lines.append(f"    policy: {route_policy}")
    lines.append(f"    max_attempts: {max_attempts}")
    lines.append("    targets:")
    for bid, _, _ in backends:
        lines.append(f"      - {{backend: {bid}, model: echo}}")
    lines.append("default_route: default")
    return "\n".join(lines) + "\n"


def chat_request(req_id: str, client_id: str, text: str, **extra):
    from schemas.types import Request

    return Request(
        id=req_id,
        client_id=client_id,
        kind="chat",
        model=extra.pop("model", "default"),
        body={"messages": [{"role": "user", "content": text}]},
        **extra,
    )


async def collect_replies(topics: dict[str, set[str]], timeout_s: float):
    """Read each reply topic from the beginning until all its ids are answered.

    Returns {topic: {id: [replies]}}, keeping repeats and strays so tests can check them.
    """
    import asyncio

    from turnout.client import ReplyReader

    async def one(topic: str, ids: set[str]):
        reader = ReplyReader(BOOTSTRAP, topic)
        await reader.start(from_end=False)
        try:
            return topic, await reader.collect(ids, timeout_s)
        finally:
            await reader.stop()

    return dict(await asyncio.gather(*(one(t, ids) for t, ids in topics.items())))


async def committed_offsets(group: str, topic: str) -> dict[int, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == topic}


async def request_ids_below(topic: str, limits: dict[int, int]) -> set[str]:
    """The ids of the requests at offsets below ``limits[partition]``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas.types import Request

    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await consumer.start()
    ids: set[str] = set()
    try:
        tps = [TopicPartition(topic, p) for p, end in limits.items() if end > 0]
        if not tps:
            return ids
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        todo = {tp: limits[tp.partition] for tp in tps}
        while todo:
            for tp, recs in (await consumer.getmany(timeout_ms=1000)).items():
                for rec in recs:
                    if rec.offset < todo.get(tp, 0):
                        ids.add(Request.from_wire(rec.value).id)
                if tp in todo and await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
    finally:
        await consumer.stop()
    return ids


async def record_count(topic: str) -> int:
    """How many records a topic holds (end minus beginning offsets, all partitions)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from turnout.client import ensure_topics

    partitions = (await ensure_topics(BOOTSTRAP, [topic], 1))[topic]
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        await consumer.stop()


def events(worker: Worker, name: str) -> list[dict]:
    """The worker's log lines with ``event == name``."""
    return [line for line in worker.log_lines() if line.get("event") == name]


def log_time(line: dict) -> float:
    """A structlog ISO timestamp as epoch seconds."""
    import datetime

    return datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


# -- operator commands (turnout replay, dlq, status) ------------------------------------------


def iso(t: float) -> str:
    """A Unix time as an ISO 8601 UTC string with milliseconds, for --since/--until."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


async def run_turnout(
    *args: str, env: dict[str, str], timeout_s: float = 180
) -> tuple[int, str, str]:
    """Run ``turnout ARGS`` to completion without blocking the event loop: (rc, stdout, stderr)."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *TURNOUT, *args, env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


async def turnout_json(*args: str, env: dict[str, str], timeout_s: float = 180) -> dict:
    """Run a ``turnout ... --json`` command and decode the JSON on its last stdout line."""
    rc, out, err = await run_turnout(*args, "--json", env=env, timeout_s=timeout_s)
    lines = out.strip().splitlines()
    assert lines, f"turnout {' '.join(args)} printed nothing (rc {rc}); stderr:\n{err}"
    doc = orjson.loads(lines[-1])
    doc["_rc"] = rc
    doc["_stderr"] = err
    return doc


def probing_env(health_topic: str, interval_s: float = 1.0) -> dict[str, str]:
    """Worker env for a test's own health topic, probed often so an outage heals quickly."""
    return {
        "TURNOUT_HEALTH_TOPIC": health_topic,
        "TURNOUT_PROBE_INTERVAL_S": str(interval_s),
        "TURNOUT_PROBATION_PROBES": "1",
    }


async def health_records(topic: str) -> list:
    """Every record on a health topic, in order (``turnout.health.HealthRecord``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from turnout.client import ensure_topics
    from turnout.health import HealthRecord

    partitions = (await ensure_topics(BOOTSTRAP, [topic], 1))[topic]
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await consumer.start()
    out = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for rec in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    out.append(HealthRecord.from_wire(rec.value))
    finally:
        await consumer.stop()
    return out


async def wait_healthy(topic: str, backend: str, since_ms: int, timeout_s: float = 60) -> None:
    """Wait until the prober reports ``backend`` healthy after ``since_ms``."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        mine = [r for r in await health_records(topic) if r.backend == backend]
        if mine and mine[-1].state.value == "healthy" and mine[-1].updated_ms > since_ms:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"backend {backend} not healthy again within {timeout_s} s")


async def served_calls(backend: MockBackend, health_topic: str, timeout_s: float = 20) -> int:
    """Chat calls the mock served for requests, not probes: read just after a probe round.

    Probes are chat calls too; each one is followed by one record with a probe result
    on the health topic (a backend busy with traffic gets a record without a probe).
    Reading right after a new probe record leaves a whole interval before the next one.
    """
    import asyncio

    async def probe_records() -> int:
        return sum(1 for r in await health_records(health_topic) if r.probe_ok is not None)

    before = await probe_records()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        probes = await probe_records()
        if probes > before:
            calls = backend.stats()["by_route"].get("/v1/chat/completions", 0)
            return calls - probes
        await asyncio.sleep(0.05)
    raise AssertionError(f"no probe recorded on {health_topic} within {timeout_s} s")


class GatewayProcess:
    """A ``turnout gateway`` process on a free port; ``start`` waits until /readyz answers 200."""

    def __init__(
        self,
        tmp: pathlib.Path,
        *,
        config_path: pathlib.Path,
        request_topic: str,
        gateway_id: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway_id = gateway_id
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": BOOTSTRAP,
            "TURNOUT_CONFIG": str(config_path),
            "TURNOUT_REQUEST_TOPIC": request_topic,
            "TURNOUT_GATEWAY_ID": gateway_id,
            "TURNOUT_LOG_FORMAT": "json",
            **(extra_env or {}),
        }
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def log_path(self) -> pathlib.Path:
        return self.tmp / f"gateway-{self.gateway_id}-{self.runs}.log"

    def start(self, wait: bool = True) -> None:
        self.runs += 1
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*TURNOUT, "gateway", "--port", str(self.port)],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode}: {self.log_path.read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready in {timeout_s} s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)


class GatewayStack:
    """A mock backend, a worker and a gateway on unique topics: the whole path over HTTP."""

    def __init__(
        self,
        tmp: pathlib.Path,
        *,
        gateway_env: dict[str, str] | None = None,
        mock_args: tuple[str, ...] = (),
        protocols: tuple[str, ...] = ("openai", "ollama"),
        config_text: Callable[[str], str] | None = None,
    ) -> None:
        """``config_text(backend_url)``: the worker config, instead of one route per protocol."""
        self.tmp = tmp
        self.backend = MockBackend(tmp, *mock_args)
        self.request_topic = unique("gw.requests")
        config = (
            config_text(self.backend.url)
            if config_text is not None
            else config_for(*((f"mock-{p}", p, self.backend.url) for p in protocols))
        )
        self.worker = Worker(tmp, config, app_id=unique("gw-app"), request_topic=self.request_topic)
        self.gateway = GatewayProcess(
            tmp,
            config_path=self.worker.config_path,
            request_topic=self.request_topic,
            gateway_id=unique("gw"),
            extra_env=gateway_env,
        )

    @property
    def url(self) -> str:
        return self.gateway.url

    def stop(self) -> None:
        for p in (self.gateway, self.worker, self.backend):
            p.stop()
