"""Rule matching: the first rule whose conditions all hold picks the route."""

import pytest

from turnout.config import Match, Rule
from turnout.core.rules import match

RULES = [
    Rule(name="batch", route="cheap", match=Match(clients=["batch-1", "batch-2"])),
    Rule(name="private", route="local", match=Match(tags={"data": "private"}), tiers=["local"]),
    Rule(name="urgent", route="fast", match=Match(min_priority=8)),
    Rule(name="bulk", route="cheap", match=Match(max_priority=2)),
    Rule(name="embed", route="embed", match=Match(kinds=["embeddings"])),
    Rule(name="long", route="long", match=Match(min_prompt_tokens=32_000)),
    Rule(name="tiny", route="fast", match=Match(max_prompt_tokens=10, kinds=["chat"])),
]


def request(**over):
    fields = {
        "client_id": "app",
        "metadata": {},
        "priority": 5,
        "kind": "chat",
        "prompt_tokens": 100,
    }
    fields.update(over)
    return fields


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({}, None),
        ({"client_id": "batch-2"}, "batch"),
        ({"client_id": "batch-2", "priority": 9}, "batch"),  # first match wins
        ({"metadata": {"data": "private", "team": "x"}}, "private"),
        ({"metadata": {"data": "public"}}, None),
        ({"metadata": {"team": "private"}}, None),
        ({"priority": 8}, "urgent"),
        ({"priority": 7}, None),
        ({"priority": 2}, "bulk"),
        ({"priority": 3}, None),
        ({"kind": "embeddings"}, "embed"),
        ({"prompt_tokens": 32_000}, "long"),
        ({"prompt_tokens": 31_999}, None),
        ({"prompt_tokens": 10}, "tiny"),
        ({"prompt_tokens": 10, "kind": "completion"}, None),  # every condition must hold
        ({"metadata": {"data": "private"}, "priority": 9}, "private"),
    ],
)
def test_match(over, expected):
    """match returns the first rule, in order, whose conditions all hold."""
    rule = match(RULES, **request(**over))
    assert (None if rule is None else rule.name) == expected


def test_a_rule_without_conditions_matches_everything():
    """An empty match is a catch-all."""
    rules = [Rule(name="all", route="default")]
    assert match(rules, **request(kind="completion", priority=0)) is rules[0]


def test_no_rules_match_nothing():
    """With no rules, nothing matches and the model picks the route."""
    assert match([], **request()) is None
