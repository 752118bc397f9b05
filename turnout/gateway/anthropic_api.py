"""Anthropic's Messages API at the gateway's edge (``POST /v1/messages``), as pure code.

In: a Messages body becomes a ``Call`` whose body is OpenAI's chat shape (what
the workers speak), so any backend protocol can serve it:

    Anthropic                              OpenAI chat body
    system (string or text blocks)         a leading system message
    text / image blocks                    content parts (text, image_url)
    assistant tool_use blocks              assistant tool_calls
    user tool_result blocks                role "tool" messages, in order
    tools [{name, description,             tools [{type: function, function:
      input_schema}]                         {name, description, parameters}}]
    tool_choice auto / any / tool / none   auto / required / {function} / none
    stop_sequences, max_tokens,            stop, max_tokens, temperature, top_p,
      temperature, top_p, top_k,             top_k, user
      metadata.user_id
    cache_control on blocks                kept on the parts (passed through)

Out: a chat.completion becomes a ``message`` (text and ``tool_use`` blocks,
``stop_reason``, usage with cached tokens), and a stream of OpenAI chunks
becomes Anthropic's events in Anthropic's order (``MessageStream``):
message_start, then per block content_block_start (a ping after the first),
content_block_delta..., content_block_stop, then message_delta and message_stop.
Errors have Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from schemas.types import Reply
from turnout.backends.streaming import chunks_from_response
from turnout.core.tokens import CHARS_PER_TOKEN, estimate_prompt_tokens
from turnout.gateway.openai_api import Call, Dialect, EdgeError

CONTENT_TYPE = "text/event-stream"
_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def _bad(message: str, param: str) -> EdgeError:
    return EdgeError(400, message, code="invalid_request_error", param=param)


# -- requests ----------------------------------------------------------------------------------


def parse(body: Any) -> Call:
    """The ``Call`` for a Messages body; ``EdgeError`` 400 naming the bad field."""
    if not isinstance(body, dict):
        raise EdgeError(400, "the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= 256:
        raise _bad("model: a string of 1 to 256 characters is required", "model")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _bad("max_tokens: an integer >= 1 is required", "max_tokens")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("messages: a non-empty list of messages is required", "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream: expected true or false", "stream")
    messages = system_messages(body.get("system"))
    for i, m in enumerate(raw_messages):
        messages.extend(to_openai_messages(m, i))
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    for field in ("temperature", "top_p", "top_k"):
        if body.get(field) is not None:
            out[field] = body[field]
    stops = body.get("stop_sequences")
    if stops:
        out["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    tools = body.get("tools")
    if tools:
        out["tools"] = to_openai_tools(tools)
    choice = body.get("tool_choice")
    if choice is not None:
        out.update(to_openai_tool_choice(choice))
    return Call(
        kind="chat",
        model=model,
        body=out,
        stream=stream,
        include_usage=stream,
        api="anthropic",
        encoder=MessageStream(model) if stream else None,
    )


def system_messages(system: Any) -> list[dict[str, Any]]:
    """OpenAI system messages for Anthropic's ``system`` (a string or text blocks)."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list) and all(isinstance(b, dict) for b in system):
        return [{"role": "system", "content": [_part(b, "system") for b in system]}]
    raise _bad("system: expected a string or a list of text blocks", "system")


