"""The OpenAI protocol, as pure functions: a request body in, an ``HttpCall`` out, and back.

turnout speaks OpenAI's shapes internally, so building is a pass-through (the
model replaced, streaming off) and parsing checks that the body has the shape
the caller will read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.types import Kind
from turnout.backends.http_call import HttpAnswer, HttpCall, decode_object, shape_error

PATHS: dict[Kind, str] = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embeddings": "/v1/embeddings",
}


def build(kind: Kind, model: str, body: Mapping[str, Any]) -> HttpCall:
    """The call for ``body``: ``model`` replaces the body's, and chat/completion never stream."""
    json = dict(body)
    json["model"] = model
    if kind == "chat":
        _strip_cache_control(json)
    if kind != "embeddings":
        json["stream"] = False
        json.pop("stream_options", None)  # only allowed with stream: true
    return HttpCall(PATHS[kind], json)


def _strip_cache_control(json: dict[str, Any]) -> None:
    """Drop Anthropic's ``cache_control`` breakpoints: OpenAI caches prompt prefixes on
    its own (``prompt_cache_key`` steers it and is passed through) and rejects the field."""
    messages = json.get("messages")
    if isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages
    ):
        json["messages"] = [
            {**m, "content": [_without(p) for p in m["content"]]}
            if isinstance(m, dict) and isinstance(m.get("content"), list)
            else m
            for m in messages
        ]
    if isinstance(json.get("tools"), list):
        json["tools"] = [_without(t) for t in json["tools"]]


def _without(part: Any) -> Any:
    if isinstance(part, dict) and "cache_control" in part:
        return {k: v for k, v in part.items() if k != "cache_control"}
    return part


def parse(
    kind: Kind, backend_id: str, status: int, payload: bytes, headers: Mapping[str, str]
) -> dict[str, Any]:
    """The OpenAI body of a 2xx answer; ``BackendStatusError`` or ``BackendProtocolError``."""
    obj = decode_object(backend_id, HttpAnswer(status, payload, headers))
    if kind == "embeddings":
        _check_embeddings(backend_id, status, obj)
    else:
        field, shape = ("message", dict) if kind == "chat" else ("text", str)
        choices = obj.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(first, dict) or not isinstance(first.get(field), shape):
            got = first if isinstance(first, dict) else obj
            raise shape_error(backend_id, status, f"choices[0].{field}", got)
    return obj


def _check_embeddings(backend_id: str, status: int, obj: dict[str, Any]) -> None:
    data = obj.get("data")
    if not isinstance(data, list):
        raise shape_error(backend_id, status, "data list", obj)
    for i, item in enumerate(data):
        # A list of floats, or a base64 string when the request asked for encoding_format=base64.
        embedding = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(embedding, list | str):
            raise shape_error(backend_id, status, f"data[{i}].embedding", item)
        # llama.cpp's servers answer a model without pooling (a chat model) with one
        # vector per token, a list of lists: not one embedding, so not passed on.
        if embedding and isinstance(embedding, list) and not isinstance(embedding[0], int | float):
            raise shape_error(
                backend_id, status, f"data[{i}].embedding as a list of numbers", embedding
            )
