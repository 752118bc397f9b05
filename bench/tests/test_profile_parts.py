import doctest

from bench import profile_parts


def test_the_doctests():
    assert doctest.testmod(profile_parts).failed == 0


def test_shares_count_samples_by_part():
    raw = (
        "main;Dispatcher._serve (turnout/worker/dispatch.py:1) 3\n"
        "main;x;ClientSession._request (aiohttp/client.py:9) 1\n"
        "WorkerThread.run (mode/threads.py:1);select (selectors.py:2);"
        "EpollSelector.select (selectors.py:3) 4\n"
    )
    assert profile_parts.shares(raw) == {
        "faust-thread:select": 50.0, "turnout": 37.5, "http-client": 12.5}  # fmt: skip
