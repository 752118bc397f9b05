"""``turnout dlq``: look at the dead-letter topic and replay records after a fix.

- ``stats``: counts by reason code, with the first and last time seen.
- ``show [--code C] [--limit N]``: the latest N dead letters (all with ``--limit 0``):
  the reason, where the record came from, and the original value, decoded when it
  is JSON, else as a base64 preview. A dead letter whose original was too large to
  copy references it: ``show`` fetches it from the source topic and checks its
  SHA-256, or says that retention has removed it (the letter's prefix remains).
- ``replay [--code C] [--offsets P:O,...]``: publish the original bytes with the
  original key to the request topic again (``turnout replay`` does the work,
  with the same headers, waiting and summary).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import sys
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.types import DeadLetter, Original
from turnout.ops import replay as replay_mod
from turnout.ops.replay_core import Filters, Window, parse_position_list

PREVIEW_CHARS = 400


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_command", required=True)
    stats = sub.add_parser("stats", help="dead letters by reason code")
    stats.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="the latest dead letters, decoded")
    show.add_argument("--code", action="append", default=[], help="only this code; repeatable")
    show.add_argument("--limit", type=int, default=20, help="how many, latest first (0: all)")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    rp = sub.add_parser("replay", help="publish chosen originals to the request topic again")
    rp.add_argument("--code", action="append", default=[], help="only this code; repeatable")
    rp.add_argument("--offsets", help="only these dead letters: P:O[,P:O...] (or O: partition 0)")
    replay_mod.add_common_arguments(rp)


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    partition: int
    offset: int
    letter: DeadLetter


def decode_entries(records: Iterable[Any]) -> tuple[list[Entry], int]:
    """Dead letters from consumer records, and how many records were not dead letters."""
    entries, bad = [], 0
    for rec in records:
        try:
            entries.append(Entry(rec.partition, rec.offset, DeadLetter.from_wire(rec.value)))
        except Exception:
            bad += 1
    return entries, bad


def stats(entries: Iterable[Entry]) -> dict[str, dict[str, Any]]:
    """Per code: count, first and last ``dead_lettered_at_ms``. Pure."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        s = out.setdefault(e.letter.code, {"count": 0, "first_ms": None, "last_ms": None})
        at = e.letter.dead_lettered_at_ms
        s["count"] += 1
        s["first_ms"] = at if s["first_ms"] is None else min(s["first_ms"], at)
        s["last_ms"] = at if s["last_ms"] is None else max(s["last_ms"], at)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["count"]))


