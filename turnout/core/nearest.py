"""Which region a client talks to: the nearest healthy one, and the next when it fails.

The rule, for ``turnout send``, the failover client and any Kafka producer in any
language (docs/multi-region.md, "The nearest router"):

1. Know every region's bootstrap (or router address) and its round-trip time, configured
   or measured (a Kafka metadata request timed end to end).
2. Rank the regions by round-trip time, unknown RTTs last, ties by the order given.
3. Skip a region that is *down*: a send to it failed or timed out (the failover bound),
   until its retry time; each consecutive failure doubles the wait (``backoff``),
   up to a cap. Skip also a region whose synced state says it cannot serve, when the
   caller has such state (``unfit``).
4. Send to the first region left. If every region is down, try the one whose retry
   time comes first rather than give up.
5. A region comes back as soon as one send (or probe) to it succeeds after its retry
   time: the ranking puts it first again because it is nearest.
6. A request the region acknowledged (acks=all) is never re-sent elsewhere: it is in
   that region's log and is answered there, after the region returns if it must.
   Only a send whose outcome is unknown (timeout, connection lost) is re-sent to the
   next region with the *same request id*; the client keeps the first final reply per
   id and reads every region's reply topic it has sent to.

Everything here is pure: no clock (callers pass ``now_ms``), no sockets.

    >>> eps = parse_endpoints("us=127.0.0.1:9092@80,eu=127.0.0.1:9192@5,ap=127.0.0.1:9292")
    >>> choose(eps, now_ms=0).region
    'eu'
    >>> h = mark_down({}, "eu", now_ms=0)
    >>> choose(eps, now_ms=100, down=h).region, choose(eps, now_ms=2_000, down=h).region
    ('us', 'eu')
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from turnout.core.region_state import check_region

BACKOFF_BASE_MS = 1_000
BACKOFF_MAX_MS = 30_000


@dataclass(frozen=True)
class Endpoint:
    """One region as a client sees it: where to reach it, and how far it is."""

    region: str
    address: str
    """Kafka bootstrap (host:port) for producers, or a router's base URL for HTTP clients."""
    rtt_ms: float | None = None
    """Round-trip time, configured or measured; None: unknown (ranked last)."""


@dataclass(frozen=True)
class Down:
    """A region a client has seen fail: when it may be tried again."""

    since_ms: int
    retry_at_ms: int
    failures: int


@dataclass(frozen=True)
class Choice:
    region: str
    address: str
    reason: str
    """Why: a sentence a person can read, e.g. 'eu: nearest (5 ms)'."""


def parse_endpoints(spec: str) -> tuple[Endpoint, ...]:
    """``region=host:port[@rtt_ms]`` entries, comma-separated, into endpoints.

    >>> [(e.region, e.address, e.rtt_ms) for e in parse_endpoints("us=h:1@12.5, eu=h:2")]
    [('us', 'h:1', 12.5), ('eu', 'h:2', None)]
    >>> parse_endpoints("us")
    Traceback (most recent call last):
    ...
    ValueError: region entry 'us' must be region=host:port[@rtt_ms], e.g. eu=127.0.0.1:9192@40
    """
    out: list[Endpoint] = []
    problems: list[str] = []
    for raw in (part.strip() for part in spec.split(",")):
        if not raw:
            continue
        region, eq, rest = raw.partition("=")
        address, at, rtt = rest.partition("@")
        if not eq or not address:
            problems.append(
                f"region entry {raw!r} must be region=host:port[@rtt_ms], e.g. eu=127.0.0.1:9192@40"
            )
            continue
        try:
            check_region(region.strip())
            rtt_ms = float(rtt) if at else None
            if rtt_ms is not None and rtt_ms < 0:
                raise ValueError(f"round-trip time must be >= 0 ms, got {rtt}")
        except ValueError as exc:
            problems.append(f"region entry {raw!r}: {exc}")
            continue
        out.append(Endpoint(region.strip(), address.strip(), rtt_ms))
    names = [e.region for e in out]
    if len(set(names)) != len(names):
        problems.append(f"a region is named twice in {spec!r}")
    if not out and not problems:
        problems.append("no region given: expected region=host:port[@rtt_ms],...")
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(out)


def with_rtts(endpoints: Iterable[Endpoint], measured: Mapping[str, float]) -> tuple[Endpoint, ...]:
    """The endpoints with measured RTTs replacing configured ones where a measure exists."""
    return tuple(Endpoint(e.region, e.address, measured.get(e.region, e.rtt_ms)) for e in endpoints)


def backoff_ms(
    failures: int, *, base_ms: int = BACKOFF_BASE_MS, max_ms: int = BACKOFF_MAX_MS
) -> int:
    """How long a region stays skipped after ``failures`` consecutive failures.

    >>> [backoff_ms(n) for n in (1, 2, 3, 6, 20)]
    [1000, 2000, 4000, 30000, 30000]
    """
    return min(max_ms, base_ms * (1 << min(max(failures, 1) - 1, 30)))


