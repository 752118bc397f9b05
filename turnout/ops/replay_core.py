"""The pure parts of ``turnout replay``: windows, selection, headers, outcomes, summary.

Nothing here awaits or touches Kafka; ``turnout.ops.replay`` does the I/O and
calls these. See that module's docstring for what a replay does and promises.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import IO, Any

import orjson

from schemas.types import DeadLetter, Reply, Request, WireError

REPLAY_HEADER = "turnout-replay"
"""``<source topic>:<partition>:<offset>``; the worker marks such requests ``replay``."""
FORCE_HEADER = "turnout-replay-force"
"""``1``: serve the request even if it was answered ok before."""

Headers = tuple[tuple[str, bytes], ...]
_RELATIVE = re.compile(r"-?(\d+(?:\.\d+)?)([smhd])(?: ago)?")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


# -- the window ---------------------------------------------------------------------------


def parse_time(text: str, now_ms: int) -> int:
    """ISO 8601 (local time without a zone), or ``15m``, ``-2h``, ``1d ago``: before ``now_ms``."""
    text = text.strip()
    m = _RELATIVE.fullmatch(text)
    if m:
        return now_ms - int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 time (2025-01-31T14:05:00Z) or a time ago (15m, 2h, 1d), "
            f"got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # a time without a zone is the local time
    return int(dt.timestamp() * 1000)


def parse_position_list(text: str) -> list[tuple[int, int]]:
    """``P:O[,P:O...]`` (a bare ``O`` means partition 0) as (partition, offset) pairs."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        p, sep, o = part.rpartition(":")
        try:
            pair = (int(p) if sep else 0, int(o))
        except ValueError:
            raise ValueError(f"expected partition:offset like 0:42, got {part!r}") from None
        if pair[0] < 0 or pair[1] < 0:
            raise ValueError(f"partitions and offsets are >= 0, got {part!r}")
        out.append(pair)
    if not out:
        raise ValueError(f"expected partition:offset like 0:42, got {text!r}")
    return out


def parse_positions(text: str) -> dict[int, int]:
    """``P:O[,P:O...]`` with at most one offset per partition."""
    pairs = parse_position_list(text)
    positions = dict(pairs)
    if len(positions) != len(pairs):
        raise ValueError(f"a partition appears twice in {text!r}")
    return positions


def parse_rate(text: str) -> float:
    """``N`` or ``N/s``: records per second, > 0."""
    raw = text.strip().removesuffix("/s")
    try:
        rate = float(raw)
    except ValueError:
        raise ValueError(f"--rate: expected N or N/s, got {text!r}") from None
    if not rate > 0:
        raise ValueError(f"--rate: expected more than 0 per second, got {text!r}")
    return rate


@dataclasses.dataclass(frozen=True)
class Window:
    """Which records of the source topic: a time window or offset ranges, not both."""

    since_ms: int | None = None
    until_ms: int | None = None
    from_offsets: Mapping[int, int] = dataclasses.field(default_factory=dict)
    """Per partition, the first offset (inclusive); only named partitions are read."""
    to_offsets: Mapping[int, int] = dataclasses.field(default_factory=dict)
    """Per partition, the last offset (inclusive)."""

    @property
    def by_offset(self) -> bool:
        return bool(self.from_offsets or self.to_offsets)

    def validate(self) -> None:
        timed = self.since_ms is not None or self.until_ms is not None
        if timed and self.by_offset:
            raise ValueError("give --since/--until or --from-offset/--to-offset, not both")
        if self.since_ms is not None and self.until_ms is not None:
            if self.since_ms >= self.until_ms:
                raise ValueError("--since must be before --until")
        for p, first in self.from_offsets.items():
            if p in self.to_offsets and self.to_offsets[p] < first:
                raise ValueError(f"partition {p}: --to-offset is before --from-offset")


