"""The Anthropic Messages protocol, as pure functions: OpenAI bodies to ``/v1/messages`` and back.

    OpenAI kind   Anthropic call                 answer read back as
    chat          POST /v1/messages {messages}   chat.completion
    completion    POST /v1/messages (prompt as   text_completion
                  one user message)
    embeddings    (none: Anthropic has no embeddings endpoint; ``build`` raises)

System and developer messages move to the top-level ``system`` string;
``max_tokens`` is required by Anthropic, so it defaults to ``DEFAULT_MAX_TOKENS``;
``stop`` becomes ``stop_sequences``. Stop reasons map ``end_turn``/``stop_sequence``
to ``stop``, ``max_tokens`` to ``length``, ``tool_use`` to ``tool_calls``; usage
``input_tokens``/``output_tokens`` become ``prompt_tokens``/``completion_tokens``.

The HTTP client must send ``headers(key)`` (``x-api-key`` and ``anthropic-version``)
instead of ``Authorization: Bearer``. ``StreamTranslator`` turns the server-sent
events of a ``stream: true`` call (``message_start``, ``content_block_delta``,
``message_delta``, ``message_stop``) into OpenAI chunk objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.types import Kind
from turnout.backends import tools
from turnout.backends.http_call import HttpAnswer, HttpCall, decode_object, shape_error
from turnout.errors import BackendProtocolError, BackendStatusError

PATH = "/v1/messages"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
_SYSTEM_ROLES = ("system", "developer")
# Anthropic error event type -> the HTTP status it stands for (for retryability).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def headers(api_key: str | None) -> dict[str, str]:
    """The headers every Anthropic call needs (besides ``Content-Type``)."""
    out = {"anthropic-version": API_VERSION}
    if api_key is not None:
        out["x-api-key"] = api_key
    return out


def build(
    kind: Kind,
    model: str,
    body: Mapping[str, Any],
    *,
    stream: bool = False,
    backend_id: str = "anthropic",
) -> HttpCall:
    """The ``/v1/messages`` call for an OpenAI ``body`` of ``kind``, served by ``model``.

    Embeddings raise ``BackendStatusError`` 501 (retryable: another target may embed).
    """
    if kind == "embeddings":
        raise BackendStatusError(
            f"backend {backend_id!r} speaks the Anthropic Messages API, which has no "
            "embeddings endpoint; route embeddings to an openai or ollama backend",
            backend=backend_id,
            status=501,
        )
    if kind == "chat":
        system, messages = split_system(body.get("messages"))
    else:
        system, messages = None, [{"role": "user", "content": _prompt_text(body.get("prompt"))}]
    json: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": _max_tokens(body),
    }
    if system:
        json["system"] = system
    for field in ("temperature", "top_p", "top_k"):
        if body.get(field) is not None:
            json[field] = body[field]
    stop = body.get("stop")
    if isinstance(stop, str):
        json["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        json["stop_sequences"] = stop
    user = body.get("user")
    if isinstance(user, str) and user:
        json["metadata"] = {"user_id": user}
    if kind == "chat":
        json.update(tools.anthropic_tools(body, backend_id))
    if stream:
        json["stream"] = True
    return HttpCall(PATH, json)


def split_system(messages: Any) -> tuple[str | None, Any]:
    """(the system prompt, the other messages in Anthropic's shape).

    System and developer messages are joined with blank lines, wherever they stand.
    Anything that is not a list of messages is passed on for Anthropic to reject.
    """
    if not isinstance(messages, list):
        return None, messages
    system: list[str] = []
    blocks: list[dict[str, Any]] = []  # the system prompt as blocks, if any has cache_control
    out: list[Any] = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES:
            text = _text(m.get("content"))
            if text:
                system.append(text)
            content = m.get("content")
            parts = content if isinstance(content, list) else [{"type": "text", "text": text}]
            blocks.extend(b for b in _content(parts) if isinstance(b, dict) and b.get("text"))
        elif isinstance(m, dict):
            out.append(tools.anthropic_message(m, _content(m.get("content"))))
        else:
            out.append(m)
    if any("cache_control" in b for b in blocks):
        return blocks, tools.merge_turns(out)  # type: ignore[return-value]
    return ("\n\n".join(system) or None), tools.merge_turns(out)


def parse(
    kind: Kind, backend_id: str, status: int, payload: bytes, headers: Mapping[str, str]
) -> dict[str, Any]:
    """The OpenAI body for an Anthropic answer; ``BackendStatusError``/``BackendProtocolError``."""
    obj = decode_object(backend_id, HttpAnswer(status, payload, headers))
    blocks = obj.get("content")
    if not isinstance(blocks, list):
        raise shape_error(backend_id, status, "content list", obj)
    text = "".join(
        b["text"]
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )
    finish = FINISH.get(str(obj.get("stop_reason")), "stop")
    model = got if isinstance(got := obj.get("model"), str) else ""
    raw_id = got if isinstance(got := obj.get("id"), str) else ""
    if kind == "chat":
        choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
        calls = tools.tool_calls_from_anthropic(blocks)
        if calls:
            choice["message"] = {"role": "assistant", "content": text or None, "tool_calls": calls}
        prefix, shape = "chatcmpl-", "chat.completion"
    else:
        choice = {"text": text, "logprobs": None}
        prefix, shape = "cmpl-", "text_completion"
    return {
        "id": prefix + raw_id,
        "object": shape,
        "created": 0,
        "model": model,
        "choices": [{"index": 0, **choice, "finish_reason": finish}],
        "usage": usage(obj.get("usage")),
    }


def usage(raw: Any) -> dict[str, Any]:
    """OpenAI usage for Anthropic's ``{input_tokens, output_tokens}`` and cache counts.

    Anthropic's ``input_tokens`` excludes tokens read from or written to its prompt
    cache; OpenAI's ``prompt_tokens`` includes them, with the reads reported as
    ``prompt_tokens_details.cached_tokens``.
    """
    raw = raw if isinstance(raw, dict) else {}
    read = _count(raw.get("cache_read_input_tokens"))
    written = _count(raw.get("cache_creation_input_tokens"))
    prompt = _count(raw.get("input_tokens")) + read + written
    completion = _count(raw.get("output_tokens"))
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if read or written:
        out["prompt_tokens_details"] = {"cached_tokens": read}
    return out


class StreamTranslator:
    """Turns Anthropic stream events into OpenAI chunks; pure, one per streamed call.

    ``feed(event, data)`` returns the chunks to emit for one event (often none).
    ``done`` is set by ``message_stop``. An ``error`` event raises the matching
    ``BackendStatusError``; an event whose data is not an object raises
    ``BackendProtocolError``.
    """

    def __init__(self, kind: Kind, backend_id: str) -> None:
        self.kind = kind
        self.backend_id = backend_id
        self.id = ""
        self.model = ""
        self.input_tokens = 0
        self.input_usage: dict[str, Any] = {"prompt_tokens": 0}
        self.done = False
        self._tools: dict[int, int] = {}  # content block index -> tool call index

    def __repr__(self) -> str:
        return f"<StreamTranslator kind={self.kind} id={self.id!r} done={self.done}>"

    def feed(self, event: str, data: Any) -> list[dict[str, Any]]:
        if not isinstance(data, dict):
            raise BackendProtocolError(
                f"backend {self.backend_id!r} sent a {event or 'nameless'} event whose data is "
                "not a JSON object",
                backend=self.backend_id,
            )
        kind = data.get("type", event)
        if kind == "message_start":
            message = got if isinstance(got := data.get("message"), dict) else {}
            self.id = str(message.get("id", ""))
            self.model = str(message.get("model", ""))
            self.input_usage = usage(message.get("usage"))
            self.input_tokens = self.input_usage["prompt_tokens"]
            return [self._chunk({"role": "assistant", "content": ""}, None)]
        if kind in ("content_block_start", "content_block_delta"):
            tool = self._tool_delta(kind, data)
            if tool is not None:
                return [self._chunk({"tool_calls": [tool]}, None)] if tool else []
            part = data.get("delta") if kind == "content_block_delta" else data.get("content_block")
            text = part.get("text") if isinstance(part, dict) else None
            return [self._chunk({"content": text}, None)] if isinstance(text, str) and text else []
        if kind == "message_delta":
            delta = got if isinstance(got := data.get("delta"), dict) else {}
            finish = FINISH.get(str(delta.get("stop_reason")), "stop")
            out_tokens = usage(data.get("usage"))["completion_tokens"]
            chunk = self._chunk({}, finish)
            chunk["usage"] = {
                **self.input_usage,
                "completion_tokens": out_tokens,
                "total_tokens": self.input_tokens + out_tokens,
            }
            return [chunk]
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            error = got if isinstance(got := data.get("error"), dict) else {}
            etype = str(error.get("type", "api_error"))
            raise BackendStatusError(
                f"backend {self.backend_id!r} failed mid-stream ({etype[:64]})",
                backend=self.backend_id,
                status=_ERROR_STATUS.get(etype, 500),
            )
        return []  # ping, content_block_stop and future event types

    def _tool_delta(self, kind: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The tool_calls delta for a tool_use block event; None if the event is not one."""
        block = data.get("index", 0)
        if kind == "content_block_start":
            part = data.get("content_block")
            if not isinstance(part, dict) or part.get("type") != "tool_use":
                return None
            n = self._tools[block] = len(self._tools)
            fn = {"name": part.get("name", ""), "arguments": ""}
            return {"index": n, "id": part.get("id", ""), "type": "function", "function": fn}
        part = data.get("delta")
        if block not in self._tools or not isinstance(part, dict):
            return None
        piece = part.get("partial_json")
        if not isinstance(piece, str) or not piece:
            return {}
        return {"index": self._tools[block], "function": {"arguments": piece}}

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            return {
                "id": "chatcmpl-" + self.id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "choices": [choice],
            }
        choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None}
        choice["finish_reason"] = finish
        return {
            "id": "cmpl-" + self.id,
            "object": "text_completion",
            "created": 0,
            "model": self.model,
            "choices": [choice],
        }


def _max_tokens(body: Mapping[str, Any]) -> Any:
    for field in ("max_tokens", "max_completion_tokens"):
        if body.get(field) is not None:
            return body[field]
    return DEFAULT_MAX_TOKENS


def _prompt_text(prompt: Any) -> Any:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    return prompt


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _content(content: Any) -> Any:
    """Anthropic content for OpenAI content: a string stays, parts become blocks."""
    if not isinstance(content, list):
        return content
    blocks: list[Any] = []
    for part in content:
        if not isinstance(part, dict):
            blocks.append(part)
        elif part.get("type") == "text":
            blocks.append(_cached(part, {"type": "text", "text": part.get("text")}))
        elif part.get("type") == "image_url":
            blocks.append(_cached(part, _image(part.get("image_url"))))
        else:
            blocks.append(part)
    return blocks


def _cached(part: Mapping[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """``block`` with the part's ``cache_control`` breakpoint, passed through untouched."""
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _image(image_url: Any) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        media_type, data = url[len("data:") :].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
