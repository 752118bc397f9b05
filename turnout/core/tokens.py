"""Cheap token estimates for routing rules, cost and token rate limits. Pure: no I/O.

No tokenizer: about four characters of text make a token, which is close enough
for English prose on current models to pick a route or charge a bucket. The body
is the client's untrusted OpenAI-style mapping, so every shape that is not
understood counts as zero rather than raising.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 85
"""What one image part counts for (OpenAI's price of a low-detail image)."""
MESSAGE_OVERHEAD_TOKENS = 4
"""Role and separators around each chat message."""
DEFAULT_COMPLETION_TOKENS = 256
"""Assumed completion length when the request sets no ``max_tokens``."""


def estimate_prompt_tokens(kind: str, body: Mapping[str, Any]) -> int:
    """Tokens the backend will read: ``messages`` for chat, ``prompt`` or ``input`` otherwise."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 0
        return sum(_message(m) for m in messages)
    if kind == "completion":
        return _text_or_ids(body.get("prompt"))
    if kind == "embeddings":
        return _text_or_ids(body.get("input"))
    return 0


def estimate_completion_tokens(
    body: Mapping[str, Any], *, kind: str = "chat", default: int = DEFAULT_COMPLETION_TOKENS
) -> int:
    """Tokens the backend may write: ``max_completion_tokens`` or ``max_tokens``, times ``n``.

    Embeddings write none. Used to reserve tokens before the call and to price it.
    """
    if kind == "embeddings":
        return 0
    limit = _positive_int(body.get("max_completion_tokens"))
    if limit is None:
        limit = _positive_int(body.get("max_tokens"))
    n = _positive_int(body.get("n")) or 1
    return (default if limit is None else limit) * n


def _chars(n: int) -> int:
    return -(-n // CHARS_PER_TOKEN)  # ceiling division


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _message(message: object) -> int:
    if not isinstance(message, Mapping):
        return 0
    content = message.get("content")
    tokens = MESSAGE_OVERHEAD_TOKENS
    if isinstance(content, str):
        tokens += _chars(len(content))
    elif isinstance(content, list):
        for part in content:
            tokens += _part(part)
    return tokens


def _part(part: object) -> int:
    if isinstance(part, str):
        return _chars(len(part))
    if not isinstance(part, Mapping):
        return 0
    text = part.get("text")
    if isinstance(text, str):
        return _chars(len(text))
    if part.get("type") in ("image_url", "image", "input_image"):
        return IMAGE_TOKENS
    return 0


def _text_or_ids(value: object) -> int:
    """A string, a list of strings, a list of token ids, or a list of such lists."""
    if isinstance(value, str):
        return _chars(len(value))
    if not isinstance(value, list):
        return 0
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return len(value)
    return sum(_text_or_ids(v) for v in value)
