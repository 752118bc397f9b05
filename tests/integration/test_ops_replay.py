"""turnout replay against a real worker: an outage window is served again exactly once."""

from __future__ import annotations

import asyncio
import subprocess
import time

from tests.integration.harness import (
    BOOTSTRAP,
    ROOT,
    TURNOUT,
    chat_request,
    collect_replies,
    config_for,
    iso,
    probing_env,
    record_count,
    served_calls,
    turnout_json,
    unique,
    wait_healthy,
)
from turnout.client import RequestPublisher, ensure_topics

EARLIER_REPLAY = "an earlier replay (--include-replays to replay it)"


class Traffic:
    """Clients, their reply topics and a publisher on one test's request topic."""

    def __init__(self, names, n_clients: int) -> None:
        self.names = names
        self.clients = [unique("c") for _ in range(n_clients)]
        self.sent: list = []
        self.pub = RequestPublisher(BOOTSTRAP, names.request_topic)

    def topic(self, client: str) -> str:
        return f"turnout.replies.{client}"

    async def start(self) -> None:
        await ensure_topics(BOOTSTRAP, [self.names.request_topic], 2)
        await ensure_topics(BOOTSTRAP, [self.topic(c) for c in self.clients], 1)
        await self.pub.start()

    def batch(self, tag: str, n: int, timeout_ms: int | None = None) -> list:
        """With a short timeout, requests fail while no backend is routable instead of waiting."""
        cs = self.clients
        return [
            chat_request(f"{tag}-{i}", cs[i % len(cs)], f"{tag} {i}", timeout_ms=timeout_ms)
            for i in range(n)
        ]

    async def send(self, requests: list, timeout_s: float = 60) -> dict:
        """Publish and wait for one reply each; returns {id: final reply}."""
        for r in requests:
            await self.pub.send(r)
        self.sent += requests
        got = await self.replies(requests, timeout_s)
        missing = {r.id for r in requests} - got.keys()
        assert not missing, f"no reply to {sorted(missing)[:5]}"
        return {i: rs[-1] for i, rs in got.items()}

    async def replies(self, requests: list, timeout_s: float = 5) -> dict:
        """Every reply so far of ``requests``: {id: [replies in order]}."""
        by_topic: dict[str, set[str]] = {}
        for r in requests:
            by_topic.setdefault(self.topic(r.client_id), set()).add(r.id)
        got = await collect_replies(by_topic, timeout_s)
        wanted = {r.id for r in requests}
        return {i: rs for t in got.values() for i, rs in t.items() if i in wanted}

    async def outcomes_recorded(self, n: int) -> None:
        """Wait until ``n`` requests answered ok are in the done table (its changelog)."""
        for _ in range(200):
            if await record_count(f"{self.names.app_id}-done-changelog") >= n:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)

    async def stop(self) -> None:
        await self.pub.stop()


async def test_outage_drill_replays_each_failed_request_exactly_once(spawn, names):
    """Requests failed during an outage are served once by a replay; answered ones are skipped."""
    backend = spawn.backend()
    health = unique("it.health")
    traffic = Traffic(names, 2)
    await traffic.start()
    worker = spawn.worker(
        config_for(("b", "openai", backend.url), max_attempts=1),
        app_id=names.app_id,
        request_topic=names.request_topic,
        partitions=2,
        extra_env=probing_env(health),
    )
    try:
        await traffic.send(traffic.batch("before", 10))
        await asyncio.sleep(0.05)
        down_from = time.time()
        backend.configure(error_rate=1.0)
        failed = await traffic.send(traffic.batch("down", 10, timeout_ms=4000))
        backend.configure(error_rate=0.0)
        await wait_healthy(health, "b", int(time.time() * 1000))
        after = await traffic.send(traffic.batch("after", 10))
        window = ("--since", iso(down_from), "--until", iso(time.time()))
        await traffic.outcomes_recorded(20)
        assert {r.status for r in failed.values()} == {"error"}
        assert {r.status for r in after.values()} == {"ok"}
        codes = sorted({r.error.code for r in failed.values()})
        by_codes = [arg for code in codes for arg in ("--error-code", code)]
        calls = await served_calls(backend, health)
        env = worker.env

        dry = await turnout_json("replay", *window, *by_codes, "--dry-run", env=env)
        assert len(dry["would_replay"]) == 10
        assert all(" id=down-" in line for line in dry["would_replay"])

        first = await turnout_json("replay", *window, env=env)
        assert first["_rc"] == 0, first["_stderr"]
        assert (first["scanned"], first["published"]) == (20, 20)
        assert (first["answered_ok"], first["skipped_as_done"]) == (10, 10)
        assert (first["failed"], first["pending"]) == ({}, 0)
        assert await served_calls(backend, health) == calls + 10

        again = await turnout_json("replay", *window, env=env)
        assert (again["answered_ok"], again["skipped_as_done"], again["_rc"]) == (0, 20, 0)
        assert again["not_selected"] == {}  # the first run's copies lie after the window
        by_code = await turnout_json("replay", *window, *by_codes, env=env)
        assert (by_code["published"], by_code["known_done"]) == (0, 20)
        assert await served_calls(backend, health) == calls + 10

        replies = await traffic.replies(traffic.sent)
        for r in traffic.sent:
            statuses = [x.status for x in replies[r.id]]
            expected = ["error", "ok"] if r.id.startswith("down") else ["ok"]
            assert statuses == expected, (r.id, statuses)
    finally:
        await traffic.stop()


async def test_an_interrupted_replay_run_again_ends_like_one_clean_run(spawn, names):
    """Killing a replay part-way and running it again serves each failed request exactly once."""
    backend = spawn.backend("--error-rate", "1.0")
    health = unique("it.health")
    traffic = Traffic(names, 3)
    await traffic.start()
    worker = spawn.worker(
        config_for(("b", "openai", backend.url), max_attempts=1),
        app_id=names.app_id,
        request_topic=names.request_topic,
        partitions=2,
        extra_env=probing_env(health),
    )
    try:
        failed = await traffic.send(traffic.batch("r", 30, timeout_ms=4000))
        assert {r.status for r in failed.values()} == {"error"}
        backend.configure(error_rate=0.0)
        await wait_healthy(health, "b", int(time.time() * 1000))
        calls = await served_calls(backend, health)
        env = worker.env

        slow = await asyncio.create_subprocess_exec(
            *TURNOUT, "replay", "--rate", "4/s", "--json",
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(600):
                if await record_count(names.request_topic) >= 30 + 6:
                    break
                await asyncio.sleep(0.05)
        finally:
            slow.kill()
            await slow.wait()
        interrupted = await record_count(names.request_topic) - 30
        assert 0 < interrupted < 30, "the replay was not interrupted part-way"

        second = await turnout_json("replay", env=env)
        assert second["_rc"] == 0, second["_stderr"]
        assert second["not_selected"] == {EARLIER_REPLAY: interrupted}
        assert second["answered_ok"] + second["skipped_as_done"] == 30
        assert (second["failed"], second["pending"]) == ({}, 0)
        assert await served_calls(backend, health) == calls + 30, "a request was served twice"

        third = await turnout_json("replay", env=env)
        assert (third["answered_ok"], third["skipped_as_done"]) == (0, 30)
        assert await served_calls(backend, health) == calls + 30

        replies = await traffic.replies(traffic.sent)
        for r in traffic.sent:
            assert [x.status for x in replies[r.id]] == ["error", "ok"], r.id
    finally:
        await traffic.stop()
