"""Tools and structured output between OpenAI's shapes (turnout's own) and the Anthropic
and Ollama protocols, both ways; pure functions, tested with tables.

    OpenAI (turnout's body)          Anthropic                      Ollama
    tools [{type: function,          tools [{name, description,     tools: the same OpenAI
      function: {name, description,    input_schema}]                 shape
      parameters}}]
    tool_choice auto | none          {type: auto} | {type: none}    auto: default; none:
                                                                      tools left out
    tool_choice required | {function} {type: any} | {type: tool}    unsupported: 400
    parallel_tool_calls: false       disable_parallel_tool_use      (ignored)
    assistant tool_calls             assistant tool_use blocks      tool_calls [{function:
      (arguments: a JSON string)       (input: an object)             {name, arguments: obj}}]
    role tool messages               user tool_result blocks        role tool (+ tool_name)
    response_format json_schema /    unsupported: 400               format: schema / "json"
      json_object

What a target cannot do raises ``Unsupported`` (a non-retryable 400 naming the
backend, its protocol and the missing feature), never a silent drop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from turnout.errors import BackendStatusError


def unsupported(backend_id: str, protocol: str, what: str, hint: str) -> BackendStatusError:
    """A 400 the client can act on: what the target lacks, and what to do instead."""
    return BackendStatusError(
        f"backend {backend_id!r} speaks the {protocol} protocol, which does not support "
        f"{what}; {hint}",
        backend=backend_id,
        status=400,
    )


def _functions(tools: Any, backend_id: str, protocol: str) -> list[Mapping[str, Any]]:
    if not isinstance(tools, list):
        return []
    out: list[Mapping[str, Any]] = []
    for t in tools:
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            kind = t.get("type") if isinstance(t, dict) else type(t).__name__
            raise unsupported(
                backend_id, protocol, f"tools of type {kind!r}", "send function tools only"
            )
        fn = t.get("function")
        if isinstance(fn, dict):
            out.append(fn)
    return out


def arguments_object(raw: Any) -> Any:
    """A tool call's arguments as an object (OpenAI sends a JSON string)."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_raw": raw}


def arguments_text(obj: Any) -> str:
    """A tool call's arguments as OpenAI's JSON string."""
    return obj if isinstance(obj, str) else orjson.dumps(obj if obj is not None else {}).decode()


def call_id(seed: Any, n: int) -> str:
    """A stable id for a tool call whose protocol has none (Ollama)."""
    digest = hashlib.blake2b(orjson.dumps([seed, n]), digest_size=6).hexdigest()
    return f"call_{digest}"


# -- Anthropic ---------------------------------------------------------------------------------


def anthropic_tools(body: Mapping[str, Any], backend_id: str) -> dict[str, Any]:
    """The Anthropic fields for OpenAI ``tools``, ``tool_choice`` and ``response_format``."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        raise unsupported(
            backend_id,
            "Anthropic Messages",
            f"response_format {fmt['type']}",
            "route JSON-schema output to an openai or ollama backend, or ask for a tool call",
        )
    out: dict[str, Any] = {}
    functions = _functions(body.get("tools"), backend_id, "Anthropic Messages")
    if functions:
        cache = [t.get("cache_control") for t in body.get("tools") or [] if isinstance(t, dict)]
        out["tools"] = [
            {
                "name": fn.get("name"),
                **({"description": fn["description"]} if fn.get("description") else {}),
                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
                **({"cache_control": c} if c is not None else {}),
            }
            for fn, c in zip(functions, cache, strict=False)
        ]
    choice = body.get("tool_choice")
    picked: dict[str, Any] | None = None
    if choice == "auto":
        picked = {"type": "auto"}
    elif choice == "none":
        picked = {"type": "none"}
    elif choice == "required":
        picked = {"type": "any"}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        picked = {"type": "tool", "name": name}
    if functions and body.get("parallel_tool_calls") is False:
        picked = {"type": "auto", **(picked or {}), "disable_parallel_tool_use": True}
    if picked is not None and functions:
        out["tool_choice"] = picked
    return out


def anthropic_message(message: Mapping[str, Any], content: Any) -> dict[str, Any]:
    """One non-system OpenAI message in Anthropic's shape (``content`` already translated)."""
    role = message.get("role")
    if role == "tool":
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": str(message.get("tool_call_id", "")),
            "content": content if content is not None else "",
        }
        return {"role": "user", "content": [block]}
    calls = message.get("tool_calls")
    if role == "assistant" and isinstance(calls, list) and calls:
        blocks: list[Any] = []
        if isinstance(content, str) and content:
            blocks.append({"type": "text", "text": content})
        elif isinstance(content, list):
            blocks.extend(content)
        for c in calls:
            fn = c.get("function") or {} if isinstance(c, dict) else {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": str(c.get("id", "")) if isinstance(c, dict) else "",
                    "name": fn.get("name", ""),
                    "input": arguments_object(fn.get("arguments")),
                }
            )
        return {"role": "assistant", "content": blocks}
    return {"role": role, "content": content}


