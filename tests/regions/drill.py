"""Failure drills for three regions: a region's Kafka dies mid-load; the links are cut.

Needs ``scripts/regions start`` already done (REGIONS_PORT_BASE, REGIONS_STATE in the
environment). Starts one mock backend and one worker per region, the delay proxy in
front of each remote cluster (in this process), and a ``RegionalClient`` homed in eu
(eu direct, us 80 ms away, ap 220 ms away) that sends a steady load. Then:

- ``kafka-dies``: ``scripts/regions stop eu`` mid-load; the client fails over to us;
  ``scripts/regions start eu``; the client comes back to eu. Every request eu had
  acknowledged must be answered once eu is back; none lost.
- ``link-cut``: ``scripts/regions stop mm2`` (every inter-region link) and every delay
  proxy cut mid-load; then healed. No duplicate final answer, none lost.
- ``path-cut``: a client of eu that uses only the remote regions (eu drained) loses
  its link to us (black hole: timeouts, not refusals); it fails over to ap and comes
  back to us after the link heals. None lost.

Prints sent / answered / lost / duplicated and the times. Used by
``tests/regions/test_three_regions.py`` (short) and ``scripts/region-drill`` (long,
output in docs/multi-region-drill.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.integration.harness import ROOT, MockBackend, Worker, chat_request, config_for, unique
from turnout.client import ensure_request_topic, ensure_topics
from turnout.core.nearest import Endpoint
from turnout.region_client import NoRegionReachable, RegionalClient
from turnout.testing.delay_proxy import DelayProxy, parse_rtts, region_routes

REGIONS = ("us", "eu", "ap")
RTTS = "us-eu=80,us-ap=150,eu-ap=220"
HOME = "eu"


def port_base() -> int:
    return int(os.environ.get("REGIONS_PORT_BASE", "63100"))


def direct(region: str) -> str:
    return f"127.0.0.1:{port_base() + 10 * REGIONS.index(region)}"


def endpoints_from(home: str) -> tuple[Endpoint, ...]:
    """What a client in ``home`` is configured with: its region direct, the others proxied."""
    rtts = parse_rtts(RTTS)
    out = []
    for i, region in enumerate(REGIONS):
        if region == home:
            out.append(Endpoint(region, direct(region), 1.0))
        else:
            port = port_base() + 10 * i + 5 + REGIONS.index(home)
            out.append(Endpoint(region, f"127.0.0.1:{port}", rtts[frozenset({home, region})]))
    return tuple(out)


def regions_cmd(*args: str) -> float:
    """Run scripts/regions; seconds it took."""
    t0 = time.monotonic()
    out = subprocess.run(
        [str(ROOT / "scripts" / "regions"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    if out.returncode != 0:
        raise RuntimeError(f"scripts/regions {' '.join(args)} failed: {out.stderr[-2000:]}")
    return time.monotonic() - t0


async def timed(fn: Callable[..., object], *args: str) -> float:
    """Run a blocking scripts/regions call in a thread; seconds it took."""
    t0 = time.monotonic()
    await asyncio.to_thread(fn, *args)
    return time.monotonic() - t0


@dataclass
class Tally:
    """What the client saw: per request id, where it was accepted and its replies."""

    accepted: dict[str, str] = field(default_factory=dict)
    accepted_at: dict[str, float] = field(default_factory=dict)
    unsent: list[str] = field(default_factory=list)
    failovers: list[float] = field(default_factory=list)
    """Seconds a send took when it had to try more than one region."""

    def report(self, name: str, client: RegionalClient, extra: dict[str, object]) -> dict:
        ids = set(self.accepted)
        replies = {i: client.replies.get(i, []) for i in ids}
        answered = {i for i, r in replies.items() if r}
        duplicated = {i for i, r in replies.items() if len(r) > 1}
        wrong = {i for i, r in replies.items() for _, rep in r if rep.id != i}
        per_region = {r: sum(1 for v in self.accepted.values() if v == r) for r in REGIONS}
        out = {
            "drill": name,
            "sent": len(ids) + len(self.unsent),
            "accepted": len(ids),
            "accepted_per_region": per_region,
            "not_accepted_anywhere": len(self.unsent),
            "answered": len(answered),
            "lost": len(ids - answered),
            "duplicated": len(duplicated),
            "duplicate_ids": sorted(duplicated)[:3],
            "duplicates_answered_first_by": dict(
                Counter(replies[i][0][0] for i in duplicated).most_common()
            ),
            "wrong_id": len(wrong),
            "errors": sum(1 for r in replies.values() if r and r[0][1].status != "ok"),
            "failover_send_s_max": round(max(self.failovers), 2) if self.failovers else None,
            **extra,
        }
        print(f"drill {name}: " + ", ".join(f"{k}={v}" for k, v in out.items()), flush=True)
        return out


class Load:
    """A steady stream of requests from one RegionalClient, ``rate`` per second."""

    def __init__(self, client: RegionalClient, client_id: str, rate: float, name: str) -> None:
        self.client = client
        self.client_id = client_id
        self.name = name
        """Part of every request id: phases of one run never share an id."""
        self.rate = rate
        self.tally = Tally()
        self._n = 0
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    async def _one(self, req_id: str) -> None:
        try:
            sent = await self.client.send(chat_request(req_id, self.client_id, f"hi {req_id}"))
        except NoRegionReachable:
            self.tally.unsent.append(req_id)
            return
        self.tally.accepted[req_id] = sent.region
        self.tally.accepted_at[req_id] = time.monotonic()
        if len(sent.attempts) > 1:
            self.tally.failovers.append(sent.took_s)

    async def _run(self) -> None:
        while True:
            self._n += 1
            task = asyncio.create_task(self._one(f"{self.name}-{self.client_id}-{self._n:05d}"))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
            await asyncio.sleep(1 / self.rate)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._sends, return_exceptions=True)

    def last_accept(self, region: str, before: float | None = None) -> float | None:
        ts = [
            t
            for i, t in self.tally.accepted_at.items()
            if self.tally.accepted[i] == region and (before is None or t <= before)
        ]
        return max(ts) if ts else None

    def first_accept(self, region: str, after: float) -> float | None:
        ts = [
            t
            for i, t in self.tally.accepted_at.items()
            if self.tally.accepted[i] == region and t >= after
        ]
        return min(ts) if ts else None


class Stack:
    """One mock backend and one worker per region, the delay proxies, the client."""

    def __init__(
        self,
        tmp: pathlib.Path,
        *,
        attempt_timeout_s: float,
        regions: Callable[..., object] | None = None,
    ) -> None:
        self.tmp = tmp
        self.regions = regions or regions_cmd
        """Runs scripts/regions with the right REGIONS_PORT_BASE and REGIONS_STATE."""
        self.client_id = unique("drill")
        self.request_topic = unique("drill.requests")
        self.reply_topic = f"turnout.replies.{self.client_id}"
        self.rtts: dict[str, float] = {}
        self.backends: dict[str, MockBackend] = {}
        self.workers: dict[str, Worker] = {}
        self.proxies = [DelayProxy(r) for r in region_routes(port_base(), parse_rtts(RTTS))]
        self.client = RegionalClient(
            endpoints_from(HOME),
            request_topic=self.request_topic,
            reply_topic=self.reply_topic,
            attempt_timeout_s=attempt_timeout_s,
        )

    async def start(self) -> None:
        for region in REGIONS:
            await ensure_request_topic(direct(region), self.request_topic, 2)
            await ensure_topics(direct(region), [self.reply_topic], 1)
        for p in self.proxies:
            await p.start()
        app = unique("drill")
        for region in REGIONS:
            backend = MockBackend(self.tmp)
            self.backends[region] = backend
            self.workers[region] = Worker(
                self.tmp,
                config_for((f"{region}-local", "openai", backend.url)),
                app_id=f"{app}-{region}",
                request_topic=self.request_topic,
                partitions=2,
                name=f"worker-{region}",
                extra_env={"KAFKA_BOOTSTRAP": direct(region), "TURNOUT_REGION": region},
            )
        await self.client.start_readers()
        # Every region serves before the drill starts: one request straight to each.
        t0 = time.monotonic()
        for region in REGIONS:
            probe = RegionalClient(
                [Endpoint(region, direct(region))],
                request_topic=self.request_topic,
                reply_topic=self.reply_topic,
                attempt_timeout_s=10,
            )
            req = chat_request(unique(f"warm-{region}"), self.client_id, "warm up")
            await probe.send(req)
            await probe.stop()
            missing = await self.client.wait_for({req.id}, 240)
            if missing:
                raise RuntimeError(f"region {region}'s worker did not answer within 240 s")
            self.client.replies.pop(req.id)
        print(f"all three workers serving {time.monotonic() - t0:.1f}s after start", flush=True)
        # Connect to every region now, ranked by measured RTT: a failover then costs the
        # failover bound plus one acknowledged send, not a new connection on top.
        self.rtts = await self.client.measure_rtts()
        print(f"measured RTTs from {HOME}: {self.rtts}", flush=True)

    def restart_dead_workers(self) -> list[str]:
        dead = [r for r, w in self.workers.items() if not w.alive()]
        for r in dead:
            self.workers[r].start()
        return dead

    async def stop(self) -> None:
        await self.client.stop()
        for p in self.proxies:
            await p.stop()
        for w in self.workers.values():
            w.stop()
        for b in self.backends.values():
            b.stop()


async def kafka_dies(stack: Stack, *, rate: float, before_s: float, down_s: float) -> dict:
    """eu's whole cluster stops mid-load; the client fails over and comes back."""
    load = Load(stack.client, stack.client_id, rate, "kafka-dies")
    load.start()
    await asyncio.sleep(before_s)
    t_kill = time.monotonic()
    stop_took = await timed(stack.regions, "stop", HOME)
    await asyncio.sleep(down_s)
    t_start = time.monotonic()
    start_took = await timed(stack.regions, "start", HOME)
    t_up = time.monotonic()
    # Back at home: the next send after eu's backoff expires goes there again.
    for _ in range(180):
        if load.first_accept(HOME, t_up) is not None:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)
    await load.stop()
    restarted = stack.restart_dead_workers()
    t_wait = time.monotonic()
    missing = await stack.client.wait_for(set(load.tally.accepted), 240)
    last_home = load.last_accept(HOME, before=t_kill + stop_took)
    first_away = min(
        (t for r in REGIONS if r != HOME if (t := load.first_accept(r, t_kill)) is not None),
        default=None,
    )
    back = load.first_accept(HOME, t_up)
    answered_home_after = [
        i
        for i, r in load.tally.accepted.items()
        if r == HOME and load.tally.accepted_at[i] < t_kill + stop_took and i not in missing
    ]
    return load.tally.report(
        "kafka-dies",
        stack.client,
        {
            "stop_eu_took_s": round(stop_took, 1),
            "start_eu_took_s": round(start_took, 1),
            "eu_down_s": round(t_up - t_kill, 1),
            "gap_last_eu_ack_to_first_us_ack_s": (
                round(first_away - last_home, 2) if first_away and last_home else None
            ),
            "back_to_eu_after_start_s": round(back - t_up, 2) if back else None,
            "eu_accepted_answered": len(answered_home_after),
            "all_answered_after_s": round(time.monotonic() - t_wait, 1),
            "since_kill_s": round(time.monotonic() - t_kill, 1),
            "workers_restarted": restarted,
            "start_requested_at_s": round(t_start - t_kill, 1),
        },
    )


