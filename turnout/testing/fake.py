"""A scripted ``BackendClient`` for tests, and the deterministic answers it shares with the mock.

``ScriptedBackendClient`` plays, per backend id, a list of steps: an exception to
raise, ``"ok"`` for a deterministic OpenAI-shaped answer, or a dict to return as
is. When a backend's steps run out (or it has none), every call answers ``"ok"``::

    fake = ScriptedBackendClient({"b1": [BackendUnavailable("down", backend="b1"), "ok"]})

A script may also be a callable that gets the ``Call`` and returns a step.

"ok" answers echo the request: chat content is ``"echo: <last user message>"``,
a completion is ``"echo: <prompt>"``, and an embedding is an 8-float vector
derived from a hash of its input. ``turnout.testing.mock_backend`` answers the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import orjson

from schemas.types import Kind
from turnout.backends.ollama import flatten
from turnout.config import Backend
from turnout.errors import BackendTimeout


class Call(NamedTuple):
    backend_id: str
    kind: Kind
    model: str
    body: Mapping[str, Any]


Step = BaseException | Literal["ok"] | dict[str, Any]
Script = Sequence[Step] | Callable[[Call], Step]


class ScriptedBackendClient:
    """Follows a per-backend script, records every call, optionally sleeps ``delay_s`` first.

    A delay longer than the call's ``timeout_s`` raises ``BackendTimeout`` after ``timeout_s``.
    """

    def __init__(
        self,
        script: Mapping[str, Script] | None = None,
        *,
        delay_s: float | Mapping[str, float] = 0.0,
    ) -> None:
        self._script = dict(script or {})
        self._delay_s = delay_s
        self._played: Counter[str] = Counter()
        self.calls: list[Call] = []
        self.closed = False

    def __repr__(self) -> str:
        counts = dict(Counter(c.backend_id for c in self.calls))
        return f"<ScriptedBackendClient calls={counts} closed={self.closed}>"

    def calls_to(self, backend_id: str) -> list[Call]:
        return [c for c in self.calls if c.backend_id == backend_id]

    async def call(
        self,
        backend: Backend,
        *,
        kind: Kind,
        model: str,
        body: Mapping[str, Any],
        timeout_s: float,
        first_byte_s: float | None = None,
    ) -> dict[str, Any]:
        call = Call(backend.id, kind, model, body)
        self.calls.append(call)
        step = self._next_step(call)
        delay = self._delay_for(backend.id)
        if delay > timeout_s:
            await asyncio.sleep(timeout_s)
            raise BackendTimeout(
                f"backend {backend.id!r} did not answer within {timeout_s:g} s (scripted delay)",
                backend=backend.id,
            )
        if delay > 0:
            await asyncio.sleep(delay)
        if isinstance(step, BaseException):
            raise step
        if step == "ok":
            return openai_response(kind, model, body)
        return step

    async def stream(
        self,
        backend: Backend,
        *,
        kind: Kind,
        model: str,
        body: Mapping[str, Any],
        timeout_s: float,
        first_byte_s: float | None = None,
        stall_s: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The scripted answer as chunks; a scripted error is raised before the first."""
        from turnout.backends.streaming import chunks_from_response

        response = await self.call(backend, kind=kind, model=model, body=body, timeout_s=timeout_s)
        for chunk in chunks_from_response(kind, response):
            yield chunk

    async def close(self) -> None:
        self.closed = True

    def _next_step(self, call: Call) -> Step:
        script = self._script.get(call.backend_id, ())
        if callable(script):
            return script(call)
        index = self._played[call.backend_id]
        self._played[call.backend_id] += 1
        return script[index] if index < len(script) else "ok"

    def _delay_for(self, backend_id: str) -> float:
        if isinstance(self._delay_s, Mapping):
            return self._delay_s.get(backend_id, 0.0)
        return self._delay_s


# -- deterministic answers, shared with turnout.testing.mock_backend ---------------------------


def echo_content(kind: Kind, body: Mapping[str, Any]) -> str:
    """``"echo: "`` + the last user message (chat) or the prompt (completion)."""
    return "echo: " + _input_text(kind, body)


def prompt_words(kind: Kind, body: Mapping[str, Any]) -> int:
    """The prompt's size in words (the fake's unit of tokens)."""
    if kind == "chat":
        return sum(count_words(flatten(m.get("content"))) for m in _messages(body))
    if kind == "completion":
        return count_words(_input_text(kind, body))
    return sum(count_words(x) for x in embedding_inputs(body))


def _input_text(kind: Kind, body: Mapping[str, Any]) -> str:
    if kind == "chat":
        users = [m for m in _messages(body) if m.get("role") == "user"]
        text = flatten(users[-1].get("content")) if users else ""
    else:
        prompt = body.get("prompt")
        text = prompt[0] if isinstance(prompt, list) and prompt else prompt
    return text if isinstance(text, str) else ""


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def count_words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def limit_words(text: str, limit: Any) -> tuple[str, str]:
    """``text`` cut to ``limit`` words, and the finish reason (``length`` when cut)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        return text, "stop"
    words = text.split(" ")
    if len(words) <= limit:
        return text, "stop"
    return " ".join(words[:limit]), "length"


def embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    """Each input of an embeddings body as a string (token arrays as their JSON)."""
    raw = body.get("input", body.get("prompt"))
    items = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    return [x if isinstance(x, str) else orjson.dumps(x).decode() for x in items]


def vector(text: str) -> list[float]:
    """8 floats in [-1, 1) derived from a hash of ``text``: same text, same vector."""
    digest = hashlib.blake2b(text.encode(), digest_size=32).digest()
    return [
        round(int.from_bytes(digest[i : i + 4], "big") / 2**31 - 1.0, 6) for i in range(0, 32, 4)
    ]


def openai_response(
    kind: Kind, model: str, body: Mapping[str, Any], *, created: int = 0
) -> dict[str, Any]:
    """The deterministic OpenAI-shaped answer to ``body``."""
    prompt_tokens = prompt_words(kind, body)
    if kind == "embeddings":
        data = [
            {"object": "embedding", "index": i, "embedding": vector(x)}
            for i, x in enumerate(embedding_inputs(body))
        ]
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return {"object": "list", "data": data, "model": model, "usage": usage}
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    text, finish = limit_words(echo_content(kind, body), limit)
    digest = hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=8)
    if kind == "chat":
        choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
        id_, shape = "chatcmpl-" + digest.hexdigest(), "chat.completion"
    else:
        choice = {"text": text, "logprobs": None}
        id_, shape = "cmpl-" + digest.hexdigest(), "text_completion"
    completion_tokens = count_words(text)
    return {
        "id": id_,
        "object": shape,
        "created": created,
        "model": model,
        "choices": [{"index": 0, **choice, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