def merge_turns(messages: list[Any]) -> list[Any]:
    """Anthropic wants user and assistant turns to alternate: consecutive tool results
    (now user turns of blocks) and a user message after them are joined into one turn."""
    out: list[Any] = []
    for m in messages:
        prev = out[-1] if out else None
        if (
            isinstance(m, dict)
            and isinstance(prev, dict)
            and m.get("role") == prev.get("role") == "user"
            and _is_tool_result(prev)
        ):
            prev["content"] = [*_blocks(prev["content"]), *_blocks(m.get("content"))]
            continue
        out.append(m)
    return out


def _is_tool_result(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def _blocks(content: Any) -> list[Any]:
    if isinstance(content, list):
        return list(content)
    return [{"type": "text", "text": content}] if isinstance(content, str) and content else []


def tool_calls_from_anthropic(blocks: Iterable[Any]) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` for Anthropic ``tool_use`` content blocks."""
    return [
        {
            "id": str(b.get("id", "")),
            "type": "function",
            "function": {"name": b.get("name", ""), "arguments": arguments_text(b.get("input"))},
        }
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "tool_use"
    ]


# -- Ollama ------------------------------------------------------------------------------------


def ollama_tools(body: Mapping[str, Any], backend_id: str) -> dict[str, Any]:
    """The Ollama fields for OpenAI ``tools`` and ``tool_choice``."""
    functions = _functions(body.get("tools"), backend_id, "Ollama")
    choice = body.get("tool_choice")
    if not functions or choice == "none":
        return {}
    if choice == "required" or isinstance(choice, dict):
        raise unsupported(
            backend_id,
            "Ollama",
            "a forced tool_choice (required or a named function)",
            "send tool_choice auto, or route to an openai or anthropic backend",
        )
    return {"tools": [{"type": "function", "function": dict(fn)} for fn in functions]}


def ollama_message(
    message: Mapping[str, Any], out: dict[str, Any], names: Mapping[str, str]
) -> None:
    """Add the tool parts of one OpenAI message to its Ollama form ``out``.

    ``names`` maps the tool call ids seen so far to their function names (Ollama's
    tool messages name the tool, not the call).
    """
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        out["tool_calls"] = [
            {
                "function": {
                    "name": (c.get("function") or {}).get("name", ""),
                    "arguments": arguments_object((c.get("function") or {}).get("arguments")),
                }
            }
            for c in calls
            if isinstance(c, dict)
        ]
        if out.get("content") is None:
            out["content"] = ""
    if message.get("role") == "tool":
        name = names.get(str(message.get("tool_call_id", "")))
        if name:
            out["tool_name"] = name


def call_names(messages: Any) -> dict[str, str]:
    """Tool call id -> function name, over every assistant message."""
    out: dict[str, str] = {}
    for m in messages if isinstance(messages, list) else []:
        for c in m.get("tool_calls") or [] if isinstance(m, dict) else []:
            if isinstance(c, dict):
                out[str(c.get("id", ""))] = str((c.get("function") or {}).get("name", ""))
    return out


def tool_calls_from_ollama(calls: Any, seed: Any) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` for Ollama's ``message.tool_calls`` (ids made up, stable)."""
    out = []
    for n, c in enumerate(calls if isinstance(calls, list) else []):
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict):
            out.append(
                {
                    "id": c.get("id") or call_id(seed, n),
                    "type": "function",
                    "function": {
                        "name": fn.get("name", ""),
                        "arguments": arguments_text(fn.get("arguments")),
                    },
                }
            )
    return out


# -- streamed tool calls -----------------------------------------------------------------------


def merge_deltas(acc: dict[int, dict[str, Any]], deltas: Any) -> None:
    """Add streamed ``tool_calls`` deltas to ``acc`` (by index): id, name, argument pieces."""
    for d in deltas if isinstance(deltas, list) else []:
        if not isinstance(d, dict):
            continue
        slot = acc.setdefault(
            d.get("index", len(acc)),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if d.get("id"):
            slot["id"] = d["id"]
        fn = d.get("function") or {}
        if fn.get("name"):
            slot["function"]["name"] = fn["name"]
        if isinstance(fn.get("arguments"), str):
            slot["function"]["arguments"] += fn["arguments"]
