"""A traceparent sent to the gateway reaches the backend call through real Kafka headers
(gateway, worker, broker and mock backend as processes; export off, the default)."""

import os
import urllib.request

import orjson
import pytest

from tests.integration.clients_stack import ClientsStack

TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = ClientsStack(tmp_path_factory.mktemp("gw-trace"))
    yield s
    s.stop()


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_the_callers_trace_reaches_the_backend(stack, protocol):
    """The backend sees the caller's trace id in its traceparent header."""
    body = {"model": f"m-{protocol}", "messages": [{"role": "user", "content": "hi"}]}
    req = urllib.request.Request(
        f"{stack.url}/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json",
                 "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
    seen = stack.backend.stats()["traceparents"]
    assert any(t.split("-")[1] == TRACE for t in seen), seen
    assert os.environ.get("TURNOUT_OTLP_ENDPOINT") is None  # export off: still carried