async def link_cut(stack: Stack, *, rate: float, before_s: float, cut_s: float) -> dict:
    """MirrorMaker 2 stopped and every delay proxy cut mid-load, then both healed."""
    load = Load(stack.client, stack.client_id, rate, "link-cut")
    load.start()
    await asyncio.sleep(before_s)
    t_cut = time.monotonic()
    for p in stack.proxies:
        p.set_cut(True)
    stop_took = await timed(stack.regions, "stop", "mm2")
    await asyncio.sleep(cut_s)
    for p in stack.proxies:
        p.set_cut(False)
    start_took = await timed(stack.regions, "start", "mm2")
    await asyncio.sleep(2)
    await load.stop()
    t_wait = time.monotonic()
    missing = await stack.client.wait_for(set(load.tally.accepted), 120)
    return load.tally.report(
        "link-cut",
        stack.client,
        {
            "stop_mm2_took_s": round(stop_took, 1),
            "start_mm2_took_s": round(start_took, 1),
            "cut_s": round(time.monotonic() - t_cut, 1),
            "missing_after_wait": len(missing),
            "all_answered_after_s": round(time.monotonic() - t_wait, 1),
        },
    )


async def path_cut(stack: Stack, *, rate: float, before_s: float, cut_s: float) -> dict:
    """A client of eu whose home is drained (it uses only us and ap, both over the WAN)
    loses its link to us: a black hole, so sends time out instead of being refused. It
    fails over to ap, returns to us once the link heals, and loses nothing."""
    route = next(p for p in stack.proxies if p.route.name == f"{HOME}->us")
    remote = tuple(e for e in endpoints_from(HOME) if e.region != HOME)
    client = RegionalClient(
        remote,
        request_topic=stack.request_topic,
        reply_topic=stack.reply_topic,
        attempt_timeout_s=stack.client.attempt_timeout_s,
    )
    await client.start_readers()
    await client.measure_rtts()
    load = Load(client, stack.client_id, rate, "path-cut")
    try:
        load.start()
        await asyncio.sleep(before_s)
        t_cut = time.monotonic()
        route.set_cut(True)
        await asyncio.sleep(cut_s)
        t_heal = time.monotonic()
        route.set_cut(False)
        for _ in range(60):
            if load.first_accept("us", t_heal) is not None:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        await load.stop()
        t_wait = time.monotonic()
        missing = await client.wait_for(set(load.tally.accepted), 120)
        last_us = load.last_accept("us", before=t_cut + 0.5)
        first_ap = load.first_accept("ap", t_cut)
        back = load.first_accept("us", t_heal)
        return load.tally.report(
            "path-cut",
            client,
            {
                "cut_s": round(t_heal - t_cut, 1),
                "gap_last_us_ack_to_first_ap_ack_s": (
                    round(first_ap - last_us, 2) if first_ap and last_us else None
                ),
                "back_to_us_after_heal_s": round(back - t_heal, 2) if back else None,
                "missing_after_wait": len(missing),
                "all_answered_after_s": round(time.monotonic() - t_wait, 1),
            },
        )
    finally:
        route.set_cut(False)
        await client.stop()