def plan_ranges(
    window: Window,
    beginnings: Mapping[int, int],
    ends: Mapping[int, int],
    since: Mapping[int, int | None],
    until: Mapping[int, int | None],
) -> dict[int, tuple[int, int]]:
    """``{partition: (start, stop)}`` to read, stop exclusive; empty ranges left out.

    ``ends`` are the topic's end offsets when the run starts: the window never
    reaches past them, so records this run publishes are not read again.
    ``since``/``until`` are ``offsets_for_times`` answers (None: no record that late).
    """
    ranges = {}
    for p, end in sorted(ends.items()):
        begin = beginnings.get(p, 0)
        start, stop = begin, end
        if window.by_offset:
            if p not in window.from_offsets and p not in window.to_offsets:
                continue
            start = max(window.from_offsets.get(p, begin), begin)
            if p in window.to_offsets:
                stop = min(window.to_offsets[p] + 1, end)
        else:
            if window.since_ms is not None:
                s = since.get(p)
                start = end if s is None else max(s, begin)
            if window.until_ms is not None:
                u = until.get(p)
                stop = end if u is None else min(u, end)
        if start < stop:
            ranges[p] = (start, stop)
    return ranges


# -- selecting records --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Filters:
    clients: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()
    """Request ``model`` values (route aliases or model names)."""
    error_codes: frozenset[str] = frozenset()
    dead_letter_codes: frozenset[str] = frozenset()
    positions: frozenset[tuple[int, int]] | None = None
    """Only these (partition, offset) of the source topic."""
    include_replays: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: Headers = ()

    @classmethod
    def of(cls, rec: Any) -> SourceRecord:
        """From an aiokafka ``ConsumerRecord``."""
        return cls(
            rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value or b"",
            tuple(rec.headers or ()),
        )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A record chosen for replay: what to publish and how to recognise its outcome."""

    source: str
    """``topic:partition:offset`` it came from."""
    key: bytes | None
    value: bytes
    headers: Headers
    request_id: str | None
    client_id: str | None
    model: str | None
    reply_topic: str | None
    timestamp_ms: int

    def describe(self) -> str:
        return (
            f"{self.source} id={self.request_id} client={self.client_id} model={self.model} "
            f"reply_to={self.reply_topic}"
        )


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _str(obj: Mapping[str, Any] | None, name: str) -> str | None:
    value = None if obj is None else obj.get(name)
    return value if isinstance(value, str) and value else None


def rewrite_model(obj: Mapping[str, Any], model: str) -> bytes:
    """The request with ``model`` replaced; every other field, the id included, as it was."""
    return orjson.dumps({**obj, "model": model})


def select(
    rec: SourceRecord,
    filters: Filters,
    *,
    dead_letters: bool,
    to_route: str | None,
    reply_prefix: str,
) -> Candidate | str:
    """The record to publish for ``rec``, or why it is not replayed."""
    if not filters.include_replays and any(k == REPLAY_HEADER for k, _ in rec.headers):
        return "an earlier replay (--include-replays to replay it)"
    if filters.positions is not None and (rec.partition, rec.offset) not in filters.positions:
        return "not among the chosen offsets"
    key, value, headers = rec.key, rec.value, rec.headers
    if dead_letters:
        try:
            dl = DeadLetter.from_wire(rec.value)
        except Exception:
            return "not a dead letter"
        if filters.dead_letter_codes and dl.code not in filters.dead_letter_codes:
            return "another dead-letter code"
        if dl.value is None:
            return (
                "its original was too large to copy into the dead letter; it is in "
                f"{dl.source.topic}:{dl.source.partition}:{dl.source.offset} (turnout dlq show)"
            )
        key, value, headers = dl.key, dl.value, ()
    else:
        try:
            Request.from_wire(value)
        except WireError:
            return "not a valid request (it was dead-lettered; see turnout dlq)"
    obj = _json_object(value)
    client_id, request_id, model = _str(obj, "client_id"), _str(obj, "id"), _str(obj, "model")
    if filters.clients and client_id not in filters.clients:
        return "another client"
    if filters.routes and model not in filters.routes:
        return "another route"
    if to_route is not None:
        if obj is None:
            return "not a JSON object, so --to-route cannot rewrite it"
        value, model = rewrite_model(obj, to_route), to_route
    reply_to = _str(obj, "reply_to")
    reply_topic = reply_to or (f"{reply_prefix}{client_id}" if client_id else None)
    return Candidate(
        source=f"{rec.topic}:{rec.partition}:{rec.offset}",
        key=key,
        value=value,
        headers=tuple((k, v) for k, v in headers if k not in (REPLAY_HEADER, FORCE_HEADER)),
        request_id=request_id,
        client_id=client_id,
        model=model,
        reply_topic=reply_topic,
        timestamp_ms=rec.timestamp_ms,
    )


def replay_headers(original: Headers, source: str, *, force: bool) -> list[tuple[str, bytes]]:
    """The original headers (but earlier replay marks) plus this replay's."""
    out = [(k, v) for k, v in original if k not in (REPLAY_HEADER, FORCE_HEADER)]
    out.append((REPLAY_HEADER, source.encode()))
    if force:
        out.append((FORCE_HEADER, b"1"))
    return out


