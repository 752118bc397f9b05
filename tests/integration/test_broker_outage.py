"""A broker outage under light load: the worker waits quietly and cheaply, then loses nothing.

It stops and restarts the test broker itself (``scripts/kafka``, with this process's
environment, as ``scripts/test`` started it).
"""

import asyncio
import os
import subprocess
import time

from tests.integration.harness import (
    BOOTSTRAP,
    ROOT,
    chat_request,
    collect_replies,
    config_for,
    events,
    free_port,
    unique,
)
from turnout.client import RequestPublisher, ensure_request_topic, ensure_topics

OUTAGE_S = 15


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kafka(command: str) -> None:
    # A loaded machine with thousands of partitions can take over a minute to start.
    env = {**os.environ, "KAFKA_BOOTSTRAP": BOOTSTRAP, "KAFKA_START_TIMEOUT": "180"}
    subprocess.run([str(ROOT / "scripts" / "kafka"), command], env=env, check=True, timeout=240)


def line_count(path) -> int:
    return len(path.read_bytes().splitlines())


async def test_a_broker_outage_costs_few_lines_little_cpu_and_no_request(spawn, names):
    """15 s without a broker: under 0.1 core, a handful of log lines, then 0 lost."""
    backend = spawn.backend("--latency-ms", "2000")
    clients = [unique("c") for _ in range(4)]
    topics = {f"turnout.replies.{c}": c for c in clients}
    await ensure_request_topic(BOOTSTRAP, names.request_topic, 4)
    await ensure_topics(BOOTSTRAP, list(topics), 1)
    worker = spawn.worker(
        config_for(("b", "openai", backend.url)),
        app_id=names.app_id,
        request_topic=names.request_topic,
        extra_env={"TURNOUT_WEB_PORT": str(free_port())},  # the lag sampler runs too
    )
    ids: dict[str, set[str]] = {t: set() for t in topics}
    pub = RequestPublisher(BOOTSTRAP, names.request_topic)
    await pub.start()

    async def send(n: int, tag: str) -> dict[str, set[str]]:
        batch: dict[str, set[str]] = {t: set() for t in topics}
        for i in range(n):
            topic = list(topics)[i % len(topics)]
            rid = f"{topics[topic]}-{tag}-{i}"
            batch[topic].add(rid)
            ids[topic].add(rid)
            await pub.send(chat_request(rid, topics[topic], "hi"))
        return batch

    try:
        # The worker is up and serving, then 40 requests (2 s each at the backend)
        # are in flight when the broker goes away: their replies must wait for it.
        await collect_replies(await send(8, "warm"), timeout_s=90)
        await send(40, "load")
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if backend.stats()["in_flight"] >= 20:
                break
            await asyncio.sleep(0.05)
    finally:
        await pub.stop()
    in_flight = backend.stats()["in_flight"]

    pid = worker.proc.pid
    lines_before, cpu_before = line_count(worker.log_path), cpu_s(pid)
    stopping = time.monotonic()
    kafka("stop")  # a controlled shutdown: seconds, more with many partitions
    try:
        await asyncio.sleep(OUTAGE_S)
        down_s = time.monotonic() - stopping  # CPU and lines count from the same moment
        lines = worker.log_path.read_bytes().splitlines()[lines_before:]
        cpu = cpu_s(pid) - cpu_before
    finally:
        kafka("start")
    got = await collect_replies(ids, timeout_s=120)

    answered = {rid for t in got for rid in got[t]}
    sent = {rid for t in ids for rid in ids[t]}
    duplicated = sum(len(rs) - 1 for t in got for rs in got[t].values())
    print(
        f"broker down {down_s:.1f} s with {in_flight} in flight: worker logged {len(lines)} "
        f"lines, used {cpu:.2f} CPU s ({cpu / down_s:.3f} cores); sent {len(sent)} answered "
        f"{len(answered & sent)} lost {len(sent - answered)} duplicated {duplicated}"
    )
    for line in lines:
        print("   ", line[:200].decode("utf-8", "replace"))
    assert cpu / down_s < 0.1
    # broker_unreachable, one broker_still_unreachable per 10 s, a publish_retry per
    # 10 s, and slack for a few one-off lines (a heartbeat, a commit). Requests that
    # finish while the broker shuts down log their own request_completed: not noise.
    noise = [line for line in lines if b'"request_completed"' not in line]
    assert len(noise) <= 6 + 2 * int(down_s // 10)
    assert any(b"broker_unreachable" in line for line in lines)
    assert sent <= answered, f"{len(sent - answered)} lost"
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if events(worker, "broker_reachable"):
            break
        await asyncio.sleep(0.5)
    (back,) = events(worker, "broker_reachable")
    print(f"    then: {back}")
