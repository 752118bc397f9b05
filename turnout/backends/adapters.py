"""One ``Adapter`` per backend protocol, in a registry: where a protocol goes. Pure.

An adapter says, for its protocol, what to send (``plan``, ``plan_stream``), how
to read the answer (``read``, ``parse``), how a key travels (``auth``) and which
wire format its streams use. ``http.py`` and ``streaming.py`` do the I/O and look
the adapter up with ``adapter_for(backend.protocol)``; nothing else branches on a
protocol. There is no default: the config requires every backend's ``protocol``
and accepts exactly the keys of ``ADAPTERS`` (a test keeps them equal).

Adding a protocol: write its pure ``build``/``parse`` module beside ``openai.py``,
add an ``Adapter`` here, a name to ``turnout.config.Protocol``, and (if its streams
use a new wire format) a decoder to ``streaming._DECODERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from schemas.types import Kind
from turnout.backends import anthropic, ollama, openai
from turnout.backends.http_call import HttpAnswer, HttpCall
from turnout.config import Backend

StreamFormat = Literal["sse", "ndjson", "anthropic_sse"]
"""``sse``: OpenAI's ``data: {chunk}`` ... ``[DONE]``; ``ndjson``: Ollama's lines, the
last ``done: true``; ``anthropic_sse``: Anthropic's ``message_start`` ... ``message_stop``."""

Parse = Callable[[Kind, str, int, bytes, Mapping[str, str]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Adapter:
    """How turnout speaks one backend protocol; every field a pure function or a constant."""

    protocol: str
    build: Callable[[Kind, str, Mapping[str, Any], str, bool], HttpCall]
    """``(kind, model, body, backend_id, stream)``: the one HTTP call for a request."""
    parse: Parse
    """``(kind, backend_id, status, payload, headers)``: the answer in OpenAI's shape."""
    auth: Callable[[str | None], dict[str, str]]
    """The headers that carry the backend's API key (or none)."""
    stream_format: StreamFormat
    stream_accept: str

    def __repr__(self) -> str:
        return f"<Adapter {self.protocol} stream={self.stream_format}>"

    def plan(
        self, backend: Backend, kind: Kind, model: str, body: Mapping[str, Any]
    ) -> list[HttpCall]:
        """The calls that answer one plain (not streamed) request, in order."""
        return [self.build(kind, model, body, backend.id, False)]

    def read(
        self, backend: Backend, kind: Kind, model: str, answers: Sequence[HttpAnswer]
    ) -> dict[str, Any]:
        """The OpenAI-shaped answer to the calls ``plan`` returned, from their answers."""
        (answer,) = answers
        return self.parse(kind, backend.id, answer.status, answer.payload, answer.headers)

    def plan_stream(
        self, backend: Backend, kind: Kind, model: str, body: Mapping[str, Any]
    ) -> HttpCall:
        """The one call that streams the answer to a chat or completion request."""
        return self.build(kind, model, body, backend.id, True)


@dataclass(frozen=True, slots=True, repr=False)
class OllamaAdapter(Adapter):
    """Ollama's legacy ``/api/embeddings`` takes one text a call: ``plan`` makes one call
    per input when the backend sets ``embed_endpoint: embeddings``."""

    def plan(
        self, backend: Backend, kind: Kind, model: str, body: Mapping[str, Any]
    ) -> list[HttpCall]:
        if kind == "embeddings" and backend.embed_endpoint == "embeddings":
            return ollama.build_legacy_embeddings(model, body)
        return [self.build(kind, model, body, backend.id, False)]

    def read(
        self, backend: Backend, kind: Kind, model: str, answers: Sequence[HttpAnswer]
    ) -> dict[str, Any]:
        if kind == "embeddings" and backend.embed_endpoint == "embeddings":
            return ollama.parse_legacy_embeddings(backend.id, model, list(answers))
        (answer,) = answers
        return self.parse(kind, backend.id, answer.status, answer.payload, answer.headers)


def _bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def _openai_build(
    kind: Kind, model: str, body: Mapping[str, Any], backend_id: str, stream: bool
) -> HttpCall:
    call = openai.build(kind, model, body)
    if stream:
        if isinstance(body.get("stream_options"), dict):
            call.json["stream_options"] = body["stream_options"]
        call.json["stream"] = True
    return call


def _ollama_build(
    kind: Kind, model: str, body: Mapping[str, Any], backend_id: str, stream: bool
) -> HttpCall:
    call = ollama.build(kind, model, body, backend_id=backend_id)
    if stream:
        call.json["stream"] = True
    return call


def _anthropic_build(
    kind: Kind, model: str, body: Mapping[str, Any], backend_id: str, stream: bool
) -> HttpCall:
    return anthropic.build(kind, model, body, stream=stream, backend_id=backend_id)


ADAPTERS: Mapping[str, Adapter] = {
    "openai": Adapter(
        protocol="openai",
        build=_openai_build,
        parse=openai.parse,
        auth=_bearer,
        stream_format="sse",
        stream_accept="text/event-stream",
    ),
    "ollama": OllamaAdapter(
        protocol="ollama",
        build=_ollama_build,
        parse=ollama.parse,
        auth=_bearer,
        stream_format="ndjson",
        stream_accept="application/x-ndjson",
    ),
    "anthropic": Adapter(
        protocol="anthropic",
        build=_anthropic_build,
        parse=anthropic.parse,
        auth=anthropic.headers,
        stream_format="anthropic_sse",
        stream_accept="text/event-stream",
    ),
}


def adapter_for(protocol: str) -> Adapter:
    """The adapter of ``protocol``; a ValueError naming the known ones otherwise.

    >>> adapter_for("ollama")
    <Adapter ollama stream=ndjson>
    >>> adapter_for("grpc")
    Traceback (most recent call last):
    ...
    ValueError: no backend adapter for protocol 'grpc'; known protocols: openai, ollama, anthropic
    """
    adapter = ADAPTERS.get(str(protocol))
    if adapter is None:
        known = ", ".join(ADAPTERS)
        raise ValueError(f"no backend adapter for protocol {protocol!r}; known protocols: {known}")
    return adapter
