"""Streamed backend calls: one backend's streamed answer as OpenAI chunk objects.

``stream_call`` is the streaming sibling of ``HttpBackendClient.call``: it posts a
``stream: true`` request and yields OpenAI ``chat.completion.chunk`` objects (or
``text_completion`` chunks for ``kind="completion"``) as they arrive, from

    openai     server-sent events, ``data: {chunk}`` ... ``data: [DONE]``
    ollama     NDJSON lines, the last one ``done: true``
    anthropic  server-sent events ``message_start`` ... ``message_stop``

A backend that answers with one plain JSON body instead (it ignored ``stream``)
is read whole and yielded as chunks. Failures raise the same ``BackendError``
subclasses as the non-streaming client: connection -> ``BackendUnavailable``,
``timeout_s`` passing (for the whole stream), ``first_byte_s`` passing before the
first line, or ``stall_s`` between two lines -> ``BackendTimeout``, an error
status -> ``BackendStatusError``, anything unreadable or a stream that stops
before its end marker -> ``BackendProtocolError``.

The pure pieces (``SseParser``, ``OllamaTranslator``, ``chunks_from_response``,
``accumulate``) are tested without a network.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp
import orjson

from schemas.types import Kind
from turnout import tracing
from turnout.backends import anthropic, ollama, tools
from turnout.backends.adapters import Adapter, StreamFormat, adapter_for
from turnout.backends.failures import translate
from turnout.backends.http_call import HttpAnswer, check_status, describe, join_url
from turnout.config import Backend, Secret
from turnout.errors import (
    BackendProtocolError,
    BackendStatusError,
    BackendTimeout,
)


async def stream_call(
    session: aiohttp.ClientSession,
    backend: Backend,
    keys: Mapping[str, Secret],
    *,
    kind: Kind,
    model: str,
    body: Mapping[str, Any],
    timeout_s: float,
    first_byte_s: float | None = None,
    stall_s: float | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the OpenAI chunks of ``backend``'s streamed answer; see the module docstring.

    ``kind`` must be ``chat`` or ``completion`` (embeddings do not stream: ValueError).
    ``timeout_s`` bounds the whole stream, first byte to last; ``first_byte_s`` the
    wait for the response and its first line; ``stall_s`` each gap between lines.
    """
    if kind == "embeddings":
        raise ValueError("embeddings do not stream; call BackendClient.call instead")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    first_by = deadline if first_byte_s is None else min(deadline, loop.time() + first_byte_s)
    adapter = adapter_for(backend.protocol)
    try:
        url, payload, headers = _request(adapter, backend, keys, kind, model, body)
        try:
            async with asyncio.timeout_at(first_by):
                response = await session.post(
                    url, data=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=None)
                )
        except TimeoutError:
            if first_by < deadline:
                raise _no_first_byte(backend.id, first_byte_s) from None
            raise
        try:
            if not 200 <= response.status < 300:
                async with asyncio.timeout_at(deadline):
                    raw = await response.read()
                check_status(backend.id, HttpAnswer(response.status, raw, response.headers))
            ctype = response.headers.get("Content-Type", "")
            # An NDJSON stream may be labelled JSON; an SSE stream never is.
            if adapter.stream_format != "ndjson" and ctype.startswith("application/json"):
                async with asyncio.timeout_at(deadline):
                    raw = await response.read()
                whole = adapter.parse(kind, backend.id, response.status, raw, response.headers)
                for chunk in chunks_from_response(kind, whole):
                    yield chunk
                return
            lines = _lines(response.content, deadline, backend.id, first_by, first_byte_s, stall_s)
            chunks = _DECODERS[adapter.stream_format](kind, backend.id, lines)
            async for chunk in chunks:
                yield chunk
        finally:
            response.release()
    except Exception as exc:
        raise translate(exc, backend.id, timeout_s, streaming=True) from None


def _request(
    adapter: Adapter,
    backend: Backend,
    keys: Mapping[str, Secret],
    kind: Kind,
    model: str,
    body: Mapping[str, Any],
) -> tuple[str, bytes, dict[str, str]]:
    key = keys.get(backend.id)
    call = adapter.plan_stream(backend, kind, model, body)
    headers = {"Content-Type": "application/json", "Accept": adapter.stream_accept}
    headers.update(adapter.auth(None if key is None else key.reveal()))
    tracing.inject(headers)
    return join_url(backend.base_url, call.path), orjson.dumps(call.json), headers


