"""``turnout send`` prints the final reply a request gets within its deadline, errors
included, and blames a missing worker only when the worker group has no member."""

import asyncio
import os
import time

import orjson
import pytest

from tests.integration.harness import BOOTSTRAP, Worker, config_for, free_port, run_turnout, unique
from turnout.client import group_members


async def wait_for_members(group: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await group_members(BOOTSTRAP, group):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no member joined group {group} within {timeout_s} s")


@pytest.fixture
def down_worker(tmp_path):
    """A worker whose route's only backend is a closed port."""
    dead = f"http://127.0.0.1:{free_port()}"
    w = Worker(
        tmp_path,
        config_for(("dead", "openai", dead)),
        app_id=unique("send-app"),
        request_topic=unique("send.requests"),
    )
    yield w
    w.stop()


def test_send_prints_the_deadline_error_when_the_only_backend_is_down(down_worker):
    """The worker's error reply, sent at the deadline, is printed, not 'is a worker running'."""
    asyncio.run(wait_for_members(down_worker.env["TURNOUT_APP_ID"]))
    rc, out, err = asyncio.run(
        run_turnout("send", "--timeout", "4", "--client", unique("cli"), "hi",
                    env=down_worker.env, timeout_s=60)
    )  # fmt: skip
    assert rc == 1, err
    reply = orjson.loads(out)
    assert reply["status"] == "error"
    assert reply["error"]["code"] in ("deadline_exceeded", "backend_unavailable")
    assert reply["error"]["retryable"] is True
    assert "worker" not in err


def test_send_blames_a_missing_worker_only_when_the_group_is_empty():
    """With no member in the group, the message says so and names the group."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": BOOTSTRAP,
        "TURNOUT_APP_ID": unique("nobody-home"),
        "TURNOUT_REQUEST_TOPIC": unique("nobody.requests"),
    }
    rc, out, err = asyncio.run(
        run_turnout("send", "--timeout", "1", "--client", unique("cli"), "hi", env=env,
                    timeout_s=60)
    )  # fmt: skip
    assert rc == 1
    assert out == ""
    assert f"no worker is in consumer group {env['TURNOUT_APP_ID']}" in err
