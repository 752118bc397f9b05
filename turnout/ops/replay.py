"""``turnout replay``: re-publish a window of a topic into the request topic.

Each selected record is published again with its original key (so it lands on
the partition that holds its client's dedupe state) and its original bytes,
unless ``--to-route`` rewrites the ``model`` field; the request id never changes.
Headers say where it came from: ``turnout-replay: <topic>:<partition>:<offset>``
and, with ``--force``, ``turnout-replay-force: 1``.

Deciding what to serve is the worker's job: a request answered ok before is
skipped (its ``done`` table is co-partitioned with the request topic), unless
forced. So a replay is safe to run twice and safe to interrupt: every run
publishes the same window again and the worker serves only what is not done.

How the summary knows what the worker did: after publishing, the tool watches
the group's committed offsets of the request topic (a request's offset is
committed only after its reply or dead letter is on the broker) and the reply
and dead-letter topics from where they ended before publishing. A replayed
record whose offset is committed is *answered* if a new reply with its id
appeared (ok or failed, by error code), *failed* if it was dead-lettered again,
and otherwise *skipped as done*. Records with no outcome by ``--wait-timeout``
are *pending*. Before publishing, the tool also waits for replayed records of an
earlier, interrupted run that the worker has not committed yet, so two copies of
a request are not in flight at once.

Window: ``--since``/``--until`` (ISO 8601, local time without a zone, or a time
ago such as ``15m``, ``2h``, ``1d``; since inclusive, until exclusive, via ``offsets_for_times``)
or ``--from-offset``/``--to-offset`` (``P:O[,P:O]``, both inclusive; only the
partitions named). The window always ends at the topic's end when the run
starts, and records that are themselves replays are ignored unless
``--include-replays``, so a replay never replays its own output.

``--error-code CODE`` keeps the requests whose *final* reply (the latest one on
their reply topic, read from a minute before the window) has that code; one
whose final reply is ok is counted as skipped as done without being published.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.types import DeadLetter, Reply, decode_reply_message
from turnout.client import ensure_request_topic, ensure_topics
from turnout.errors import StartupError
from turnout.kafka.admin import client_kwargs as kafka_kwargs
from turnout.ops.replay_core import (
    REPLAY_HEADER,
    Candidate,
    Filters,
    Progress,
    Published,
    SourceRecord,
    Summary,
    Tracker,
    Window,
    error_code_verdict,
    parse_positions,
    parse_rate,
    parse_time,
    plan_ranges,
    replay_headers,
    select,
)


class ReplayError(StartupError):
    """The replay cannot start; the message says why."""

    code = "replay_refused"


REPLY_LOOKBACK_MS = 60_000
"""Replies are read from this long before the window's first request (clock skew)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What one replay run does; built from the command line by ``options_from_args``."""

    source_topic: str
    window: Window
    filters: Filters
    dead_letters: bool = False
    to_route: str | None = None
    force: bool = False
    dry_run: bool = False
    rate: float | None = None
    wait: bool = True
    wait_timeout_s: float = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-topic", help="source topic (default: the request topic)")
    parser.add_argument("--since", help="ISO 8601 time, or a time ago: 15m, 2h, 1d (inclusive)")
    parser.add_argument("--until", help="ISO 8601 time, or a time ago: 5m (exclusive)")
    parser.add_argument("--from-offset", help="P:O[,P:O...], inclusive")
    parser.add_argument("--to-offset", help="P:O[,P:O...], inclusive")
    add_common_arguments(parser)
    parser.add_argument("--client", action="append", default=[], help="only this client_id")
    parser.add_argument("--route", action="append", default=[], help="only this model/route")
    parser.add_argument(
        "--error-code", action="append", default=[], help="only requests whose final reply has it"
    )
    parser.add_argument(
        "--include-replays", action="store_true", help="also replay records that are replays"
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to-route", help="rewrite each request's model to this route")
    parser.add_argument(
        "--force", action="store_true", help="serve even requests answered ok before"
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    parser.add_argument("--rate", help="publish at most N records per second (N or N/s)")
    parser.add_argument(
        "--no-wait", action="store_true", help="publish and exit, without waiting for outcomes"
    )
    parser.add_argument("--wait-timeout", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def options_from_args(settings: Any, args: argparse.Namespace) -> Options:
    now_ms = int(time.time() * 1000)
    window = Window(
        since_ms=parse_time(args.since, now_ms) if args.since else None,
        until_ms=parse_time(args.until, now_ms) if args.until else None,
        from_offsets=parse_positions(args.from_offset) if args.from_offset else {},
        to_offsets=parse_positions(args.to_offset) if args.to_offset else {},
    )
    window.validate()
    source = args.from_topic or settings.request_topic
    return Options(
        source_topic=source,
        window=window,
        filters=Filters(
            clients=frozenset(args.client),
            routes=frozenset(args.route),
            error_codes=frozenset(args.error_code),
            include_replays=args.include_replays,
        ),
        dead_letters=source == settings.dead_letter_topic,
        **common_options(args),
    )


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "to_route": args.to_route,
        "force": args.force,
        "dry_run": args.dry_run,
        "rate": parse_rate(args.rate) if args.rate else None,
        "wait": not args.no_wait,
        "wait_timeout_s": args.wait_timeout,
    }


async def run(settings: Any, args: argparse.Namespace) -> int:
    try:
        options = options_from_args(settings, args)
    except ValueError as exc:
        print(f"turnout replay: {exc}", file=sys.stderr)
        return 2
    return await run_options(settings, options, as_json=args.json)


async def run_options(settings: Any, options: Options, *, as_json: bool) -> int:
    progress = Progress(sys.stderr)
    try:
        summary = await replay(settings, options, progress)
    except ReplayError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(summary.as_dict()) + b"\n")
    else:
        print(summary.text(dry_run=options.dry_run))
    return 0 if summary.clean else 1


# -- the run ---------------------------------------------------------------------------------


async def replay(settings: Any, options: Options, progress: Progress) -> Summary:
    """Select, publish and (unless told not to) wait for the worker's outcomes."""
    from turnout.ops.status import Offsets

    summary = Summary(waited=options.wait and not options.dry_run)
    async with Offsets(settings.bootstrap) as offsets:
        ranges = await _ranges(offsets, options)
        candidates = await _scan(settings, options, ranges, summary, progress)
        if options.filters.error_codes and candidates:
            candidates = await _filter_by_final_reply(
                settings, offsets, candidates, options.filters.error_codes, summary, progress
            )
        summary.selected = len(candidates)
        if options.dry_run:
            summary.would_replay = [c.describe() for c in candidates]
            return summary
        if not candidates:
            return summary
        await ensure_request_topic(
            settings.bootstrap, settings.request_topic, settings.request_partitions
        )
        if options.wait:
            await _wait_for_earlier_replays(settings, offsets, options, progress)
        watch = _Watch(settings, candidates)
        if options.wait:
            await watch.start()
        try:
            published = await _publish(settings, options, candidates, progress)
            summary.published = len(published)
            if options.wait:
                tracker = Tracker(published, settings.request_topic)
                await watch.follow(offsets, tracker, options.wait_timeout_s, progress)
                tracker.fill(summary)
        finally:
            await watch.stop()
    return summary


async def _ranges(offsets: Any, options: Options) -> dict[int, tuple[int, int]]:
    topic = options.source_topic
    partitions = await offsets.partitions(topic)
    if not partitions:
        raise ReplayError(f"topic {topic!r} does not exist")
    w = options.window
    since, until = {}, {}
    if w.since_ms is not None:
        since = await offsets.offsets_for_times(topic, partitions, max(w.since_ms, 0))
    if w.until_ms is not None:
        until = await offsets.offsets_for_times(topic, partitions, max(w.until_ms, 0))
    return plan_ranges(
        w,
        await offsets.beginnings(topic, partitions),
        await offsets.ends(topic, partitions),
        since,
        until,
    )


async def read_ranges(bootstrap: str, topic: str, ranges: dict[int, tuple[int, int]]) -> Any:
    """Yield the records of ``topic`` in ``{partition: (start, stop)}``, stop exclusive."""
    if not ranges:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, **kafka_kwargs(), enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tps = {TopicPartition(topic, p): stop for p, (_, stop) in ranges.items()}
        consumer.assign(list(tps))
        for tp in tps:
            consumer.seek(tp, ranges[tp.partition][0])
        while tps:
            batches = await consumer.getmany(*tps, timeout_ms=500)
            for tp, records in batches.items():
                for rec in records:
                    if rec.offset < tps.get(tp, -1):
                        yield rec
            for tp in list(tps):
                if await consumer.position(tp) >= tps[tp]:
                    del tps[tp]
    finally:
        await consumer.stop()


async def _scan(
    settings: Any,
    options: Options,
    ranges: dict[int, tuple[int, int]],
    summary: Summary,
    progress: Progress,
) -> list[Candidate]:
    total = sum(stop - start for start, stop in ranges.values())
    seen: set[tuple[str | None, str]] = set()
    out: list[Candidate] = []
    async for rec in read_ranges(settings.bootstrap, options.source_topic, ranges):
        summary.scanned += 1
        progress.update("scanning", summary.scanned, total)
        got = select(
            SourceRecord.of(rec),
            options.filters,
            dead_letters=options.dead_letters,
            to_route=options.to_route,
            reply_prefix=settings.reply_prefix,
        )
        if isinstance(got, str):
            summary.not_selected[got] += 1
            continue
        if got.request_id is not None:
            ident = (got.client_id, got.request_id)
            if ident in seen:
                summary.not_selected["a repeat of a request earlier in the window"] += 1
                continue
            seen.add(ident)
        out.append(got)
    return out


async def _filter_by_final_reply(
    settings: Any,
    offsets: Any,
    candidates: list[Candidate],
    codes: frozenset[str],
    summary: Summary,
    progress: Progress,
) -> list[Candidate]:
    topics = sorted({c.reply_topic for c in candidates if c.reply_topic})
    since = min(c.timestamp_ms for c in candidates) - REPLY_LOOKBACK_MS
    final: dict[tuple[str, str], Reply] = {}
    for topic in topics:
        partitions = await offsets.partitions(topic)
        if not partitions:
            continue
        starts = await offsets.offsets_for_times(topic, partitions, max(since, 0))
        ends = await offsets.ends(topic, partitions)
        ranges = {p: (s, ends[p]) for p, s in starts.items() if s is not None and s < ends[p]}
        n = 0
        async for rec in read_ranges(settings.bootstrap, topic, ranges):
            n += 1
            progress.update(f"reading {topic}", n, None)
            msg = _reply_or_none(rec.value)
            if msg is not None:
                final[(topic, msg.id)] = msg  # later offsets win: the final reply
    kept = []
    for c in candidates:
        verdict = error_code_verdict(c, final, codes)
        if verdict is None:
            kept.append(c)
        elif verdict == "done":
            summary.known_done += 1
        else:
            summary.not_selected[verdict] += 1
    return kept


def _reply_or_none(raw: bytes | None) -> Reply | None:
    if raw is None:
        return None
    try:
        msg = decode_reply_message(raw)
    except Exception:
        return None
    return msg if isinstance(msg, Reply) else None


async def _wait_for_earlier_replays(
    settings: Any, offsets: Any, options: Options, progress: Progress
) -> None:
    """Wait until the worker has committed replayed records still queued from an earlier run."""
    topic = settings.request_topic
    partitions = await offsets.partitions(topic)
    committed = await offsets.committed(settings.app_id, topic)
    begins = await offsets.beginnings(topic, partitions)
    ends = await offsets.ends(topic, partitions)
    ranges = {
        p: (max(committed.get(p, begins[p]), begins[p]), ends[p])
        for p in partitions
        if max(committed.get(p, begins[p]), begins[p]) < ends[p]
    }
    last: dict[int, int] = {}
    async for rec in read_ranges(settings.bootstrap, topic, ranges):
        if any(k == REPLAY_HEADER for k, _ in rec.headers or ()):
            last[rec.partition] = rec.offset
    deadline = time.monotonic() + options.wait_timeout_s
    while last:
        committed = await offsets.committed(settings.app_id, topic)
        last = {p: o for p, o in last.items() if committed.get(p, -1) <= o}
        progress.update("waiting for an earlier run's replays", None, None)
        if not last:
            break
        if time.monotonic() > deadline:
            print(
                f"turnout replay: replays of an earlier run are still queued on {topic} "
                f"(partitions {sorted(last)}); is a worker of group {settings.app_id} running?",
                file=sys.stderr,
            )
            break
        await asyncio.sleep(0.5)


async def _publish(
    settings: Any, options: Options, candidates: list[Candidate], progress: Progress
) -> list[Published]:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        **kafka_kwargs(),
    )
    await producer.start()
    published: list[Published] = []
    try:
        started = time.monotonic()
        pending: list[tuple[Candidate, Any]] = []
        for i, c in enumerate(candidates):
            if options.rate:
                delay = started + i / options.rate - time.monotonic()
                if delay > 0:
                    if pending:  # flush before sleeping: progress shows what is on the broker
                        published += await _settle_sends(pending)
                        pending = []
                    await asyncio.sleep(delay)
            fut = await producer.send(
                settings.request_topic,
                c.value,
                key=c.key,
                headers=replay_headers(c.headers, c.source, force=options.force),
            )
            pending.append((c, fut))
            if len(pending) >= 500:
                published += await _settle_sends(pending)
                pending = []
            progress.update("publishing", len(published) + len(pending), len(candidates))
        published += await _settle_sends(pending)
        progress.update("publishing", len(published), len(candidates))
    finally:
        await producer.stop()
    return published


