"""Property: the committed offset never passes a request whose final reply is not published.

A model of one partition of the request topic, served by one worker at a time through
the real ``Trackers`` and ``OffsetTracker``, driven by hypothesis through random
interleavings of what Kafka and faust do to it: deliver the next record, hold one in
the agent (waiting for an in-flight slot) and hand it over later, skip one (faust
cancels a hand-over during recovery), finish a request (its reply is published),
commit, rebalance with the partition kept (sticky), rebalance with it moving away and
back (its requests cancelled), and crash. After each step every offset below the
committed one has a published reply.
"""

import doctest

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from turnout.core import offsets
from turnout.core.offsets import Trackers

TP = "requests-0"


def test_doctests():
    """The module's examples are its specification."""
    assert doctest.testmod(offsets).failed == 0


class Partition(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log_end = 0  # records produced so far
        self.committed = 0  # the group's committed offset on the broker
        self.replied: set[int] = set()  # offsets whose final reply is on the broker
        self.worker = Trackers()
        self.position = 0  # the next offset the worker's consumer fetches
        self.in_flight: list[tuple[object, int]] = []  # (tracker it began in, offset)
        self.held: int | None = None  # a record the agent holds, waiting for a slot
        self._assign()

    def _assign(self) -> None:
        """faust assigns the partition: seek to committed, then anchor there."""
        self.worker.assigned({TP})
        self.position = self.committed
        self.worker.anchor({TP: self.committed})

    def _submit(self, offset: int) -> None:
        """What ``Dispatcher.submit`` does with a record."""
        tracker = self.worker.get(TP)
        if tracker is None:
            return  # not this worker's partition: dropped unserved
        if tracker.begin(offset):
            self.in_flight.append((tracker, offset))

    @rule(n=st.integers(1, 5))
    def produce(self, n):
        self.log_end += n

    @precondition(lambda self: self.position < self.log_end)
    @rule()
    def deliver(self):
        offset, self.position = self.position, self.position + 1
        self._submit(offset)

    @precondition(lambda self: self.position < self.log_end and self.held is None)
    @rule()
    def hold(self):
        """The agent took a record and waits for a slot (it may wait across a rebalance)."""
        self.held, self.position = self.position, self.position + 1

    @precondition(lambda self: self.held is not None)
    @rule()
    def hand_over_held(self):
        offset, self.held = self.held, None
        self._submit(offset)

    @precondition(lambda self: self.position < self.log_end)
    @rule()
    def skip(self):
        """faust dropped a record on its way to the stream: never delivered."""
        self.position += 1

    @precondition(lambda self: self.in_flight)
    @rule(i=st.integers(0, 1000))
    def finish(self, i):
        tracker, offset = self.in_flight.pop(i % len(self.in_flight))
        self.replied.add(offset)  # the reply is on the broker before the offset finishes
        tracker.finish(offset)

    @rule()
    def commit(self):
        committable = self.worker.committable(TP)
        if committable is not None and committable > self.committed:
            self.committed = committable

    @rule()
    def rebalance_kept(self):
        """Every partition is revoked, then this one comes back (sticky): requests go on."""
        self._assign()

    @rule()
    def rebalance_moved_and_back(self):
        """The partition moves away (its requests are cancelled) and later comes back."""
        for tp in self.worker.assigned(set()):
            assert tp == TP
        self.in_flight.clear()  # cancelled: no reply, nothing finished
        self._assign()

    @rule()
    def other_owner_serves_some(self):
        """Another worker owned it meanwhile, served the first records and committed."""
        self.worker.assigned(set())
        self.in_flight.clear()
        while self.committed < min(self.log_end, self.committed + 3):
            self.replied.add(self.committed)
            self.committed += 1
        self._assign()

    @rule()
    def crash(self):
        self.worker = Trackers()
        self.in_flight.clear()
        self.held = None
        self._assign()

    @invariant()
    def nothing_committed_unanswered(self):
        unanswered = [o for o in range(self.committed) if o not in self.replied]
        assert not unanswered, f"committed {self.committed} past unanswered {unanswered}"


Partition.TestCase.settings = settings(max_examples=400, stateful_step_count=60, deadline=None)
TestPartition = Partition.TestCase


def test_a_record_held_across_a_rebalance_cannot_move_the_commit_past_unread_ones():
    """The loss seen in the drill: slots full, record N held, rebalance, N finishes first."""
    ts = Trackers()
    ts.anchor({TP: 100})  # committed 100; 100..104 were in flight and got cancelled
    ts.assigned(set())
    ts.assigned({TP})
    ts.anchor({TP: 100})
    late = ts.get(TP)
    assert late.begin(105)  # the held record is handed over first
    late.finish(105)
    assert ts.committable(TP) == 100  # 100..104 are missing, not done