def error_code_verdict(
    c: Candidate, final: Mapping[tuple[str, str], Reply], codes: frozenset[str]
) -> str | None:
    """None to keep ``c``; ``"done"`` when its final reply is ok; else why it is left out."""
    if c.request_id is None or c.reply_topic is None:
        return "no request id or reply topic to find its final reply by"
    reply = final.get((c.reply_topic, c.request_id))
    if reply is None:
        return "no final reply found"
    if reply.status == "ok":
        return "done"
    if reply.error is not None and reply.error.code in codes:
        return None
    return "another error code"


# -- outcomes ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    candidate: Candidate
    partition: int
    offset: int


@dataclasses.dataclass
class Summary:
    scanned: int = 0
    selected: int = 0
    published: int = 0
    answered_ok: int = 0
    failed: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped_done: int = 0
    """Published, and skipped by the worker: answered ok before."""
    known_done: int = 0
    """Not published: ``--error-code`` found its final reply ok already."""
    pending: int = 0
    not_selected: Counter[str] = dataclasses.field(default_factory=Counter)
    would_replay: list[str] = dataclasses.field(default_factory=list)
    waited: bool = True
    """False with ``--no-wait``: outcomes unknown."""

    @property
    def replayed(self) -> int:
        return self.answered_ok + sum(self.failed.values())

    @property
    def clean(self) -> bool:
        return not self.failed and not self.pending

    def as_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "selected": self.selected,
            "published": self.published,
            "replayed": self.replayed,
            "answered_ok": self.answered_ok,
            "failed": dict(self.failed),
            "skipped_as_done": self.skipped_done + self.known_done,
            "skipped_by_worker": self.skipped_done,
            "known_done": self.known_done,
            "pending": self.pending,
            "not_selected": dict(self.not_selected),
            "would_replay": self.would_replay,
            "waited": self.waited,
        }

    def text(self, *, dry_run: bool = False) -> str:
        lines = [f"scanned {self.scanned}, selected {self.selected}"]
        if dry_run:
            lines += [f"would replay {d}" for d in self.would_replay]
        elif not self.waited:
            lines.append(
                f"published {self.published}, skipped as done {self.known_done}; "
                "outcomes not awaited (--no-wait)"
            )
        else:
            failed = ", ".join(f"{k} {n}" for k, n in self.failed.most_common()) or "none"
            lines.append(
                f"replayed {self.replayed} (answered ok {self.answered_ok}), "
                f"skipped as done {self.skipped_done + self.known_done}, "
                f"failed {sum(self.failed.values())} ({failed}), pending {self.pending}"
            )
            if self.pending:
                lines.append("pending: no outcome within --wait-timeout; is a worker running?")
        for reason, n in self.not_selected.most_common():
            lines.append(f"not selected: {n} {reason}")
        return "\n".join(lines)


