"""Measurements on the real local model (docs/local-llm.md; tables in docs/benchmarks.md).

    python -m bench.bench_local_llm spill  [--rates 0.5,1,2,5,10] [--duration 20]
    python -m bench.bench_local_llm stream [--n 20]

Both start their own llama.cpp server (SmolLM2-135M, ``scripts/local-llm install``
first), a mock "cloud" (300 ms a call), a worker on ``config/local-llm.yaml`` with a
fresh request topic and, for ``stream``, a gateway; the broker at KAFKA_BOOTSTRAP
must be up. Ports: ``--port`` for the server, the next two for the mock and gateway.

``spill``: open-loop short chats (16 output tokens at most, temperature 0) at each
rate, each with a 10 s deadline; per rate: sent, answered, lost, the share served
locally and spilled to the cloud, deadline misses (``deadline_exceeded`` replies plus
answers that came after the deadline) and end-to-end p50/p99 (send to reply received).

``stream``: the same streamed chat, one at a time, three ways in turn: straight to
the server, through turnout over Kafka (chunks on the reply topic), and through the
gateway's SSE; time to the first content token and to the end, and what turnout adds
(p50/p99 of the paired differences: request i through turnout minus request i direct).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.types import Reply, Request, decode_reply_message
from turnout.client import ensure_topics
from turnout.ops import local_llm

ROOT = pathlib.Path(__file__).parents[1]
TURNOUT = [sys.executable, "-m", "turnout.cli"]


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))], 1)


class Stack:
    """llama.cpp server, mock cloud, worker (and gateway): started, and stopped in reverse."""

    def __init__(self, port: int, bootstrap: str, logs: pathlib.Path, gateway: bool) -> None:
        self.bootstrap = bootstrap
        self.llm_url = f"http://127.0.0.1:{port}"
        self.mock_url = f"http://127.0.0.1:{port + 1}"
        self.gateway_url = f"http://127.0.0.1:{port + 2}"
        tag = uuid.uuid4().hex[:8]
        self.topic = f"bench-llm.requests-{tag}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": bootstrap,
            "TURNOUT_CONFIG": str(ROOT / "config" / "local-llm.yaml"),
            "TURNOUT_LLM_URL": self.llm_url,
            "TURNOUT_MOCK_URL": self.mock_url,
            "TURNOUT_REQUEST_TOPIC": self.topic,
            "TURNOUT_APP_ID": f"bench-llm-{tag}",
            "TURNOUT_HEALTH_TOPIC": f"bench-llm-{tag}.health",
            "TURNOUT_DATA_DIR": str(logs / f"data-{tag}"),
            "TURNOUT_LOG_FORMAT": "json",
            "TURNOUT_GATEWAY_ID": f"bench-{tag}",
        }
        self._spawn("llama", local_llm.server_command(port))
        local_llm.wait_ready(self.llm_url, pid=self.procs[-1].pid)
        mock = ["mock-backend", "--port", str(port + 1), "--latency-ms", "300"]
        self._spawn("mock", [*TURNOUT, *mock])
        self._spawn("worker", [*TURNOUT, "worker"], env)
        if gateway:
            self._spawn("gateway", [*TURNOUT, "gateway", "--port", str(port + 2)], env)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self._logs / f"{name}.log", "ab") as log:
            self.procs.append(
                subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            )

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def chat_body(text: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    return body


class Replies:
    """Reads one reply topic from its end; records when each message for an id arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.final: dict[str, tuple[float, Reply]] = {}
        self.first_token: dict[str, float] = {}
        self.repeats = 0
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        await self._consumer.start()
        tp = TopicPartition(self.topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for recs in batches.values():
                for rec in recs:
                    msg = decode_reply_message(rec.value)
                    if isinstance(msg, Reply):
                        self._arrived.set()
                        if msg.id in self.final:
                            self.repeats += 1
                        else:
                            self.final[msg.id] = (now, msg)
                    elif msg.id not in self.first_token and any(
                        (c.get("delta") or {}).get("content") for c in msg.delta.get("choices", [])
                    ):
                        self.first_token[msg.id] = now

    async def wait(self, ids: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ids <= self.final.keys() and time.monotonic() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._consumer.stop()


async def wait_for_worker(
    stack: Stack,
    replies: Replies,
    send: Callable[[str, dict[str, Any], int], Awaitable[None]],
    timeout_s: float = 90,
) -> None:
    """Send warm-up requests until one is answered (the worker joins the group first)."""
    deadline = time.monotonic() + timeout_s
    i = 0
    while time.monotonic() < deadline:
        rid = f"warm-{i}"
        await send(rid, chat_body("Hi", 4), 30_000)
        await replies.wait({rid}, 5)
        if rid in replies.final:
            return
        i += 1
    raise RuntimeError(f"the worker answered nothing in {timeout_s} s: see its log")


async def spill(a: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(a.port, a.bootstrap, pathlib.Path(a.logs), gateway=False)
    client = f"bench-llm-{uuid.uuid4().hex[:6]}"
    reply_topic = f"turnout.replies.{client}"
    await ensure_topics(a.bootstrap, [reply_topic], 1)
    await ensure_topics(a.bootstrap, [stack.topic], 8)
    producer = AIOKafkaProducer(bootstrap_servers=a.bootstrap, acks="all", linger_ms=1)
    replies = Replies(a.bootstrap, reply_topic)
    await producer.start()
    await replies.start()
    sent_at: dict[str, float] = {}

    async def send(rid: str, body: dict[str, Any], timeout_ms: int) -> None:
        req = Request(
            id=rid, client_id=client, kind="chat", model="default", body=body,
            timeout_ms=timeout_ms,
        )  # fmt: skip
        sent_at[rid] = time.monotonic()
        await producer.send(stack.topic, req.to_wire(), key=client.encode())

    rows = []
    try:
        await wait_for_worker(stack, replies, send)
        for rate in a.rates:
            n = max(1, round(rate * a.duration))
            ids = [f"r{rate}-{i}" for i in range(n)]
            t0 = time.monotonic() + 0.05
            for i, rid in enumerate(ids):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                text = f"Give one short fact about the number {i}."
                await send(rid, chat_body(text, a.max_tokens), a.deadline_ms)
            await replies.wait(set(ids), a.deadline_ms / 1000 + 30)
            rows.append(summarize(rate, ids, sent_at, replies, a.deadline_ms))
            print(json.dumps(rows[-1]), flush=True)
            await asyncio.sleep(a.pause)
    finally:
        await replies.stop()
        await producer.stop()
        stack.stop()
    return {"rows": rows, "repeats": replies.repeats}


def summarize(
    rate: float, ids: list[str], sent_at: dict[str, float], replies: Replies, deadline_ms: int
) -> dict[str, Any]:
    got = {rid: replies.final[rid] for rid in ids if rid in replies.final}
    ok = {rid: r for rid, (_, r) in got.items() if r.status == "ok"}
    e2e = {rid: (got[rid][0] - sent_at[rid]) * 1000 for rid in got}
    errors: dict[str, int] = {}
    for _, r in got.values():
        if r.error is not None:
            errors[r.error.code] = errors.get(r.error.code, 0) + 1
    local = [rid for rid, r in ok.items() if r.backend == "smollm2"]
    cloud = [rid for rid, r in ok.items() if r.backend == "cloud"]
    late = [rid for rid in ok if e2e[rid] > deadline_ms]
    ok_e2e = [e2e[rid] for rid in ok]
    return {
        "rate": rate,
        "sent": len(ids),
        "answered": len(got),
        "lost": len(ids) - len(got),
        "ok": len(ok),
        "local": len(local),
        "spilled": len(cloud),
        "local_share": round(len(local) / len(ids), 3),
        "spilled_share": round(len(cloud) / len(ids), 3),
        "errors": errors,
        "deadline_misses": errors.get("deadline_exceeded", 0) + len(late),
        "p50_ms": pct(ok_e2e, 0.50),
        "p99_ms": pct(ok_e2e, 0.99),
        "local_p50_ms": pct([e2e[r] for r in local], 0.50),
        "cloud_p50_ms": pct([e2e[r] for r in cloud], 0.50),
    }


# -- streaming ------------------------------------------------------------------------------------


async def sse_times(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[float, float, str]:
    """POST a streamed chat; (seconds to the first content token, to [DONE], the text)."""
    start = time.monotonic()
    first = None
    text = []
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            for c in json.loads(data).get("choices", []):
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    first = first if first is not None else time.monotonic()
                    text.append(piece)
    end = time.monotonic()
    if first is None:
        raise RuntimeError(f"{url}: the stream had no content")
    return first - start, end - start, "".join(text)


async def stream(a: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(a.port, a.bootstrap, pathlib.Path(a.logs), gateway=True)
    client = f"bench-llm-{uuid.uuid4().hex[:6]}"
    reply_topic = f"turnout.replies.{client}"
    await ensure_topics(a.bootstrap, [reply_topic], 1)
    await ensure_topics(a.bootstrap, [stack.topic], 8)
    producer = AIOKafkaProducer(bootstrap_servers=a.bootstrap, acks="all", linger_ms=1)
    replies = Replies(a.bootstrap, reply_topic)
    await producer.start()
    await replies.start()
    prompt = "List five animals that live in the sea."
    times: dict[str, dict[str, list[float]]] = {
        w: {"ttft": [], "total": []} for w in ("direct", "kafka", "gateway")
    }
    texts: dict[str, set[str]] = {w: set() for w in times}

    async def send(rid: str, body: dict[str, Any], timeout_ms: int, streamed: bool = False) -> None:
        req = Request(
            id=rid, client_id=client, kind="chat", model="default", body=body,
            timeout_ms=timeout_ms, stream=streamed,
        )  # fmt: skip
        await producer.send_and_wait(stack.topic, req.to_wire(), key=client.encode())

    try:
        await wait_for_worker(stack, replies, send)
        await _wait_gateway(stack.gateway_url)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            body = chat_body(prompt, a.max_tokens, stream=True)
            for i in range(a.n):
                ttft, total, text = await sse_times(
                    session, f"{stack.llm_url}/v1/chat/completions", body
                )
                _add(times["direct"], ttft, total)
                texts["direct"].add(text)

                rid = f"s{i}"
                start = time.monotonic()
                await send(rid, chat_body(prompt, a.max_tokens), 60_000, streamed=True)
                await replies.wait({rid}, 60)
                end, reply = replies.final[rid]
                assert reply.status == "ok" and reply.backend == "smollm2", reply
                _add(times["kafka"], replies.first_token[rid] - start, end - start)
                assert reply.body is not None
                texts["kafka"].add(reply.body["choices"][0]["message"]["content"])

                gw_body = {**body, "model": "default"}
                ttft, total, text = await sse_times(
                    session, f"{stack.gateway_url}/v1/chat/completions", gw_body
                )
                _add(times["gateway"], ttft, total)
                texts["gateway"].add(text)
    finally:
        await replies.stop()
        await producer.stop()
        stack.stop()
    out: dict[str, Any] = {"n": a.n, "max_tokens": a.max_tokens, "ways": {}}
    for way, t in times.items():
        out["ways"][way] = {
            f"{k}_{q}_ms": pct([v * 1000 for v in t[k]], p)
            for k in ("ttft", "total")
            for q, p in (("p50", 0.5), ("p99", 0.99))
        }
    # What turnout adds, paired: request i through turnout minus request i straight to
    # the server (the three ways run in turn, so each pair saw the same machine load).
    direct = times["direct"]
    for way in ("kafka", "gateway"):
        out["ways"][way]["added"] = {
            f"{k}_{q}_ms": pct(
                [(t - d) * 1000 for t, d in zip(times[way][k], direct[k], strict=True)], p
            )
            for k in ("ttft", "total")
            for q, p in (("p50", 0.5), ("p99", 0.99))
        }
    out["same_text_every_way"] = len(set.union(*texts.values())) == 1
    return out


def _add(t: dict[str, list[float]], ttft: float, total: float) -> None:
    t["ttft"].append(ttft)
    t["total"].append(total)


async def _wait_gateway(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway at {url} not ready in {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_local_llm")
    p.add_argument("mode", choices=["spill", "stream"])
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--port", type=int, default=8090, help="llama.cpp; mock +1, gateway +2")
    p.add_argument("--rates", default="0.5,1,2,5,10")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    p.add_argument("--pause", type=float, default=5.0, help="seconds between rates")
    p.add_argument("--deadline-ms", type=int, default=10_000)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--n", type=int, default=20, help="streamed requests per way")
    p.add_argument("--logs", default="/tmp/turnout-bench-local-llm")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    a.rates = [float(r) for r in a.rates.split(",")]
    started = time.time()
    result = asyncio.run(spill(a) if a.mode == "spill" else stream(a))
    result = {
        "mode": a.mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "settings": {
            k: v for k, v in vars(a).items() if k not in ("bootstrap", "logs", "out", "mode")
        },
        "model": f"{local_llm.MODEL_ALIAS} (llama-cpp-python {local_llm.LLAMA_CPP_VERSION})",
        **result,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        pathlib.Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
