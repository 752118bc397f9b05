"""What the worker did with replayed records, from replies, dead letters and commits."""

import io

from schemas.types import DeadLetter, ErrorInfo, Reply, Source
from turnout.ops.replay_core import Candidate, Progress, Published, Summary, Tracker

T = "t.requests"


def pub(req_id: str | None, partition=0, offset=0) -> Published:
    c = Candidate(
        source=f"{T}:0:{offset}",
        key=b"c",
        value=b"{}",
        headers=(),
        request_id=req_id,
        client_id="c",
        model="m",
        reply_topic="turnout.replies.c",
        timestamp_ms=0,
    )
    return Published(c, partition, offset)


def test_nothing_is_settled_before_the_group_commits_past_it():
    """A reply alone does not settle a record: its commit says the worker is done with it."""
    t = Tracker([pub("a", offset=10)], T)
    t.reply("turnout.replies.c", Reply(id="a", status="ok"))
    t.settle({0: 10})
    assert t.pending == 1


def test_committed_records_are_answered_failed_or_skipped():
    """A new reply means served (ok or by code); a dead letter failed; neither, skipped as done."""
    t = Tracker(
        [pub("a", offset=1), pub("b", offset=2), pub("c", offset=3), pub(None, offset=4)], T
    )
    t.reply("turnout.replies.c", Reply(id="a", status="ok"))
    err = ErrorInfo(code="backend_unavailable", message="m", retryable=True)
    t.reply("turnout.replies.c", Reply(id="b", status="error", error=err))
    t.dead_letter(
        DeadLetter(
            code="invalid_request",
            reason="r",
            source=Source(topic=T, partition=0, offset=4),
            key=None,
            value=b"x",
            dead_lettered_at_ms=1,
        )
    )
    t.settle({0: 5})
    s = Summary()
    t.fill(s)
    assert (s.answered_ok, s.skipped_done, s.pending) == (1, 1, 0)
    assert s.failed == {"backend_unavailable": 1, "dead_lettered:invalid_request": 1}
    assert s.replayed == 3 and not s.clean


def test_replies_on_other_topics_or_ids_are_ignored():
    """Only the replayed ids on their own reply topic count."""
    t = Tracker([pub("a")], T)
    t.reply("turnout.replies.other", Reply(id="a", status="ok"))
    t.reply("turnout.replies.c", Reply(id="zz", status="ok"))
    t.settle({0: 1})
    assert t.outcomes == {"skipped": 1}


def test_unsettled_records_are_pending():
    t = Tracker([pub("a", partition=1, offset=3)], T)
    t.settle({0: 100})
    s = Summary()
    t.fill(s)
    assert s.pending == 1 and not s.clean
    assert repr(t) == "<Tracker settled=0/1 {}>"


def test_the_summary_counts_known_done_as_skipped():
    """Skipped as done = skipped by the worker + known done from final replies."""
    s = Summary(skipped_done=2, known_done=3, answered_ok=1)
    d = s.as_dict()
    assert d["skipped_as_done"] == 5 and d["replayed"] == 1
    assert "skipped as done 5" in s.text()


def test_progress_without_a_tty_prints_plain_lines_at_intervals():
    """Off a TTY: one line per interval and at the end of a phase, no escape codes."""
    out = io.StringIO()
    clock = iter([0.0, 0.5, 3.0, 3.1, 3.2]).__next__
    p = Progress(out, tty=False, interval_s=2.0, clock=clock)
    for done in (1, 2, 3, 4, 5):
        p.update("publishing", done, 5)
    assert out.getvalue() == "publishing: 1/5\npublishing: 3/5\npublishing: 5/5\n"


def test_progress_on_a_tty_redraws_a_bar():
    out = io.StringIO()
    p = Progress(out, tty=True, clock=lambda: 0.0)
    p.update("publishing", 5, 10)
    p.close()
    assert out.getvalue() == "\r\x1b[Kpublishing [" + "#" * 15 + "." * 15 + "] 5/10\n"