class Tracker:
    """What the worker did with each published record, from replies, dead letters, commits."""

    def __init__(self, published: Sequence[Published], request_topic: str) -> None:
        self._topic = request_topic
        self._by_pos = {(p.partition, p.offset): p.candidate for p in published}
        self._by_reply = {
            (p.candidate.reply_topic, p.candidate.request_id): (p.partition, p.offset)
            for p in published
            if p.candidate.reply_topic and p.candidate.request_id
        }
        self._replies: dict[tuple[int, int], Reply] = {}
        self._dead: dict[tuple[int, int], DeadLetter] = {}
        self._unsettled = set(self._by_pos)
        self.outcomes: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<Tracker settled={self.settled}/{self.total} {dict(self.outcomes)}>"

    @property
    def total(self) -> int:
        return len(self._by_pos)

    @property
    def pending(self) -> int:
        return len(self._unsettled)

    @property
    def settled(self) -> int:
        return self.total - self.pending

    def reply(self, topic: str, reply: Reply) -> None:
        pos = self._by_reply.get((topic, reply.id))
        if pos is not None:
            self._replies[pos] = reply

    def dead_letter(self, dl: DeadLetter) -> None:
        pos = (dl.source.partition, dl.source.offset)
        if dl.source.topic == self._topic and pos in self._by_pos:
            self._dead[pos] = dl

    def settle(self, committed: Mapping[int, int]) -> None:
        """Classify the records the group has committed past (their outcome is on the broker)."""
        for pos in sorted(self._unsettled):
            if committed.get(pos[0], -1) <= pos[1]:
                continue
            self._unsettled.discard(pos)
            reply, dead = self._replies.get(pos), self._dead.get(pos)
            if reply is not None:
                code = reply.error.code if reply.error else "error"
                self.outcomes["ok" if reply.status == "ok" else f"failed:{code}"] += 1
            elif dead is not None:
                self.outcomes[f"failed:dead_lettered:{dead.code}"] += 1
            elif self._by_pos[pos].request_id is None:
                self.outcomes["failed:no_outcome_seen"] += 1
            else:
                self.outcomes["skipped"] += 1

    def fill(self, summary: Summary) -> None:
        summary.answered_ok += self.outcomes["ok"]
        summary.skipped_done += self.outcomes["skipped"]
        for key, n in self.outcomes.items():
            if key.startswith("failed:"):
                summary.failed[key.removeprefix("failed:")] += n
        summary.pending += self.pending


# -- progress ------------------------------------------------------------------------------


class Progress:
    """A bar redrawn in place on a TTY; otherwise a plain line every ``interval_s``."""

    def __init__(
        self,
        stream: IO[str] = sys.stderr,
        *,
        tty: bool | None = None,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._interval_s = 0.1 if self._tty else interval_s
        self._clock = clock
        self._last = float("-inf")
        self._phase: str | None = None
        self._shown: tuple[str, int | None] | None = None

    def update(self, phase: str, done: int | None, total: int | None) -> None:
        now = self._clock()
        finished = done is not None and total is not None and done >= total
        soon = phase == self._phase and now - self._last < self._interval_s
        if (phase, done) == self._shown or (soon and not finished):
            return
        self._shown = (phase, done)
        if phase != self._phase and self._phase is not None and self._tty:
            self._stream.write("\n")
        self._phase, self._last = phase, now
        self._stream.write(self.line(phase, done, total))
        self._stream.flush()

    def line(self, phase: str, done: int | None, total: int | None) -> str:
        if done is None:
            text = f"{phase} ..."
        elif not total:
            text = f"{phase}: {done}"
        elif self._tty:
            filled = int(30 * min(done, total) / total)
            text = f"{phase} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
        else:
            text = f"{phase}: {done}/{total}"
        return f"\r\x1b[K{text}" if self._tty else f"{text}\n"

    def close(self) -> None:
        if self._tty and self._phase is not None:
            self._stream.write("\n")
            self._stream.flush()
