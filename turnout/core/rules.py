"""Which route a request takes: the first configured rule that matches it. Pure: no I/O.

A rule's ``match`` lists conditions that must all hold; an omitted condition
matches anything. Rules are tried in file order and the first match wins, so
put narrow rules (one client, one tag) before broad ones (every embeddings
request). No match means the request's ``model`` picks the route as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from turnout.config import Match, Rule


def match(
    rules: Sequence[Rule],
    *,
    client_id: str,
    metadata: Mapping[str, str],
    priority: int,
    kind: str,
    prompt_tokens: int,
) -> Rule | None:
    """The first rule in order whose conditions all hold, or None."""
    for rule in rules:
        if matches(
            rule.match,
            client_id=client_id,
            metadata=metadata,
            priority=priority,
            kind=kind,
            prompt_tokens=prompt_tokens,
        ):
            return rule
    return None


def matches(
    m: Match,
    *,
    client_id: str,
    metadata: Mapping[str, str],
    priority: int,
    kind: str,
    prompt_tokens: int,
) -> bool:
    """Whether one rule's conditions all hold for the request."""
    return (
        (m.clients is None or client_id in m.clients)
        and all(metadata.get(k) == v for k, v in m.tags.items())
        and (m.min_priority is None or priority >= m.min_priority)
        and (m.max_priority is None or priority <= m.max_priority)
        and (m.kinds is None or kind in m.kinds)
        and (m.min_prompt_tokens is None or prompt_tokens >= m.min_prompt_tokens)
        and (m.max_prompt_tokens is None or prompt_tokens <= m.max_prompt_tokens)
    )
