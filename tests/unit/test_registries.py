"""The config's enumerations and the registries that serve them stay equal.

Adding a protocol or a policy means one entry in a registry and one name in the
config's ``Literal``; these tests fail when only one of the two was changed.
"""

from __future__ import annotations

from typing import Any, get_args

import orjson
import pytest

from turnout import config
from turnout.backends import streaming
from turnout.backends.adapters import ADAPTERS, StreamFormat, adapter_for
from turnout.backends.http_call import HttpAnswer
from turnout.config import Backend
from turnout.core import routing

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}}


def backend(protocol: Any, **fields: Any) -> Backend:
    return Backend(id="b", protocol=protocol, base_url="http://127.0.0.1:1", models=["m"], **fields)


def test_every_configurable_protocol_has_an_adapter_and_no_other() -> None:
    """``config.Protocol`` lists exactly the protocols of the adapter registry."""
    assert set(get_args(config.Protocol)) == set(ADAPTERS)


def test_each_adapter_is_filed_under_its_own_protocol() -> None:
    """The registry's key and the adapter's ``protocol`` agree."""
    assert all(adapter.protocol == name for name, adapter in ADAPTERS.items())


def test_every_configurable_policy_has_a_function_and_no_other() -> None:
    """``config.Policy`` lists exactly the policies of the routing registry."""
    assert set(get_args(config.Policy)) == set(routing._POLICIES)


def test_every_stream_format_has_a_decoder() -> None:
    """Each wire format an adapter can name has a decoder in ``streaming``."""
    assert set(get_args(StreamFormat)) == set(streaming._DECODERS)
    assert {a.stream_format for a in ADAPTERS.values()} <= set(streaming._DECODERS)


def test_an_unknown_protocol_is_an_error_naming_the_known_ones() -> None:
    """There is no default adapter: an unknown protocol is refused, never guessed."""
    with pytest.raises(ValueError, match="known protocols: openai, ollama, anthropic"):
        adapter_for("grpc")


@pytest.mark.parametrize(
    ("protocol", "path", "accept", "auth"),
    [
        ("openai", "chat/completions", "text/event-stream", {"Authorization": "Bearer k"}),
        ("ollama", "api/chat", "application/x-ndjson", {"Authorization": "Bearer k"}),
        ("anthropic", "v1/messages", "text/event-stream", {"x-api-key": "k"}),
    ],
)
def test_each_adapter_plans_a_streamed_call_in_its_protocols_shape(
    protocol: str, path: str, accept: str, auth: dict[str, str]
) -> None:
    """A streamed call goes to the protocol's path with ``stream`` set, its Accept and auth."""
    adapter = adapter_for(protocol)
    call = adapter.plan_stream(backend(protocol), "chat", "m", CHAT)
    assert call.path.lstrip("/").endswith(path)
    assert call.json["stream"] is True
    assert adapter.stream_accept == accept
    assert auth.items() <= adapter.auth("k").items()
    assert "Authorization" not in adapter.auth(None) and "x-api-key" not in adapter.auth(None)


def test_only_openai_passes_stream_options_on() -> None:
    """``stream_options`` is OpenAI's; the other protocols do not take it."""
    plans = {p: adapter_for(p).plan_stream(backend(p), "chat", "m", CHAT) for p in ADAPTERS}
    assert plans["openai"].json["stream_options"] == {"include_usage": True}
    assert "stream_options" not in plans["ollama"].json
    assert "stream_options" not in plans["anthropic"].json


def test_a_plain_call_is_one_call_not_streamed() -> None:
    """A plain call is one HTTP call, and never asks to stream."""
    for protocol in ADAPTERS:
        calls = adapter_for(protocol).plan(backend(protocol), "chat", "m", CHAT)
        assert len(calls) == 1 and not calls[0].json.get("stream")


def test_ollamas_legacy_embeddings_are_one_call_per_input_read_as_one_answer() -> None:
    """``embed_endpoint: embeddings`` makes one call per text; the answers become one list."""
    adapter = adapter_for("ollama")
    legacy = backend("ollama", embed_endpoint="embeddings")
    calls = adapter.plan(legacy, "embeddings", "m", {"input": ["a", "b"]})
    assert len(calls) == 2
    answers = [HttpAnswer(200, orjson.dumps({"embedding": [float(i), 1.0]}), {}) for i in range(2)]
    out = adapter.read(legacy, "embeddings", "m", answers)
    assert [d["embedding"] for d in out["data"]] == [[0.0, 1.0], [1.0, 1.0]]
    assert len(adapter.plan(backend("ollama"), "embeddings", "m", {"input": ["a", "b"]})) == 1