def original_preview(value: bytes) -> tuple[str, Any]:
    """``("json", object)`` when the original is JSON, else ``("base64", preview)``."""
    try:
        return "json", orjson.loads(value)
    except orjson.JSONDecodeError:
        encoded = base64.b64encode(value[: PREVIEW_CHARS * 3 // 4]).decode()
        return "base64", encoded + ("..." if len(value) > PREVIEW_CHARS * 3 // 4 else "")


Fetched = dict[tuple[str, int, int], bytes | None]
"""Originals fetched from their source topics; None: no longer there."""


def check_original(original: Original, value: bytes | None) -> str | None:
    """Why a fetched original cannot be shown (None: it is the one dead-lettered). Pure."""
    if value is None:
        return "no longer in the source topic (its retention removed it)"
    if hashlib.sha256(value).hexdigest() != original.value_sha256:
        return "the record now at that offset is not the one dead-lettered (SHA-256 differs)"
    return None


def as_json(e: Entry, fetched: Fetched | None = None) -> dict[str, Any]:
    dl = e.letter
    extra: dict[str, Any] = {}
    value = dl.value
    if dl.original is not None:
        src = (dl.source.topic, dl.source.partition, dl.source.offset)
        got = (fetched or {}).get(src)
        problem = check_original(dl.original, got)
        extra = {
            "original_stored": "reference",
            "original_sha256": dl.original.value_sha256,
            "original_fetched": problem is None,
        }
        if problem is None:
            value = got
        else:
            extra["original_missing"] = problem
            value = dl.original.value_prefix
            extra["original_prefix_only"] = True
    assert value is not None
    kind, original = original_preview(value)
    return {
        "position": f"{e.partition}:{e.offset}",
        "code": dl.code,
        "reason": dl.reason,
        "source": f"{dl.source.topic}:{dl.source.partition}:{dl.source.offset}",
        "key": None if dl.key is None else dl.key.decode("utf-8", "replace"),
        "request_id": dl.request_id,
        "client_id": dl.client_id,
        "dead_lettered_at_ms": dl.dead_lettered_at_ms,
        "original_" + kind: original,
        "original_bytes": len(value) if dl.original is None else dl.original.value_bytes,
        **extra,
    }


def render(e: Entry, fetched: Fetched | None = None) -> str:
    doc = as_json(e, fetched)
    when = _iso(e.letter.dead_lettered_at_ms)
    lines = [
        f"{doc['position']}  {when}  {doc['code']}  {doc['reason']}",
        f"    source {doc['source']}  key {doc['key']!r}  id {doc['request_id']}  "
        f"client {doc['client_id']}",
    ]
    if doc.get("original_stored") == "reference":
        if doc["original_fetched"]:
            lines.append(
                f"    original referenced, fetched from {doc['source']} (SHA-256 matches)"
            )
        else:
            lines.append(
                f"    original referenced ({doc['original_bytes']} bytes, SHA-256 "
                f"{doc['original_sha256']}): {doc['original_missing']}; its first bytes follow"
            )
    if "original_json" in doc:
        text = orjson.dumps(doc["original_json"]).decode()
        more = "..." if len(text) > PREVIEW_CHARS else ""
        lines.append(
            f"    original (JSON, {doc['original_bytes']} bytes): {text[:PREVIEW_CHARS]}{more}"
        )
    else:
        lines.append(
            f"    original (not JSON, {doc['original_bytes']} bytes, base64): "
            f"{doc['original_base64']}"
        )
    return "\n".join(lines)


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


async def _read_all(settings: Any) -> tuple[list[Entry], int]:
    from turnout.ops.status import Offsets

    topic = settings.dead_letter_topic
    async with Offsets(settings.bootstrap) as offsets:
        partitions = await offsets.partitions(topic)
        begins = await offsets.beginnings(topic, partitions)
        ends = await offsets.ends(topic, partitions)
    ranges = {p: (begins[p], ends[p]) for p in partitions if begins[p] < ends[p]}
    records = [rec async for rec in replay_mod.read_ranges(settings.bootstrap, topic, ranges)]
    return decode_entries(records)


async def run(settings: Any, args: argparse.Namespace) -> int:
    if args.dlq_command == "replay":
        return await _replay(settings, args)
    entries, bad = await _read_all(settings)
    if args.dlq_command == "stats":
        by_code = stats(entries)
        if args.json:
            doc = {"topic": settings.dead_letter_topic, "codes": by_code, "undecodable": bad}
            sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
            return 0
        print(f"{settings.dead_letter_topic}: {len(entries)} dead letters")
        for code, s in by_code.items():
            print(f"{s['count']:>8}  {code:24} {_iso(s['first_ms'])} .. {_iso(s['last_ms'])}")
        if bad:
            print(f"{bad:>8}  (records that are not dead letters)")
        return 0
    codes = set(args.code)
    chosen = [e for e in entries if not codes or e.letter.code in codes]
    shown = list(deque(chosen, maxlen=args.limit)) if args.limit > 0 else chosen
    fetched = await fetch_originals(settings.bootstrap, [e.letter for e in shown])
    for e in shown:
        if args.json:
            sys.stdout.buffer.write(orjson.dumps(as_json(e, fetched)) + b"\n")
        else:
            print(render(e, fetched))
    if not args.json:
        print(f"# {len(shown)} of {len(chosen)} matching dead letters ({len(entries)} in all)")
    return 0


async def fetch_originals(
    bootstrap: str, letters: Iterable[DeadLetter], *, timeout_s: float = 10.0
) -> Fetched:
    """Read the originals of referenced dead letters from their source topics."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    wanted = {
        (dl.source.topic, dl.source.partition, dl.source.offset)
        for dl in letters
        if dl.original is not None
    }
    out: Fetched = {}
    if not wanted:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=64 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        for topic, partition, offset in sorted(wanted):
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            first = (await consumer.beginning_offsets([tp])).get(tp, 0)
            end = (await consumer.end_offsets([tp])).get(tp, 0)
            out[(topic, partition, offset)] = None
            if not first <= offset < end:
                continue
            consumer.seek(tp, offset)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while loop.time() < deadline and await consumer.position(tp) <= offset:
                for rec in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    if rec.offset == offset:
                        out[(topic, partition, offset)] = rec.value or b""
    finally:
        await consumer.stop()
    return out


async def _replay(settings: Any, args: argparse.Namespace) -> int:
    try:
        positions = parse_position_list(args.offsets) if args.offsets else None
        common = replay_mod.common_options(args)
    except ValueError as exc:
        print(f"turnout dlq replay: {exc}", file=sys.stderr)
        return 2
    window = Window()
    if positions:
        firsts: dict[int, int] = {}
        lasts: dict[int, int] = {}
        for p, o in positions:
            firsts[p] = min(firsts.get(p, o), o)
            lasts[p] = max(lasts.get(p, o), o)
        window = Window(from_offsets=dict(firsts), to_offsets=lasts)
    options = replay_mod.Options(
        source_topic=settings.dead_letter_topic,
        window=window,
        filters=Filters(
            dead_letter_codes=frozenset(args.code),
            positions=None if positions is None else frozenset(positions),
        ),
        dead_letters=True,
        **common,
    )
    return await replay_mod.run_options(settings, options, as_json=args.json)
