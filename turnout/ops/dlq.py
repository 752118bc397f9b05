"""``turnout dlq``: look at the dead-letter topic and replay records after a fix.

- ``stats``: counts by reason code, with the first and last time seen.
- ``show [--code C] [--limit N]``: the latest N dead letters (all with ``--limit 0``):
  the reason, where the record came from, and the original value, decoded when it
  is JSON, else as a base64 preview.
- ``replay [--code C] [--offsets P:O,...]``: publish the original bytes with the
  original key to the request topic again (``turnout replay`` does the work,
  with the same headers, waiting and summary).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import sys
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.types import DeadLetter
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


def as_json(e: Entry) -> dict[str, Any]:
    kind, original = original_preview(e.letter.value)
    dl = e.letter
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
        "original_bytes": len(dl.value),
    }


def render(e: Entry) -> str:
    doc = as_json(e)
    when = _iso(e.letter.dead_lettered_at_ms)
    lines = [
        f"{doc['position']}  {when}  {doc['code']}  {doc['reason']}",
        f"    source {doc['source']}  key {doc['key']!r}  id {doc['request_id']}  "
        f"client {doc['client_id']}",
    ]
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
    for e in shown:
        if args.json:
            sys.stdout.buffer.write(orjson.dumps(as_json(e)) + b"\n")
        else:
            print(render(e))
    if not args.json:
        print(f"# {len(shown)} of {len(chosen)} matching dead letters ({len(entries)} in all)")
    return 0


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