async def _lines(
    content: aiohttp.StreamReader,
    deadline: float,
    backend_id: str = "",
    first_by: float | None = None,
    first_byte_s: float | None = None,
    stall_s: float | None = None,
) -> AsyncIterator[bytes]:
    """The stream's lines: the first by ``first_by``, each next within ``stall_s``."""
    loop = asyncio.get_running_loop()
    limit = deadline if first_by is None else min(first_by, deadline)
    read = 0
    while True:
        try:
            async with asyncio.timeout_at(limit):
                line = await content.readline()
        except TimeoutError:
            if limit >= deadline:
                raise
            if read == 0:
                raise _no_first_byte(backend_id, first_byte_s) from None
            raise BackendTimeout(
                f"backend {backend_id!r} stalled mid-stream: nothing for {stall_s:g} s after "
                f"{read} line(s) (stall_timeout_ms); it may be wedged",
                backend=backend_id,
                limit="stall",
            ) from None
        if not line:
            return
        read += 1
        limit = deadline if stall_s is None else min(deadline, loop.time() + stall_s)
        yield line


def _no_first_byte(backend_id: str, first_byte_s: float | None) -> BackendTimeout:
    return BackendTimeout(
        f"backend {backend_id!r} did not start answering within {first_byte_s:g} s "
        "(first_byte_timeout_ms); it may be overloaded or wedged",
        backend=backend_id,
        limit="first_byte",
    )


# -- the three wire formats --------------------------------------------------------------------


