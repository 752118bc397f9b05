"""OpenAI's Responses API at the gateway's edge (``/v1/responses``), as pure code.

In: a Responses body becomes a ``Call`` whose body is OpenAI's chat shape (what
the workers speak), so any backend protocol serves it:

    Responses                                 chat body
    instructions                              a leading system message
    input: a string                           one user message
    input items {role, content}               messages (input_text, output_text,
                                                input_image become parts)
    {type: function_call, call_id, name,      assistant tool_calls (consecutive
      arguments}                                calls share one message)
    {type: function_call_output, call_id,     a role "tool" message
      output}
    tools [{type: function, name,             tools [{type: function, function:
      description, parameters}]                 {name, description, parameters}}]
    tool_choice auto|none|required|           the same, {type: function,
      {type: function, name}                    function: {name}}
    text.format json_schema / json_object     response_format
    max_output_tokens, temperature, top_p,    max_tokens, ..., user,
      user, prompt_cache_key,                   prompt_cache_key (passed through),
      parallel_tool_calls                       parallel_tool_calls

Out: a chat.completion becomes a ``response`` object (a ``message`` item with
``output_text``, one ``function_call`` item per tool call, usage with cached
tokens), and a stream of chunks becomes typed events (``ResponseStream``):
response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta ...,
response.function_call_arguments.delta ..., the matching ``.done`` events, and
response.completed with the whole response.

Ids: a response ``resp_<hex>`` is turnout request ``req-<hex>``, so ``GET
/v1/responses/{id}`` reads the gateway's status store, and ``background: true``
answers at once with status ``queued`` (turnout's asynchronous path).
``previous_response_id`` is refused (400): the store keeps answers, not
conversations, so the client sends the whole conversation as ``input``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from schemas.types import Reply
from turnout.backends.streaming import chunks_from_response
from turnout.gateway import openai_api as oai
from turnout.gateway.kafka import StatusRecord
from turnout.gateway.openai_api import Call, Dialect, EdgeError

PREFIX, REQUEST_PREFIX = "resp_", "req-"
_STATUS = {"queued": "queued", "running": "in_progress", "done": "completed", "failed": "failed"}


def request_id(response_id: str) -> str | None:
    """The turnout request id of a response id; None if it is not one of ours."""
    if not response_id.startswith(PREFIX) or len(response_id) > 80:
        return None
    return REQUEST_PREFIX + response_id[len(PREFIX) :]


def response_id(request_id: str) -> str:
    return PREFIX + request_id.removeprefix(REQUEST_PREFIX)


def _bad(message: str, param: str) -> EdgeError:
    return EdgeError(400, message, code="invalid_value", param=param)


# -- requests ----------------------------------------------------------------------------------


def parse(body: Any) -> tuple[Call, bool]:
    """(the ``Call``, background) for a Responses body; ``EdgeError`` 400 naming the field."""
    if not isinstance(body, dict):
        raise EdgeError(400, "the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= 256:
        raise _bad("'model' must be a string of 1 to 256 characters", "model")
    if body.get("previous_response_id") is not None:
        raise _bad(
            "previous_response_id is not supported: turnout stores answers, not "
            "conversations; send the whole conversation as 'input'",
            "previous_response_id",
        )
    stream, background = body.get("stream", False), body.get("background", False)
    for name, value in (("stream", stream), ("background", background)):
        if value is not None and not isinstance(value, bool):
            raise _bad(f"'{name}' must be true or false", name)
    if stream and background:
        raise _bad("a background response cannot stream; poll GET /v1/responses/{id}", "stream")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(input_messages(body.get("input")))
    out: dict[str, Any] = {"model": model, "messages": messages}
    for src, dst in (
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("user", "user"),
        ("prompt_cache_key", "prompt_cache_key"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("metadata", "metadata"),
    ):
        if body.get(src) is not None:
            out[dst] = body[src]
    if body.get("tools"):
        out["tools"] = chat_tools(body["tools"])
    if body.get("tool_choice") is not None:
        out["tool_choice"] = chat_tool_choice(body["tool_choice"])
    fmt = response_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    call = Call(
        kind="chat",
        model=model,
        body=out,
        stream=bool(stream),
        include_usage=bool(stream),
        api="responses",
        encoder=ResponseStream(model) if stream else None,
    )
    return call, bool(background)


def input_messages(raw: Any) -> list[dict[str, Any]]:
    """Chat messages for the Responses ``input`` (a string or a list of items)."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise _bad("'input' must be a string or a non-empty list of input items", "input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad(f"input[{i}]: expected an object", "input")
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") in ("user", "assistant", "system", "developer"):
            out.append({"role": item["role"], "content": _content(item.get("content"), i)})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {
                    "name": str(item.get("name", "")),
                    "arguments": str(item.get("arguments", "")),
                },
            }
            last = out[-1] if out else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")),
                        "content": text})  # fmt: skip
        elif kind == "reasoning":
            continue  # a model's own reasoning: not replayed to another model
        else:
            raise _bad(
                f"input[{i}]: item type {kind!r} is not supported (message, function_call, "
                "function_call_output)",
                "input",
            )
    return out


