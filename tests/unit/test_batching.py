"""FetchBatching: batch fetches under load only, without flapping at the threshold."""

from __future__ import annotations

from turnout.core.batching import BATCHED, UNBATCHED, FetchBatching


def feed(b: FetchBatching, rate: float, seconds: float, t0: float, step: float = 0.01) -> list:
    """Feed ``rate`` records/s in ``step`` slices from ``t0``; every change it returned."""
    changes, t = [], t0
    while t < t0 + seconds - 1e-9:
        t += step
        new = b.update(round(rate * step), t)
        if new is not None:
            changes.append(new)
    return changes


def test_light_load_never_batches() -> None:
    b = FetchBatching(above_rps=200)
    assert feed(b, 100, 5, 0.0) == []
    assert b.min_bytes == UNBATCHED


def test_load_above_the_threshold_turns_batching_on_once() -> None:
    b = FetchBatching(above_rps=200)
    assert feed(b, 500, 5, 0.0) == [BATCHED]
    assert b.batching and b.min_bytes == BATCHED


def test_it_turns_off_only_below_half_the_threshold() -> None:
    b = FetchBatching(above_rps=200)
    feed(b, 500, 2, 0.0)
    assert feed(b, 150, 3, 2.0) == []  # between half and the threshold: stays on
    assert feed(b, 50, 2, 5.0) == [UNBATCHED]
    assert not b.batching


def test_rate_hovering_at_the_threshold_does_not_flap() -> None:
    b = FetchBatching(above_rps=200)
    changes = []
    for i in range(20):
        changes += feed(b, 210 if i % 2 else 190, 0.5, i * 0.5)
    assert changes == [BATCHED]


def test_an_idle_gap_counts_as_no_load() -> None:
    b = FetchBatching(above_rps=200)
    feed(b, 1000, 1, 0.0)
    # getmany returns empty after its timeout: one call, ten seconds on, no records
    assert b.update(0, 11.0) == UNBATCHED


def test_a_short_window_decides_nothing() -> None:
    b = FetchBatching(above_rps=200, window_s=0.5)
    assert b.update(0, 0.0) is None
    assert b.update(10_000, 0.1) is None  # 0.1 s in: too early to judge
    assert b.update(0, 0.5) == BATCHED


def test_zero_turns_it_off() -> None:
    b = FetchBatching(above_rps=0)
    assert feed(b, 5000, 2, 0.0) == []
    assert b.min_bytes == UNBATCHED