async def run(which: list[str], *, rate: float, phase_s: float, attempt_timeout_s: float) -> list:
    with tempfile.TemporaryDirectory(prefix="region-drill-") as tmp:
        stack = Stack(pathlib.Path(tmp), attempt_timeout_s=attempt_timeout_s)
        results = []
        try:
            await stack.start()
            if "kafka-dies" in which:
                results.append(await kafka_dies(stack, rate=rate, before_s=phase_s, down_s=phase_s))
            if "link-cut" in which:
                results.append(await link_cut(stack, rate=rate, before_s=phase_s, cut_s=phase_s))
            if "path-cut" in which:
                results.append(await path_cut(stack, rate=rate, before_s=phase_s, cut_s=phase_s))
        finally:
            await stack.stop()
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("drills", nargs="*", default=["kafka-dies", "link-cut", "path-cut"])
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second")
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds before/while down")
    parser.add_argument("--failover-s", type=float, default=3.0, help="per-region attempt bound")
    args = parser.parse_args(argv)
    from turnout import logs

    logs.configure("warning", "console")
    results = asyncio.run(
        run(args.drills, rate=args.rate, phase_s=args.phase_s, attempt_timeout_s=args.failover_s)
    )
    bad = [r for r in results if r["lost"] or r["wrong_id"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
