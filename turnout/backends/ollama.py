"""The Ollama protocol, as pure functions: OpenAI bodies to Ollama calls, and answers back.

    kind         call                                 answer -> OpenAI shape
    chat         POST /api/chat     {messages}        message.content -> chat.completion
    completion   POST /api/generate {prompt}          response        -> text_completion
    embeddings   POST /api/embed    {input}           embeddings      -> list of embedding

Older Ollama servers only have ``POST /api/embeddings {prompt}``, which embeds one
string per call: ``build_legacy_embeddings`` returns one call per input and
``parse_legacy_embeddings`` joins their answers.

Sampling parameters move into ``options``; ``max_tokens`` becomes ``num_predict``.
Message content given as a list of parts is flattened to text (and base64 data-URL
images are passed as ``images``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from schemas.types import Kind
from turnout.backends import tools
from turnout.backends.http_call import HttpAnswer, HttpCall, decode_object, shape_error

PATHS: dict[Kind, str] = {
    "chat": "/api/chat",
    "completion": "/api/generate",
    "embeddings": "/api/embed",
}
LEGACY_EMBEDDINGS_PATH = "/api/embeddings"

# OpenAI body field -> Ollama option.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
_FINISH = {"stop": "stop", "length": "length"}


def build(
    kind: Kind, model: str, body: Mapping[str, Any], *, backend_id: str = "ollama"
) -> HttpCall:
    """The Ollama call for an OpenAI ``body`` of ``kind``, served by ``model``.

    Tools and tool turns are translated (``tools.py``); a forced ``tool_choice``
    raises ``BackendStatusError`` 400, as Ollama cannot force a tool.
    """
    if kind == "embeddings":
        json: dict[str, Any] = {"model": model, "input": body.get("input")}
        if "dimensions" in body:
            json["dimensions"] = body["dimensions"]
        return HttpCall(PATHS[kind], json)
    json = {"model": model, "stream": False, "options": options(body)}
    if kind == "chat":
        messages = body.get("messages")
        json["messages"] = (
            [_with_tools(m, tools.call_names(messages)) for m in messages]
            if isinstance(messages, list)
            else messages
        )
        json.update(tools.ollama_tools(body, backend_id))
    else:
        json["prompt"] = _prompt(body.get("prompt"))
        if "suffix" in body:
            json["suffix"] = body["suffix"]
    fmt = _format(body.get("response_format"))
    if fmt is not None:
        json["format"] = fmt
    return HttpCall(PATHS[kind], json)


def options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's ``options`` for the sampling parameters present in an OpenAI ``body``."""
    out: dict[str, Any] = {}
    for field, option in _OPTIONS.items():
        value = body.get(field)
        if value is not None:
            out[option] = [value] if option == "stop" and isinstance(value, str) else value
    return out


def parse(
    kind: Kind, backend_id: str, status: int, payload: bytes, headers: Mapping[str, str]
) -> dict[str, Any]:
    """The OpenAI body for Ollama's answer; ``BackendStatusError`` or ``BackendProtocolError``."""
    obj = decode_object(backend_id, HttpAnswer(status, payload, headers))
    raw_model = obj.get("model")
    model = raw_model if isinstance(raw_model, str) else ""
    if kind == "embeddings":
        vectors = obj.get("embeddings")
        if not isinstance(vectors, list) or not all(isinstance(v, list) for v in vectors):
            raise shape_error(backend_id, status, "embeddings list of lists", obj)
        return embedding_list(model, vectors, _count(obj, "prompt_eval_count"))
    if kind == "chat":
        message = obj.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise shape_error(backend_id, status, "message.content", obj)
        role = got if isinstance(got := message.get("role"), str) else "assistant"
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": role, "content": message["content"]},
        }
        calls = tools.tool_calls_from_ollama(message.get("tool_calls"), payload.hex()[:64])
        if calls:
            choice["message"] = {"role": role, "content": message["content"] or None,
                                 "tool_calls": calls}  # fmt: skip
        prefix, shape = "chatcmpl-", "chat.completion"
    else:
        text = obj.get("response")
        if not isinstance(text, str):
            raise shape_error(backend_id, status, "response", obj)
        choice = {"index": 0, "text": text, "logprobs": None}
        prefix, shape = "cmpl-", "text_completion"
    choice["finish_reason"] = _FINISH.get(str(obj.get("done_reason")), "stop")
    if choice.get("message", {}).get("tool_calls"):
        choice["finish_reason"] = "tool_calls"
    prompt_tokens = _count(obj, "prompt_eval_count")
    completion_tokens = _count(obj, "eval_count")
    return {
        "id": prefix + hashlib.blake2b(payload, digest_size=12).hexdigest(),
        "object": shape,
        "created": _epoch_s(obj.get("created_at")),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def build_legacy_embeddings(model: str, body: Mapping[str, Any]) -> list[HttpCall]:
    """One ``POST /api/embeddings`` per input string: the older endpoint embeds one at a time."""
    raw = body.get("input")
    inputs = raw if isinstance(raw, list) and all(isinstance(x, str) for x in raw) else [raw]
    return [HttpCall(LEGACY_EMBEDDINGS_PATH, {"model": model, "prompt": x}) for x in inputs]


def parse_legacy_embeddings(
    backend_id: str, model: str, answers: Sequence[HttpAnswer]
) -> dict[str, Any]:
    """The OpenAI embeddings body for the answers to ``build_legacy_embeddings``, in order."""
    vectors: list[list[Any]] = []
    for answer in answers:
        obj = decode_object(backend_id, answer)
        vector = obj.get("embedding")
        if not isinstance(vector, list):
            raise shape_error(backend_id, answer.status, "embedding list", obj)
        vectors.append(vector)
    return embedding_list(model, vectors, 0)  # this endpoint does not count tokens


def embedding_list(model: str, vectors: list[list[Any]], prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's embeddings response for ``vectors``, in input order."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def flatten(content: Any) -> Any:
    """Text for OpenAI content given as a list of parts; anything else unchanged."""
    if not isinstance(content, list):
        return content
    texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(texts)


def _with_tools(message: Any, names: Mapping[str, str]) -> Any:
    out = _message(message)
    if isinstance(out, dict):
        tools.ollama_message(message, out, names)
    return out


def _message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message  # not a message: let the backend reject it
    out = {"role": message.get("role"), "content": flatten(message.get("content"))}
    images = _images(message.get("content"))
    if images:
        out["images"] = images
    return out


def _images(content: Any) -> list[str]:
    """The base64 payloads of ``data:`` URL image parts (Ollama cannot fetch remote URLs)."""
    if not isinstance(content, list):
        return []
    images = []
    for part in content:
        url = part.get("image_url") if isinstance(part, dict) else None
        url = url.get("url") if isinstance(url, dict) else url
        if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
            images.append(url.split(";base64,", 1)[1])
    return images


def _prompt(prompt: Any) -> Any:
    """Ollama takes one prompt string; a list holding one string is unwrapped."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    return prompt


def _format(response_format: Any) -> Any:
    """``format`` for OpenAI's ``response_format``: "json", a JSON schema, or None."""
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else "json"
    return None


def _count(obj: Mapping[str, Any], field: str) -> int:
    value = obj.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _epoch_s(created_at: Any) -> int:
    """Seconds since the epoch for Ollama's ISO 8601 ``created_at``; 0 when absent or odd."""
    if not isinstance(created_at, str):
        return 0
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # no zone given: read it as UTC, not local time
    return int(moment.timestamp())