def mark_down(
    down: Mapping[str, Down],
    region: str,
    *,
    now_ms: int,
    base_ms: int = BACKOFF_BASE_MS,
    max_ms: int = BACKOFF_MAX_MS,
) -> dict[str, Down]:
    """``down`` with ``region`` failed once more at ``now_ms``."""
    held = down.get(region)
    failures = held.failures + 1 if held else 1
    since = held.since_ms if held else now_ms
    wait = backoff_ms(failures, base_ms=base_ms, max_ms=max_ms)
    return {**down, region: Down(since_ms=since, retry_at_ms=now_ms + wait, failures=failures)}


def mark_up(down: Mapping[str, Down], region: str) -> dict[str, Down]:
    """``down`` without ``region``: a send to it succeeded."""
    return {k: v for k, v in down.items() if k != region}


def rank(
    endpoints: Iterable[Endpoint],
    *,
    now_ms: int,
    down: Mapping[str, Down] | None = None,
    unfit: Collection[str] = (),
) -> list[Choice]:
    """Every endpoint in the order to try them: usable ones nearest first, then the rest.

    The rest (down until later, or unfit by synced state) follow, soonest retry first,
    so a caller that runs out of usable regions still has somewhere to go.
    """
    down = down or {}
    eps = list(endpoints)
    order = {e.region: i for i, e in enumerate(eps)}

    def distance(e: Endpoint) -> tuple[float, int]:
        return (e.rtt_ms if e.rtt_ms is not None else float("inf"), order[e.region])

    def blocked(e: Endpoint) -> bool:
        d = down.get(e.region)
        return (d is not None and now_ms < d.retry_at_ms) or e.region in unfit

    usable = sorted((e for e in eps if not blocked(e)), key=distance)
    rest = sorted(
        (e for e in eps if blocked(e)),
        key=lambda e: (
            e.region in unfit,
            down[e.region].retry_at_ms if e.region in down else 0,
            *distance(e),
        ),
    )
    out: list[Choice] = []
    for e in usable:
        rtt = "unknown RTT" if e.rtt_ms is None else f"{e.rtt_ms:g} ms"
        if not out:
            skipped = [x.region for x in rest]
            why = f"nearest usable ({rtt})" + (f"; skipped {', '.join(skipped)}" if skipped else "")
        else:
            why = f"next nearest ({rtt})"
        d = down.get(e.region)
        if d is not None:
            why += f"; retrying after {d.failures} failure(s)"
        out.append(Choice(e.region, e.address, f"{e.region}: {why}"))
    for e in rest:
        if e.region in unfit:
            why = "synced state says it cannot serve"
        else:
            d = down[e.region]
            why = f"down since {d.since_ms}, {d.failures} failure(s), retry at {d.retry_at_ms}"
        out.append(Choice(e.region, e.address, f"{e.region}: last resort ({why})"))
    return out


def choose(
    endpoints: Iterable[Endpoint],
    *,
    now_ms: int,
    down: Mapping[str, Down] | None = None,
    unfit: Collection[str] = (),
) -> Choice:
    """The region to send to now (``rank``'s first). ValueError when there is none."""
    ranked = rank(endpoints, now_ms=now_ms, down=down, unfit=unfit)
    if not ranked:
        raise ValueError("no region endpoints configured: expected region=host:port[@rtt_ms],...")
    return ranked[0]


def unfit_regions(views: Mapping[str, object]) -> set[str]:
    """Regions whose synced state (``region_state.view`` output) rules them out.

    Unknown (stale) state does not rule a region out for a *client*: a client can only
    learn its region is gone by trying it; stale state just means no one vouches for
    it. A fresh summary with no serving capacity does rule it out.
    """
    out: set[str] = set()
    for name, v in views.items():
        state = getattr(v, "state", None)
        if state is not None and state.capacity == 0:
            out.add(name)
    return out


def next_router(peers: Iterable[Endpoint], *, own: str = "") -> Endpoint | None:
    """The peer region a gateway sends clients to when it cannot reach its own Kafka.

    Nearest by RTT, never the gateway's own region. The gateway knows no one's health
    then (its synced state comes through the Kafka it lost), so the client must still
    be ready for that region to fail too and go on down its own list.

    >>> next_router(parse_endpoints("ap=http://a@150,eu=http://e@80,us=http://u@1"), own="us")
    Endpoint(region='eu', address='http://e', rtt_ms=80.0)
    """
    ranked = rank([p for p in peers if p.region != own], now_ms=0)
    if not ranked:
        return None
    first = ranked[0]
    return next(p for p in peers if p.region == first.region)


def failover_headers(peer: Endpoint | None) -> dict[str, str]:
    """Response headers that name the next region's router (empty when there is none).

    >>> failover_headers(Endpoint("eu", "http://127.0.0.1:8081", 80.0))
    {'X-Turnout-Next-Region': 'eu', 'X-Turnout-Next-Router': 'http://127.0.0.1:8081'}
    """
    if peer is None:
        return {}
    return {"X-Turnout-Next-Region": peer.region, "X-Turnout-Next-Router": peer.address}


def region_failover(settings: object) -> Endpoint | None:
    """``next_router`` for a gateway's settings (``region_peers``, ``region``), or None."""
    spec = str(getattr(settings, "region_peers", "") or "")
    if not spec:
        return None
    return next_router(parse_endpoints(spec), own=str(getattr(settings, "region", "")))