def to_openai_messages(message: Any, i: int) -> list[dict[str, Any]]:
    """OpenAI messages for one Anthropic message (tool results become ``tool`` messages)."""
    where = f"messages[{i}]"
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise _bad(f"{where}: expected an object with role 'user' or 'assistant'", where)
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content: expected a string or a list of blocks", where)
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for n, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use" and role == "assistant":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
        elif kind == "tool_result" and role == "user":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": str(block.get("tool_use_id", "")),
                    "content": _tool_result_text(block.get("content")),
                }
            )
        elif kind in ("text", "image"):
            parts.append(_part(block, f"{where}.content[{n}]"))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's own reasoning: not replayed to another model
        else:
            raise _bad(
                f"{where}.content[{n}]: block type {kind!r} is not supported here "
                "(text, image, tool_use in assistant turns, tool_result in user turns)",
                where,
            )
    if role == "assistant":
        text = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
        msg: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            msg["tool_calls"] = calls
        return [msg]
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        part: dict[str, Any] = {"type": "text", "text": str(block.get("text", ""))}
    elif kind == "image":
        source = got if isinstance(got := block.get("source"), dict) else {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        else:
            url = str(source.get("url", ""))
        part = {"type": "image_url", "image_url": {"url": url}}
    else:
        raise _bad(f"{where}: expected a text block, got {kind!r}", where)
    if "cache_control" in block:
        part["cache_control"] = block["cache_control"]  # passed through untouched
    return part


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return "" if content is None else orjson.dumps(content).decode()


def to_openai_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools for Anthropic's tool definitions."""
    if not isinstance(tools, list):
        raise _bad("tools: expected a list of tool definitions", "tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _bad(f"tools[{i}]: expected an object with a name", "tools")
        if t.get("type") not in (None, "custom"):
            raise _bad(
                f"tools[{i}]: server tool {t.get('type')!r} is not supported; "
                "only client tools (name, description, input_schema) are",
                "tools",
            )
        fn: dict[str, Any] = {
            "name": t["name"],
            "parameters": t.get("input_schema") or {"type": "object"},
        }
        if t.get("description"):
            fn["description"] = t["description"]
        tool: dict[str, Any] = {"type": "function", "function": fn}
        if "cache_control" in t:
            tool["cache_control"] = t["cache_control"]  # passed through untouched
        out.append(tool)
    return out


def to_openai_tool_choice(choice: Any) -> dict[str, Any]:
    """The OpenAI fields for Anthropic's ``tool_choice``."""
    kind = choice.get("type") if isinstance(choice, dict) else None
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise _bad("tool_choice: expected type auto, any, none, or tool with a name", "tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def model_list(names: list[str]) -> dict[str, Any]:
    """``GET /v1/models`` in Anthropic's shape (asked with an ``anthropic-version`` header)."""
    data = [
        {"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}
        for n in names
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": names[0] if names else None,
        "last_id": names[-1] if names else None,
    }


def count_tokens(body: Any) -> dict[str, int]:
    """``POST /v1/messages/count_tokens``: an estimate (turnout has no tokenizer: about
    four characters a token, ``turnout/core/tokens.py``), the system prompt and tools included."""
    if isinstance(body, dict) and "max_tokens" not in body:
        body = {**body, "max_tokens": 1}
    call = parse(body)
    tools = call.body.get("tools")
    extra = len(orjson.dumps(tools)) // CHARS_PER_TOKEN if tools else 0
    return {"input_tokens": estimate_prompt_tokens("chat", call.body) + extra}


# -- answers -----------------------------------------------------------------------------------


def stop_reason(finish: Any) -> str:
    return _STOP.get(str(finish), "end_turn")


def usage(raw: Any) -> dict[str, int]:
    """Anthropic usage for OpenAI usage; cached prompt tokens are reported as cache reads."""
    raw = raw if isinstance(raw, dict) else {}
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) else 0
    prompt = got if isinstance(got := raw.get("prompt_tokens"), int) else 0
    out = {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": raw.get("completion_tokens") or 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }
    return out


def message_body(model: str, completion: Mapping[str, Any]) -> dict[str, Any]:
    """The Anthropic ``message`` for an OpenAI chat.completion."""
    choices = completion.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else {}
    message = got if isinstance(got := first.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": fn.get("name", ""),
                "input": _arguments(fn.get("arguments")),
            }
        )
    raw_id = str(completion.get("id", "")).removeprefix("chatcmpl-")
    return {
        "id": f"msg_{raw_id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(first.get("finish_reason")),
        "stop_sequence": None,
        "usage": usage(completion.get("usage")),
    }


def _arguments(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_value": value}


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


class MessageStream:
    """Turns one request's OpenAI chunks into Anthropic stream events, in Anthropic's order.

    Stateful and pure: ``feed(chunk)`` and ``finish(usage, finish_reason)`` return
    the bytes to send. A text delta opens a text block; each tool call opens a
    ``tool_use`` block whose arguments arrive as ``input_json_delta``; a block is
    stopped when the next one opens or the message ends.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.pinged = False
        self.index = -1
        self.open: str | None = None  # "text" or "tool:<openai index>"
        self.finish_reason: str | None = None
        self.usage: Mapping[str, Any] | None = None
        self.id = ""

    def __repr__(self) -> str:
        return f"<MessageStream index={self.index} open={self.open} started={self.started}>"

    def _start(self, chunk_id: str) -> bytes:
        if self.started:
            return b""
        self.started = True
        self.id = "msg_" + (chunk_id.removeprefix("chatcmpl-") or "turnout")
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse("message_start", {"type": "message_start", "message": message})

    def _open(self, name: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open = name
        out += sse(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )
        if not self.pinged:
            self.pinged = True
            out += sse("ping", {"type": "ping"})
        return out

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        out = self._start(str(chunk.get("id", "")))
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else {}
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = got if isinstance(got := choice.get("delta"), dict) else {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self.open != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out += self._delta({"type": "text_delta", "text": text})
        for call in delta.get("tool_calls") or []:
            name = f"tool:{call.get('index', 0)}"
            fn = call.get("function") or {}
            if self.open != name:
                block: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{self.index + 1}",
                    "name": fn.get("name") or "",
                    "input": {},
                }
                out += self._open(name, block)
            args = fn.get("arguments")
            if isinstance(args, str) and args:
                out += self._delta({"type": "input_json_delta", "partial_json": args})
        return out

    def finish(self, reply_body: Mapping[str, Any]) -> bytes:
        """message_delta (stop reason, usage) and message_stop, after closing the last block."""
        out = self._start(str(reply_body.get("id", "")))
        if not self.pinged:
            self.pinged = True
            out += sse("ping", {"type": "ping"})
        out += self._close()
        choices = reply_body.get("choices")
        if self.finish_reason is None and isinstance(choices, list) and choices:
            self.finish_reason = choices[0].get("finish_reason")
        used = usage(reply_body.get("usage") or self.usage)
        out += sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish_reason), "stop_sequence": None},
                "usage": used,
            },
        )
        return out + sse("message_stop", {"type": "message_stop"})


# -- the dialect -------------------------------------------------------------------------------


def error_body(err: EdgeError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(err.status, "api_error")
    error: dict[str, Any] = {"type": kind, "message": err.message}
    if err.code:
        error["code"] = err.code
    return {"type": "error", "error": {**error, **err.extra}}


def response_body(call: Call, reply: Reply) -> dict[str, Any]:
    return message_body(call.model, reply.body or {})


def _encoder(call: Call) -> MessageStream:
    assert isinstance(call.encoder, MessageStream), "a streamed Messages call has an encoder"
    return call.encoder


def relay(call: Call, delta: Mapping[str, Any]) -> bytes:
    return _encoder(call).feed(delta)


def fallback(call: Call, reply: Reply) -> bytes:
    stream = _encoder(call)
    return b"".join(stream.feed(c) for c in chunks_from_response("chat", reply.body or {}))


def finish(call: Call, reply: Reply) -> bytes:
    return _encoder(call).finish(reply.body or {})


def stream_error(err: EdgeError) -> bytes:
    return sse("error", error_body(err))


DIALECT = Dialect(CONTENT_TYPE, error_body, response_body, relay, fallback, finish, stream_error)