class SseParser:
    """Server-sent events, line by line: ``feed`` returns ``(event, data)`` when one is complete."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def __repr__(self) -> str:
        return f"<SseParser event={self._event!r} pending_lines={len(self._data)}>"

    def feed(self, raw: bytes) -> tuple[str, str] | None:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = ""
                return None
            out = (self._event, "\n".join(self._data))
            self._event, self._data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def flush(self) -> tuple[str, str] | None:
        """The last event of a stream that ended without a blank line."""
        return self.feed(b"")


def _json(backend_id: str, what: str, text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BackendProtocolError(
            f"backend {backend_id!r} sent a {what} that is not JSON", backend=backend_id
        ) from None


async def _sse_events(lines: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, str]]:
    parser = SseParser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
    last = parser.flush()
    if last is not None:
        yield last


async def _openai_chunks(
    kind: Kind, backend_id: str, lines: AsyncIterator[bytes]
) -> AsyncIterator[dict[str, Any]]:
    finished = False
    async for _, data in _sse_events(lines):
        if data.strip() == "[DONE]":
            if not finished:
                # llama-cpp-python's server does this when another request waits
                # (its default interrupt_requests): [DONE] mid-answer, no finish_reason.
                raise BackendProtocolError(
                    f"backend {backend_id!r} sent [DONE] before any choice had a "
                    "finish_reason; the answer is incomplete (cut short by the server)",
                    backend=backend_id,
                )
            return
        obj = _json(backend_id, "stream event", data)
        if not isinstance(obj, dict):
            raise BackendProtocolError(
                f"backend {backend_id!r} sent a stream event that is {describe(obj)}, "
                "not a chunk object",
                backend=backend_id,
            )
        if "error" in obj:
            raise _stream_error(backend_id, obj["error"])
        if not isinstance(obj.get("choices"), list):
            raise BackendProtocolError(
                f"backend {backend_id!r} sent a stream event with no choices list "
                f"(got {describe(obj)})",
                backend=backend_id,
            )
        finished = finished or any(
            isinstance(c, dict) and c.get("finish_reason") for c in obj["choices"]
        )
        yield obj
    if not finished:
        raise _cut_short(backend_id, "data: [DONE]")


async def _anthropic_chunks(
    kind: Kind, backend_id: str, lines: AsyncIterator[bytes]
) -> AsyncIterator[dict[str, Any]]:
    translator = anthropic.StreamTranslator(kind, backend_id)
    async for event, data in _sse_events(lines):
        for chunk in translator.feed(event, _json(backend_id, f"{event or 'stream'} event", data)):
            yield chunk
        if translator.done:
            return
    raise _cut_short(backend_id, "message_stop")


async def _ollama_chunks(
    kind: Kind, backend_id: str, lines: AsyncIterator[bytes]
) -> AsyncIterator[dict[str, Any]]:
    translator = OllamaTranslator(kind, backend_id)
    async for line in lines:
        if not line.strip():
            continue
        for chunk in translator.feed(_json(backend_id, "stream line", line)):
            yield chunk
        if translator.done:
            return
    raise _cut_short(backend_id, 'a line with "done": true')


_Decoder = Callable[[Kind, str, AsyncIterator[bytes]], AsyncIterator[dict[str, Any]]]
_DECODERS: dict[StreamFormat, _Decoder] = {
    "sse": _openai_chunks,
    "anthropic_sse": _anthropic_chunks,
    "ndjson": _ollama_chunks,
}
"""A stream's OpenAI chunks, by the wire format of the backend's adapter."""


class OllamaTranslator:
    """Turns Ollama's streamed NDJSON objects into OpenAI chunks; pure, one per call."""

    def __init__(self, kind: Kind, backend_id: str) -> None:
        self.kind = kind
        self.backend_id = backend_id
        self.id = ""
        self.created = 0
        self.model = ""
        self.done = False
        self._sent_role = False
        self._tool_calls = 0

    def __repr__(self) -> str:
        return f"<OllamaTranslator kind={self.kind} done={self.done}>"

    def feed(self, obj: Any) -> list[dict[str, Any]]:
        if not isinstance(obj, dict):
            raise BackendProtocolError(
                f"backend {self.backend_id!r} sent a stream line that is {describe(obj)}, "
                "not an object",
                backend=self.backend_id,
            )
        if "error" in obj:
            raise _stream_error(self.backend_id, obj["error"])
        if not self.id:
            seed = orjson.dumps([obj.get("model"), obj.get("created_at")])
            self.id = hashlib.blake2b(seed, digest_size=12).hexdigest()
            self.created = ollama._epoch_s(obj.get("created_at"))
        self.model = got if isinstance(got := obj.get("model"), str) else ""
        if self.kind == "chat":
            message = obj.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            field = "message.content"
        else:
            text = obj.get("response")
            field = "response"
        if not isinstance(text, str):
            raise BackendProtocolError(
                f"backend {self.backend_id!r} sent a stream line with no {field} "
                f"(got {describe(obj)})",
                backend=self.backend_id,
            )
        out = [self._chunk(text, None)] if text or not self._sent_role else []
        message = obj.get("message") if self.kind == "chat" else None
        if isinstance(message, dict) and message.get("tool_calls"):
            found = tools.tool_calls_from_ollama(message["tool_calls"], [self.id, self._tool_calls])
            deltas = [{"index": self._tool_calls + n, **c} for n, c in enumerate(found)]
            self._tool_calls += len(found)
            chunk = self._chunk("", None)
            chunk["choices"][0]["delta"] = {"tool_calls": deltas}
            out.append(chunk)
        if obj.get("done") is True:
            self.done = True
            finish = "length" if obj.get("done_reason") == "length" else "stop"
            finish = "tool_calls" if self._tool_calls else finish
            last = self._chunk("", finish)
            prompt = _count(obj.get("prompt_eval_count"))
            completion = _count(obj.get("eval_count"))
            last["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            out.append(last)
        return out

    def _chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        head = {"created": self.created, "model": self.model}
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": text} if text or finish is None else {}
            if not self._sent_role:
                delta = {"role": "assistant", **delta}
                self._sent_role = True
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            shape = {"id": "chatcmpl-" + self.id, "object": "chat.completion.chunk"}
            return {**shape, **head, "choices": [choice]}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {"id": "cmpl-" + self.id, "object": "text_completion", **head, "choices": [choice]}


# -- whole responses and chunks ----------------------------------------------------------------


def chunks_from_response(kind: Kind, response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A whole chat/completion response as the chunks a stream of it would have sent.

    One content chunk per choice, then one finish chunk per choice carrying the usage.
    """
    head = {k: response[k] for k in ("id", "created", "model") if k in response}
    choices = response.get("choices")
    choices = [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []
    out: list[dict[str, Any]] = []
    if kind == "chat":
        head["object"] = "chat.completion.chunk"
        for i, c in enumerate(choices):
            message = got if isinstance(got := c.get("message"), dict) else {}
            delta = {"role": message.get("role", "assistant"), "content": message.get("content")}
            if message.get("tool_calls"):
                delta["tool_calls"] = [
                    {"index": n, **call} for n, call in enumerate(message["tool_calls"])
                ]
            first = {"index": c.get("index", i), "delta": delta, "finish_reason": None}
            out.append({**head, "choices": [first]})
        for i, c in enumerate(choices):
            last = {
                "index": c.get("index", i),
                "delta": {},
                "finish_reason": c.get("finish_reason"),
            }
            out.append({**head, "choices": [last]})
    else:
        head["object"] = "text_completion"
        for i, c in enumerate(choices):
            text = {"index": c.get("index", i), "text": c.get("text", ""), "logprobs": None}
            out.append({**head, "choices": [{**text, "finish_reason": None}]})
        for i, c in enumerate(choices):
            end = {"index": c.get("index", i), "text": "", "logprobs": None}
            out.append({**head, "choices": [{**end, "finish_reason": c.get("finish_reason")}]})
    if out and isinstance(response.get("usage"), dict):
        out[-1]["usage"] = response["usage"]
    return out


def accumulate(kind: Kind, chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The whole chat/completion response that a list of chunks adds up to.

    For the dispatcher: the final ``Reply`` of a streamed request carries this body.
    """
    head: dict[str, Any] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    texts: dict[int, list[str]] = {}
    roles: dict[int, str] = {}
    finish: dict[int, Any] = {}
    usage: Any = None
    for chunk in chunks:
        for k in ("id", "created", "model"):
            head.setdefault(k, chunk.get(k))
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            i = c.get("index", 0)
            if kind == "chat":
                delta = c.get("delta") or {}
                if delta.get("role"):
                    roles[i] = delta["role"]
                piece = delta.get("content")
                if delta.get("tool_calls"):
                    tools.merge_deltas(calls.setdefault(i, {}), delta["tool_calls"])
            else:
                piece = c.get("text")
            if isinstance(piece, str):
                texts.setdefault(i, []).append(piece)
            if c.get("finish_reason"):
                finish[i] = c["finish_reason"]
    choices = []
    for i in sorted(set(texts) | set(finish) | set(roles) | set(calls)):
        text = "".join(texts.get(i, []))
        if kind == "chat":
            message: dict[str, Any] = {"role": roles.get(i, "assistant"), "content": text}
            if calls.get(i):
                message["tool_calls"] = [calls[i][n] for n in sorted(calls[i])]
                message["content"] = text or None
            body: dict[str, Any] = {"message": message}
        else:
            body = {"text": text, "logprobs": None}
        choices.append({"index": i, **body, "finish_reason": finish.get(i, "stop")})
    out = {
        "id": head.get("id") or "",
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": head.get("created") or 0,
        "model": head.get("model") or "",
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage
    return out


# -- errors ------------------------------------------------------------------------------------


def _stream_error(backend_id: str, error: Any) -> BackendStatusError:
    """A backend's error event mid-stream; 500 (retryable) unless it names a 4xx status."""
    status = 500
    code = ""
    if isinstance(error, dict):
        raw = error.get("code") or error.get("type") or ""
        code = raw[:64] if isinstance(raw, str) and raw.isidentifier() else ""
        if isinstance(error.get("status"), int) and 400 <= error["status"] < 600:
            status = error["status"]
    detail = f" ({code})" if code else ""
    return BackendStatusError(
        f"backend {backend_id!r} reported an error mid-stream{detail}; "
        "it may succeed later or on another backend",
        backend=backend_id,
        status=status,
    )


def _cut_short(backend_id: str, expected: str) -> BackendProtocolError:
    return BackendProtocolError(
        f"backend {backend_id!r} ended the stream before its end marker (expected {expected}); "
        "the answer is incomplete",
        backend=backend_id,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
