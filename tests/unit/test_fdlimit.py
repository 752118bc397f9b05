"""The worker's open-file limit follows TURNOUT_MAX_IN_FLIGHT (turnout.worker.fdlimit)."""

import resource

import pytest

from turnout.worker import fdlimit


@pytest.mark.parametrize(
    ("soft", "hard", "slots", "want"),
    [
        (1024, 524288, 16384, 16384 + fdlimit.HEADROOM),
        (1024, 4096, 16384, 4096),
        (65536, 524288, 16384, None),
        (1024, resource.RLIM_INFINITY, 4096, 4096 + fdlimit.HEADROOM),
        (5120, 5120, 4096, None),
    ],
)
def test_wanted_soft_limit(soft, hard, slots, want):
    """The soft limit rises to max_in_flight plus headroom, never past the hard limit."""
    assert fdlimit.wanted(soft, hard, slots) == want


def test_raise_for_never_lowers_the_limit():
    """Asking for fewer calls than the limit allows leaves the limit as it was."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fdlimit.raise_for(1) == before
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before
