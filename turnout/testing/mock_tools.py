"""Tool calls for the mock backend, per wire protocol: deterministic and pure.

A request that offers tools and whose last turn is the user's gets a call of
the forced tool (``tool_choice``) or else the first one, with the arguments
``{"text": <last user text>}``. A request whose last turn is a tool result gets
the text ``"tool result: <result>"``. Requests without tools are not touched
(the mock echoes them as before). The same plan is rendered in OpenAI, Ollama
and Anthropic shapes, whole and as stream pieces, so the gateway's tool
translation can be tested against every backend protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson

Wire = Literal["openai", "ollama", "anthropic"]
CALL_ID = "call_mock_1"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) if isinstance(p, dict) and p.get("type") == "text" else ""
            for p in content
        )
    return ""


def tool_result(wire: Wire, body: Mapping[str, Any]) -> str | None:
    """The tool result the last turn carries, or None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if wire in ("openai", "ollama"):
        return _text(last.get("content")) if last.get("role") == "tool" else None
    content = last.get("content")
    if last.get("role") == "user" and isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                return _text(block.get("content"))
    return None


def tool_call(wire: Wire, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(tool name, arguments) the mock calls, or None when no tool is offered or due."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or tool_result(wire, body) is not None:
        return None
    choice = body.get("tool_choice")
    if wire == "anthropic":
        names = [t.get("name") for t in tools if isinstance(t, dict)]
        forced = choice.get("name") if isinstance(choice, dict) else None
        if isinstance(choice, dict) and choice.get("type") == "none":
            return None
    else:
        names = [(t.get("function") or {}).get("name") for t in tools if isinstance(t, dict)]
        forced = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
        if choice == "none":
            return None
    name = forced or next((n for n in names if isinstance(n, str)), None)
    if name is None:
        return None
    messages = got if isinstance(got := body.get("messages"), list) else []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return name, {"text": _text(users[-1].get("content")) if users else ""}


def openai_message(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": CALL_ID,
                "type": "function",
                "function": {"name": name, "arguments": orjson.dumps(args).decode()},
            }
        ],
    }


def openai_deltas(name: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tool call as OpenAI streams it: id and name first, then the arguments in pieces."""
    raw = orjson.dumps(args).decode()
    half = len(raw) // 2
    first = {"index": 0, "id": CALL_ID, "type": "function",
             "function": {"name": name, "arguments": ""}}  # fmt: skip
    return [
        {"role": "assistant", "content": None, "tool_calls": [first]},
        {"tool_calls": [{"index": 0, "function": {"arguments": raw[:half]}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": raw[half:]}}]},
    ]


def ollama_message(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": name, "arguments": dict(args)}}],
    }


def anthropic_block(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": dict(args)}


def anthropic_events(index: int, name: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
    """content_block_start, two input_json_delta pieces, content_block_stop."""
    raw = orjson.dumps(args).decode()
    half = len(raw) // 2
    start = {**anthropic_block(name, {}), "input": {}}
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *[
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            }
            for piece in (raw[:half], raw[half:])
        ],
        {"type": "content_block_stop", "index": index},
    ]
