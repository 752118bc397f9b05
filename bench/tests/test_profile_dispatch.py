"""bench.profile_dispatch runs: every request of a short run is answered, with and without
a backend cap that makes requests wait (it had broken silently when a module moved)."""

import asyncio

import pytest

from bench import profile_dispatch


@pytest.mark.parametrize("cap", [16384, 4])
async def test_a_short_run_answers_every_request(cap):
    us = await asyncio.wait_for(profile_dispatch.one_run(300, f"t{cap}", None, cap, 1.0), 60)
    assert us > 0