async def _settle_sends(pending: Iterable[tuple[Candidate, Any]]) -> list[Published]:
    out = []
    for c, fut in pending:
        meta = await fut
        out.append(Published(c, meta.partition, meta.offset))
    return out


class _Watch:
    """Reads the reply and dead-letter topics from where they ended before publishing."""

    def __init__(self, settings: Any, candidates: list[Candidate]) -> None:
        self._settings = settings
        self._topics = sorted({c.reply_topic for c in candidates if c.reply_topic})
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def start(self) -> None:
        s = self._settings
        counts = await ensure_topics(s.bootstrap, self._topics, s.reply_partitions)
        counts.update(await ensure_topics(s.bootstrap, [s.dead_letter_topic], 1))
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap, **kafka_kwargs(), enable_auto_commit=False,
        )
        await self._consumer.start()
        self._tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_end(*self._tps)
        for tp in self._tps:
            await self._consumer.position(tp)

    async def follow(
        self, offsets: Any, tracker: Tracker, timeout_s: float, progress: Progress
    ) -> None:
        assert self._consumer is not None
        s = self._settings
        deadline = time.monotonic() + timeout_s
        while tracker.pending and time.monotonic() < deadline:
            committed = await offsets.committed(s.app_id, s.request_topic)
            ends = await self._consumer.end_offsets(self._tps)
            while await self._behind(ends):
                batches = await self._consumer.getmany(timeout_ms=200)
                for tp, records in batches.items():
                    for rec in records:
                        self._feed(tracker, tp.topic, rec.value)
            tracker.settle(committed)
            progress.update("waiting for outcomes", tracker.settled, tracker.total)
            if tracker.pending:
                await asyncio.sleep(0.5)

    async def _behind(self, ends: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for tp in self._tps:
            if await self._consumer.position(tp) < ends[tp]:
                return True
        return False

    def _feed(self, tracker: Tracker, topic: str, value: bytes | None) -> None:
        if value is None:
            return
        if topic == self._settings.dead_letter_topic:
            try:
                tracker.dead_letter(DeadLetter.from_wire(value))
            except Exception:
                return
        else:
            reply = _reply_or_none(value)
            if reply is not None:
                tracker.reply(topic, reply)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
