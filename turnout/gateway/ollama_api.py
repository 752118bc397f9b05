"""Ollama's shapes at the gateway's edge, as pure functions.

    POST /api/chat        {model, messages, ...}          -> kind chat
    POST /api/generate    {model, prompt, ...}            -> kind completion
                          (with ``system`` or ``images``: -> kind chat, answered as generate)
    POST /api/embed       {model, input}                  -> kind embeddings
    POST /api/embeddings  {model, prompt}                 -> kind embeddings (one vector)

Ollama streams by default (``stream`` absent means true): the answer is NDJSON,
one object per piece and a last one with ``done: true`` and the counts; an error
is ``{"error": "..."}`` (as a line, when the stream had begun). ``options`` map to
OpenAI fields (``num_predict`` -> ``max_tokens``), ``format`` to
``response_format``; images become data-URL image parts. A chat without messages
or a generate with an empty prompt only "loads the model", as Ollama does: it is
answered at once with ``done_reason: "load"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.types import Kind, Reply
from turnout.gateway.openai_api import Call, Dialect, EdgeError

CONTENT_TYPE = "application/x-ndjson"
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


def _bad(field: str, expected: str) -> EdgeError:
    return EdgeError(400, f"'{field}' must be {expected}", param=field)


def _common(body: Any) -> tuple[str, bool, dict[str, Any]]:
    """(model, stream, OpenAI sampling fields) of any Ollama body."""
    if not isinstance(body, dict):
        raise EdgeError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= 256:
        raise _bad("model", "a string of 1 to 256 characters (GET /api/tags lists them)")
    stream = body.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise _bad("stream", "true or false")
    return model, stream, _sampling(body)


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise _bad("options", "an object")
    for name, field in _OPTIONS.items():
        value = (options or {}).get(name)
        if value is None or (name == "num_predict" and isinstance(value, int) and value < 0):
            continue  # num_predict -1/-2 mean "no limit"
        out[field] = value
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt},
        }
    elif fmt not in (None, ""):
        raise _bad("format", '"json" or a JSON schema object')
    return out


def _images(value: Any, field: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise _bad(field, "a list of base64 strings")
    return [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{i}"}} for i in value
    ]


def _message(m: Any, i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise _bad(where, "an object with a string 'role'")
    content = m.get("content", "")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise _bad(f"{where}.content", "a string")
    images = _images(m.get("images"), f"{where}.images")
    out: dict[str, Any] = {
        "role": m["role"],
        "content": [{"type": "text", "text": content}, *images] if images else content,
    }
    calls = m.get("tool_calls")
    if isinstance(calls, list) and calls:
        out["tool_calls"] = [_tool_call_out(c, n) for n, c in enumerate(calls)]
    return out


def _tool_call_out(call: Any, n: int) -> Any:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return call
    args = fn.get("arguments")
    text = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
    return {
        "id": f"call_{n}",
        "type": "function",
        "function": {"name": fn.get("name"), "arguments": text},
    }


def parse_chat(body: Any) -> Call | None:
    """The ``Call`` for ``/api/chat``; None when it only loads the model (no messages)."""
    model, stream, fields = _common(body)
    messages = body.get("messages")
    if messages is None or messages == []:
        return None
    if not isinstance(messages, list):
        raise _bad("messages", "a list of message objects")
    converted = link_tool_results([_message(m, i) for i, m in enumerate(messages)], messages)
    out = {"model": model, "messages": converted, **fields}
    if isinstance(body.get("tools"), list) and body["tools"]:
        out["tools"] = body["tools"]
    return Call(kind="chat", model=model, body=out, stream=stream, api="chat")


def link_tool_results(converted: list[dict[str, Any]], raw: list[Any]) -> list[dict[str, Any]]:
    """Give each ``tool`` message the id of the call it answers (Ollama's have none).

    A tool message names its tool (``tool_name``) or answers the calls of the last
    assistant message in order; protocols such as Anthropic's need the call's id.
    """
    pending: list[dict[str, Any]] = []
    for msg, original in zip(converted, raw, strict=True):
        if msg.get("tool_calls"):
            pending = list(msg["tool_calls"])
        elif msg.get("role") == "tool" and pending:
            name = original.get("tool_name") if isinstance(original, dict) else None
            match = next((c for c in pending if c["function"]["name"] == name), pending[0])
            pending.remove(match)
            msg["tool_call_id"] = match["id"]
    return converted


def parse_generate(body: Any) -> Call | None:
    """The ``Call`` for ``/api/generate``; None when it only loads the model (empty prompt)."""
    model, stream, fields = _common(body)
    prompt = body.get("prompt", "")
    system = body.get("system")
    for name, value in (("prompt", prompt), ("system", system), ("suffix", body.get("suffix"))):
        if value is not None and not isinstance(value, str):
            raise _bad(name, "a string")
    images = _images(body.get("images"), "images")
    if not prompt and not images:
        return None
    kind: Kind = "completion"
    if system or images:
        user = [{"type": "text", "text": prompt}, *images] if images else prompt
        messages = [{"role": "user", "content": user}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        out: dict[str, Any] = {"model": model, "messages": messages, **fields}
        kind = "chat"
    else:
        out = {"model": model, "prompt": prompt, **fields}
        if body.get("suffix"):
            out["suffix"] = body["suffix"]
    return Call(kind=kind, model=model, body=out, stream=stream, api="generate")


def parse_embed(body: Any, *, legacy: bool = False) -> Call:
    """The ``Call`` for ``/api/embed`` (``input``) or ``/api/embeddings`` (``prompt``)."""
    model, _, _ = _common(body)
    field = "prompt" if legacy else "input"
    value = body.get(field)
    if legacy:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(x, str) for x in value)
        )
    if not ok:
        raise _bad(field, "a string" if legacy else "a string or a list of strings")
    out: dict[str, Any] = {"model": model, "input": value}
    if isinstance(body.get("dimensions"), int):
        out["dimensions"] = body["dimensions"]
    api = "embeddings" if legacy else "embed"
    return Call(kind="embeddings", model=model, body=out, stream=False, api=api)


# -- answers -----------------------------------------------------------------------------------


def error_body(err: EdgeError) -> dict[str, Any]:
    return {"error": err.message, **err.extra}


def load_response(api: str, model: str, created_at: str) -> dict[str, Any]:
    """Ollama's answer to a call that only loads the model."""
    out: dict[str, Any] = {"model": model, "created_at": created_at}
    if api == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return {**out, "done": True, "done_reason": "load"}


def _text(body: Mapping[str, Any]) -> tuple[str, str, list[Any]]:
    """(text, finish reason, tool calls) of the first choice of an OpenAI answer."""
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(first, dict):
        first = {}
    message = got if isinstance(got := first.get("message"), dict) else {}
    text = message.get("content") if "message" in first else first.get("text")
    calls = got if isinstance(got := message.get("tool_calls"), list) else []
    finish = "length" if first.get("finish_reason") == "length" else "stop"
    return (text if isinstance(text, str) else ""), finish, calls


def _tool_call_in(call: Any) -> Any:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return call
    try:
        args = orjson.loads(fn.get("arguments") or "{}")
    except (orjson.JSONDecodeError, TypeError):
        args = {}
    return {"function": {"name": fn.get("name"), "arguments": args}}


def _counts(reply: Reply) -> dict[str, Any]:
    body = reply.body or {}
    usage = got if isinstance(got := body.get("usage"), dict) else {}
    out: dict[str, Any] = {
        "prompt_eval_count": usage.get("prompt_tokens", 0),
        "eval_count": usage.get("completion_tokens", 0),
    }
    if reply.timings is not None:
        out["total_duration"] = int(reply.timings.total_ms * 1e6)
        out["load_duration"] = 0
        out["eval_duration"] = int(reply.timings.backend_ms * 1e6)
    return out


def response_body(call: Call, reply: Reply, created_at: str) -> dict[str, Any]:
    """The non-streamed Ollama answer for an ok ``reply``."""
    body = reply.body or {}
    if call.api in ("embed", "embeddings"):
        data = got if isinstance(got := body.get("data"), list) else []
        vectors = [d.get("embedding") for d in data if isinstance(d, dict)]
        if call.api == "embeddings":
            return {"embedding": vectors[0] if vectors else []}
        counts = _counts(reply)
        return {
            "model": call.model,
            "embeddings": vectors,
            "total_duration": counts.get("total_duration", 0),
            "load_duration": 0,
            "prompt_eval_count": counts["prompt_eval_count"],
        }
    text, finish, calls = _text(body)
    out: dict[str, Any] = {"model": call.model, "created_at": created_at}
    if call.api == "chat":
        out["message"] = {"role": "assistant", "content": text}
        if calls:
            out["message"]["tool_calls"] = [_tool_call_in(c) for c in calls]
    else:
        out["response"] = text
    return {**out, "done": True, "done_reason": finish, **_counts(reply)}


def _piece(call: Call, text: str, created_at: str) -> bytes:
    out: dict[str, Any] = {"model": call.model, "created_at": created_at}
    if call.api == "chat":
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    return orjson.dumps({**out, "done": False}) + b"\n"


def relay(call: Call, delta: Mapping[str, Any], created_at: str) -> bytes:
    """One worker chunk as an NDJSON line (nothing for a chunk without text)."""
    text, _, _ = _chunk_text(delta)
    return _piece(call, text, created_at) if text else b""


def _chunk_text(delta: Mapping[str, Any]) -> tuple[str, str, list[Any]]:
    choices = delta.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(first, dict):
        return "", "stop", []
    inner = got if isinstance(got := first.get("delta"), dict) else None
    text = inner.get("content") if inner is not None else first.get("text")
    return (text if isinstance(text, str) else ""), "stop", []


def fallback(call: Call, reply: Reply, created_at: str) -> bytes:
    """The whole answer of a worker that did not stream, as one NDJSON piece."""
    text, _, _ = _text(reply.body or {})
    return _piece(call, text, created_at) if text else b""


def finish(call: Call, reply: Reply, created_at: str) -> bytes:
    """The last NDJSON line of an ok stream: ``done: true`` with the counts."""
    body = response_body(call, reply, created_at)
    if call.api == "chat":
        body["message"] = {"role": "assistant", "content": "", **_tool_calls(body["message"])}
    else:
        body["response"] = ""
    return orjson.dumps(body) + b"\n"


def _tool_calls(message: Mapping[str, Any]) -> dict[str, Any]:
    return {"tool_calls": message["tool_calls"]} if message.get("tool_calls") else {}


def stream_error(err: EdgeError) -> bytes:
    return orjson.dumps(error_body(err)) + b"\n"


def iso_now() -> str:
    """Now, as Ollama writes ``created_at``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


DIALECT = Dialect(
    CONTENT_TYPE,
    error_body,
    lambda c, r: response_body(c, r, iso_now()),
    lambda c, d: relay(c, d, iso_now()),
    lambda c, r: fallback(c, r, iso_now()),
    lambda c, r: finish(c, r, iso_now()),
    stream_error,
)
