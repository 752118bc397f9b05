"""The operator's contract: one ``request_completed`` line per request, on every path.

The dispatcher runs with a scripted backend and a recording publisher (no Kafka);
structlog's capture sees exactly what the JSON renderer would print, with the
request ids the dispatcher binds to its task's context merged in.
"""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from tests.unit.test_dispatch import TP0, drain, make, record
from turnout.errors import BackendStatusError
from turnout.testing.fake import ScriptedBackendClient

COMMON = {
    "request_id",
    "client_id",
    "route",
    "backend",
    "policy",
    "status",
    "code",
    "attempts",
    "queue_ms",
    "backend_ms",
    "total_ms",
    "partition",
    "offset",
}
"""The keys every ``request_completed`` line has, whatever became of the request."""


async def completed(client: ScriptedBackendClient, rec: Any) -> list[dict[str, Any]]:
    d, _ = make(client)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await d.submit(TP0, rec, lambda: None)
        await drain(d)
    return logs


def the_line(logs: list[dict[str, Any]]) -> dict[str, Any]:
    (line,) = [e for e in logs if e["event"] == "request_completed"]
    assert COMMON <= line.keys(), f"missing {COMMON - line.keys()}"
    assert line["log_level"] == "info"
    assert all(line[k] >= 0 for k in ("queue_ms", "backend_ms", "total_ms"))
    assert "request_body" not in line and "response_body" not in line  # prompts are not logged
    return line


async def test_an_answered_request_logs_ok_with_its_route_backend_and_timings() -> None:
    """ok: the route, the backend that answered, its policy, one attempt, no code."""
    line = the_line(await completed(ScriptedBackendClient(), record(7)))
    assert {k: line[k] for k in ("request_id", "client_id", "status", "code")} == {
        "request_id": "r7",
        "client_id": "c",
        "status": "ok",
        "code": None,
    }
    assert (line["route"], line["backend"], line["policy"], line["attempts"]) == (
        "default",
        "a",
        "first",
        1,
    )
    assert (line["kind"], line["model"], line["partition"], line["offset"]) == (
        "chat",
        "default",
        0,
        7,
    )
    assert line["total_ms"] >= line["queue_ms"]


async def test_a_failed_request_logs_the_error_code_and_its_attempts() -> None:
    """error: the backend's refusal is the code, after the attempts that were made."""
    client = ScriptedBackendClient({"a": [BackendStatusError("bad", backend="a", status=400)]})
    line = the_line(await completed(client, record(3)))
    assert (line["status"], line["code"], line["backend"], line["attempts"]) == (
        "error",
        "backend_status",
        "a",
        1,
    )
    assert (line["request_id"], line["route"], line["offset"]) == ("r3", "default", 3)


async def test_a_rejected_request_logs_why_and_where_it_went() -> None:
    """reject: no route or backend, no attempt; whether it was dead-lettered and replied."""
    line = the_line(await completed(ScriptedBackendClient(), record(5, model="gpt-17")))
    assert (line["status"], line["code"], line["request_id"], line["client_id"]) == (
        "error",
        "unknown_model",
        "r5",
        "c",
    )
    assert (line["route"], line["backend"], line["policy"], line["attempts"]) == (
        None,
        None,
        None,
        0,
    )
    assert (line["dead_lettered"], line["replied"], line["backend_ms"]) == (True, True, 0.0)


class Crashes(ScriptedBackendClient):
    async def call(self, backend: Any, **kw: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")


async def test_lines_logged_while_serving_name_the_request() -> None:
    """A line logged deep in the serve (an internal failure) carries the bound request ids."""
    logs = await completed(Crashes(), record(9))
    (failed,) = [e for e in logs if e["event"] == "request_failed"]
    assert (failed["request_id"], failed["client_id"]) == ("r9", "c")
    line = the_line(logs)
    assert (line["code"], line["dead_lettered"]) == ("internal_error", True)


@pytest.mark.parametrize("model", ["default", "gpt-17"])
async def test_the_bound_ids_do_not_leak_out_of_the_requests_task(model: str) -> None:
    """After a request, the caller's own context names no request."""
    await completed(ScriptedBackendClient(), record(1, model=model))
    assert "request_id" not in structlog.contextvars.get_contextvars()
