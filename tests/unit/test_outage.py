"""Broker outages: a state change per line and a periodic summary, not a line per retry."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from turnout.worker.outage import BrokerOutage, OutageEvent, OutageFilter, install, uninstall


def names(events: list[OutageEvent]) -> list[str]:
    return [e.event for e in events]


def test_the_first_connection_error_says_the_broker_is_unreachable() -> None:
    """One error: one broker_unreachable; more errors: nothing more at once."""
    o = BrokerOutage(quiet_s=3, summary_every_s=10)
    assert names(o.error(0.0, "Unable connect to node with id 1")) == ["broker_unreachable"]
    assert o.error(0.1, "Unable to update metadata") == []
    assert o.down


def test_a_long_outage_gets_a_summary_every_period_with_the_lines_it_replaced() -> None:
    """Errors every 100 ms for 25 s: two summaries, each counting what it stands for."""
    o = BrokerOutage(quiet_s=3, summary_every_s=10)
    out: list[OutageEvent] = []
    for i in range(250):
        now = i / 10
        out += o.error(now, "x")
        if i % 10 == 0:
            out += o.tick(now)
    assert names(out) == [
        "broker_unreachable",
        "broker_still_unreachable",
        "broker_still_unreachable",
    ]
    assert out[1].down_s == 10.0 and out[1].suppressed == 100  # errors at 0.1 .. 10.0 s


def test_silence_for_quiet_s_means_the_broker_is_back() -> None:
    """No connection error for quiet_s: broker_reachable, with how long it was down."""
    o = BrokerOutage(quiet_s=3, summary_every_s=10)
    o.error(5.0, "x")
    o.error(7.0, "x")
    assert o.tick(9.9) == []
    (back,) = o.tick(10.0)
    assert (back.event, back.down_s, back.suppressed) == ("broker_reachable", 2.0, 1)
    assert not o.down and o.tick(20.0) == []


@given(st.lists(st.floats(0, 1000), min_size=1, max_size=200))
def test_states_alternate_and_lines_stay_few(times: list[float]) -> None:
    """Whatever the errors, unreachable and reachable alternate, and lines stay bounded."""
    o = BrokerOutage(quiet_s=3, summary_every_s=10)
    out: list[str] = []
    for t in sorted(times):
        out += names(o.tick(t))
        out += names(o.error(t, "x"))
    out += names(o.tick(max(times) + 3.5))
    changes = [e for e in out if e != "broker_still_unreachable"]
    assert changes == ["broker_unreachable", "broker_reachable"] * (len(changes) // 2)
    assert len(changes) % 2 == 0
    assert len(out) <= 2 * len(times)


def record(name: str, message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_the_filter_drops_aiokafka_connection_errors_and_keeps_the_rest() -> None:
    """Only aiokafka's connection errors are replaced; other records pass untouched."""
    seen: list[OutageEvent] = []
    f = OutageFilter(BrokerOutage(), seen.append)
    assert not f.filter(record("aiokafka.conn", "Unable connect to node with id 1: refused"))
    assert not f.filter(record("aiokafka", "Unable to update metadata from [1]"))
    assert f.filter(record("aiokafka.consumer", "Offset out of range"))
    assert f.filter(record("faust.worker", "Unable connect to node with id 1"))
    assert f.filter(record("aiokafka.conn", "Unable connect to node", logging.DEBUG))
    assert names(seen) == ["broker_unreachable"]
    assert "Unable connect" in seen[0].first_error


def test_install_filters_what_reaches_the_handler() -> None:
    """Installed on a handler, the filter keeps 1,000 retry lines out of the log."""

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, r: logging.LogRecord) -> None:
            self.records.append(r)

    handler = Collect()
    seen: list[OutageEvent] = []
    f = install(seen.append, handlers=[handler])
    try:
        for _ in range(1000):
            handler.handle(record("aiokafka.client", "Unable connect to node with id 1"))
        handler.handle(record("turnout.request", "request_completed", logging.INFO))
    finally:
        handler.removeFilter(f)
        uninstall(f)
    assert [r.getMessage() for r in handler.records] == ["request_completed"]
    assert names(seen) == ["broker_unreachable"]
    assert f.outage.suppressed == 999


def test_a_rebalance_is_not_an_outage() -> None:
    """'Heartbeat failed ... because it is rebalancing' passes through as it is."""
    seen: list[OutageEvent] = []
    f = OutageFilter(BrokerOutage(), seen.append)
    rebalancing = "Heartbeat failed for group g because it is rebalancing"
    assert f.filter(record("aiokafka.consumer.group_coordinator", rebalancing, logging.WARNING))
    gone = "Heartbeat failed for group g: coordinator (node 1) is either not started or not valid"
    assert not f.filter(record("aiokafka.consumer.group_coordinator", gone, logging.WARNING))
    assert names(seen) == ["broker_unreachable"]
