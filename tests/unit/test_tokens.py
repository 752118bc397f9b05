"""Token estimates: about four characters a token, never an exception on odd bodies."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.core.tokens import (
    DEFAULT_COMPLETION_TOKENS,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    estimate_completion_tokens,
    estimate_prompt_tokens,
)

M = MESSAGE_OVERHEAD_TOKENS


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        ("chat", {"messages": [{"role": "user", "content": "x" * 400}]}, 100 + M),
        ("chat", {"messages": [{"role": "user", "content": "abcde"}]}, 2 + M),  # rounds up
        (
            "chat",
            {
                "messages": [
                    {"role": "system", "content": "x" * 40},
                    {"role": "user", "content": "y" * 80},
                ]
            },
            10 + 20 + 2 * M,
        ),
        (
            "chat",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "x" * 40},
                            {"type": "image_url", "image_url": {"url": "data:..."}},
                        ],
                    }
                ]
            },
            10 + IMAGE_TOKENS + M,
        ),
        ("chat", {"messages": [{"role": "assistant", "content": None}]}, M),
        ("chat", {"messages": "not a list"}, 0),
        ("chat", {}, 0),
        ("completion", {"prompt": "x" * 40}, 10),
        ("completion", {"prompt": ["x" * 40, "y" * 8]}, 12),
        ("completion", {"prompt": [1, 2, 3]}, 3),  # token ids count as themselves
        ("embeddings", {"input": "x" * 12}, 3),
        ("embeddings", {"input": ["x" * 12, "y" * 4]}, 4),
        ("embeddings", {"input": [[1, 2], [3, 4, 5]]}, 5),
        ("embeddings", {"input": 42}, 0),
        ("unknown", {"prompt": "x" * 40}, 0),
    ],
)
def test_estimate_prompt_tokens(kind, body, expected):
    """The prompt estimate counts characters / 4 over every text the backend reads."""
    assert estimate_prompt_tokens(kind, body) == expected


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        ("chat", {}, DEFAULT_COMPLETION_TOKENS),
        ("chat", {"max_tokens": 100}, 100),
        ("chat", {"max_completion_tokens": 50, "max_tokens": 100}, 50),
        ("chat", {"max_tokens": 100, "n": 3}, 300),
        ("chat", {"max_tokens": 0}, DEFAULT_COMPLETION_TOKENS),
        ("chat", {"max_tokens": "100"}, DEFAULT_COMPLETION_TOKENS),
        ("chat", {"max_tokens": True}, DEFAULT_COMPLETION_TOKENS),
        ("completion", {"max_tokens": 16}, 16),
        ("embeddings", {"max_tokens": 16}, 0),
    ],
)
def test_estimate_completion_tokens(kind, body, expected):
    """The completion estimate is the requested maximum, or a default, times n."""
    assert estimate_completion_tokens(body, kind=kind) == expected


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=10,
)


@settings(max_examples=50)
@given(st.sampled_from(["chat", "completion", "embeddings"]), st.dictionaries(st.text(), JSON))
def test_estimates_never_raise(kind, body):
    """Any JSON body gives non-negative estimates instead of an exception."""
    assert estimate_prompt_tokens(kind, body) >= 0
    assert estimate_completion_tokens(body, kind=kind) >= 0


@given(st.sampled_from(["messages", "prompt", "input"]), JSON)
def test_estimates_never_raise_on_odd_fields(field, value):
    """Odd shapes in the fields that are read count as zero or more, never raise."""
    for kind in ("chat", "completion", "embeddings"):
        assert estimate_prompt_tokens(kind, {field: value}) >= 0