def _content(content: Any, i: int) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"input[{i}].content: expected a string or a list of parts", "input")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            url = part.get("image_url") or part.get("file_id") or ""
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise _bad(f"input[{i}].content: part type {kind!r} is not supported", "input")
    return parts


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list", "tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function" or not t.get("name"):
            kind = t.get("type") if isinstance(t, dict) else None
            raise _bad(f"tools[{i}]: only function tools are supported, got {kind!r}", "tools")
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad(
        "'tool_choice' must be auto, none, required or {type: function, name}", "tool_choice"
    )


def response_format(text: Any) -> dict[str, Any] | None:
    """Chat's ``response_format`` for the Responses ``text.format``."""
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    raise _bad(f"text.format type {fmt['type']!r} is not supported", "text")


# -- answers -----------------------------------------------------------------------------------


def usage(raw: Any) -> dict[str, Any]:
    raw = raw if isinstance(raw, dict) else {}
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = raw.get("prompt_tokens") or 0
    completion = raw.get("completion_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached or 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def envelope(rid: str, model: str, status: str, created_s: int) -> dict[str, Any]:
    """The fields every response object has, before its output."""
    return {
        "id": rid,
        "object": "response",
        "created_at": created_s,
        "status": status,
        "model": model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "temperature": None,
        "top_p": None,
        "tool_choice": "auto",
        "tools": [],
        "usage": None,
    }


def output_items(rid: str, completion: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The output items for a chat.completion: a message, then one item per tool call."""
    choices = completion.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else {}
    message = got if isinstance(got := first.get("message"), dict) else {}
    items: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        items.append(message_item(rid, 0, text))
    for n, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        items.append(
            call_item(rid, len(items), call.get("id") or f"call_{n}", fn.get("name", ""),
                      fn.get("arguments") or "")
        )  # fmt: skip
    return items


def message_item(rid: str, index: int, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {
        "type": "message",
        "id": f"msg_{rid.removeprefix(PREFIX)}_{index}",
        "status": status,
        "role": "assistant",
        "content": [part] if status == "completed" else [],
    }


def call_item(
    rid: str, index: int, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{rid.removeprefix(PREFIX)}_{index}",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def completed(
    rid: str, model: str, completion: Mapping[str, Any], created_s: int
) -> dict[str, Any]:
    """The whole response object for an ok chat.completion."""
    out = envelope(rid, model, "completed", created_s)
    out["output"] = output_items(rid, completion)
    out["usage"] = usage(completion.get("usage"))
    choices = completion.get("choices")
    if isinstance(choices, list) and choices and choices[0].get("finish_reason") == "length":
        out["status"] = "incomplete"
        out["incomplete_details"] = {"reason": "max_output_tokens"}
    return out


def from_status(rid: str, rec: StatusRecord) -> dict[str, Any]:
    """``GET /v1/responses/{id}``: the response as the status store knows it."""
    created_s = rec.created_ms // 1000
    reply = rec.reply or {}
    if rec.status == "done":
        return completed(rid, rec.model, reply.get("body") or {}, created_s)
    out = envelope(rid, rec.model, _STATUS[rec.status], created_s)
    if rec.status == "failed":
        error = reply.get("error") or {}
        out["error"] = {
            "code": error.get("code", "server_error"),
            "message": error.get("message", ""),
        }
    return out


def queued(rid: str, model: str) -> dict[str, Any]:
    return envelope(rid, model, "queued", int(time.time()))


# -- streaming ---------------------------------------------------------------------------------


def sse(event: Mapping[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"


class ResponseStream:
    """Turns one request's chat chunks into the Responses API's typed events; pure.

    Items open as their first delta arrives (a message item for text, a
    function_call item per tool call index) and close, with their ``.done``
    events, when the next opens or the response completes. ``rid`` is set by the
    gateway (the request id is chosen after parsing).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.rid = PREFIX
        self.created_s = int(time.time())
        self.seq = 0
        self.started = False
        self.items: list[dict[str, Any]] = []
        self.open: str | None = None  # "text" or "tool:<index>"
        self.text: list[str] = []

    def __repr__(self) -> str:
        return f"<ResponseStream items={len(self.items)} open={self.open} seq={self.seq}>"

    def _event(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        return sse({"type": kind, "sequence_number": self.seq - 1, **fields})

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        head = envelope(self.rid, self.model, "in_progress", self.created_s)
        return self._event("response.created", response=head) + self._event(
            "response.in_progress", response=head
        )

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        index, item = len(self.items) - 1, self.items[-1]
        out = b""
        if self.open == "text":
            text = "".join(self.text)
            part = {"type": "output_text", "text": text, "annotations": []}
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out += self._event("response.output_text.done", **ids, text=text)
            out += self._event("response.content_part.done", **ids, part=part)
            item.update(status="completed", content=[part])
        else:
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item["id"], output_index=index, arguments=item["arguments"],
            )  # fmt: skip
            item["status"] = "completed"
        self.open = None
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def _add(self, name: str, item: dict[str, Any]) -> bytes:
        out = self._close()
        self.items.append(item)
        self.open = name
        index = len(self.items) - 1
        out += self._event("response.output_item.added", output_index=index, item=dict(item))
        if name == "text":
            part = {"type": "output_text", "text": "", "annotations": []}
            out += self._event(
                "response.content_part.added",
                item_id=item["id"], output_index=index, content_index=0, part=part,
            )  # fmt: skip
        return out

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        out = self._start()
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else {}
        delta = got if isinstance(got := choice.get("delta"), dict) else {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self.open != "text":
                self.text = []
                out += self._add("text", message_item(self.rid, len(self.items), "", "in_progress"))
            self.text.append(text)
            index = len(self.items) - 1
            out += self._event(
                "response.output_text.delta",
                item_id=self.items[-1]["id"], output_index=index, content_index=0, delta=text,
            )  # fmt: skip
        for call in delta.get("tool_calls") or []:
            name = f"tool:{call.get('index', 0)}"
            fn = call.get("function") or {}
            if self.open != name:
                item = call_item(
                    self.rid, len(self.items), call.get("id") or f"call_{len(self.items)}",
                    fn.get("name") or "", "", "in_progress",
                )  # fmt: skip
                out += self._add(name, item)
            piece = fn.get("arguments")
            if isinstance(piece, str) and piece:
                self.items[-1]["arguments"] += piece
                out += self._event(
                    "response.function_call_arguments.delta",
                    item_id=self.items[-1]["id"], output_index=len(self.items) - 1, delta=piece,
                )  # fmt: skip
        return out

    def finish(self, reply_body: Mapping[str, Any]) -> bytes:
        out = self._start() + self._close()
        whole = envelope(self.rid, self.model, "completed", self.created_s)
        whole["output"] = self.items
        whole["usage"] = usage(reply_body.get("usage"))
        return out + self._event("response.completed", response=whole)


# -- the dialect -------------------------------------------------------------------------------


def _stream(call: Call) -> ResponseStream:
    assert isinstance(call.encoder, ResponseStream), "a streamed Responses call has an encoder"
    return call.encoder


def response_body(call: Call, reply: Reply) -> dict[str, Any]:
    rid = response_id(reply.id)
    return completed(rid, call.model, reply.body or {}, int(time.time()))


def relay(call: Call, delta: Mapping[str, Any]) -> bytes:
    return _stream(call).feed(delta)


def fallback(call: Call, reply: Reply) -> bytes:
    stream = _stream(call)
    return b"".join(stream.feed(c) for c in chunks_from_response("chat", reply.body or {}))


def finish(call: Call, reply: Reply) -> bytes:
    return _stream(call).finish(reply.body or {})


def stream_error(err: EdgeError) -> bytes:
    body = oai.error_body(err)["error"]
    return sse({"type": "error", "code": body.get("code"), "message": body["message"],
                "param": body.get("param"), "sequence_number": 0})  # fmt: skip


DIALECT = Dialect(
    CONTENT_TYPE := "text/event-stream",
    oai.error_body,
    response_body,
    relay,
    fallback,
    finish,
    stream_error,
)
