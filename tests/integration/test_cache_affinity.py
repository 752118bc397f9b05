"""Cache affinity measured on a mock prefix cache: two backend processes that each cache
the prompt prefixes they have seen, multi-turn sessions with a prompt_cache_key, a
round-robin route with and without ``cache_affinity``; then a worker restart.

Prints the hit rates (cached prompt tokens / prompt tokens). Counts, not benchmarks:
the numbers depend only on which backend served each turn."""

import signal

import openai
import pytest

from tests.integration.harness import GatewayProcess, MockBackend, Worker, unique

SESSIONS, TURNS = 5, 5  # an odd count: round robin moves each session every turn


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("affinity")
    mocks = [MockBackend(tmp, "--prefix-cache") for _ in range(2)]
    config = (
        "backends:\n"
        + "".join(
            f"  - {{id: m{i}, protocol: openai, base_url: '{m.url}', models: [echo]}}\n"
            for i, m in enumerate(mocks)
        )
        + (
            "routes:\n"
            "  plain: {targets: [{backend: m0, model: echo}, {backend: m1, model: echo}]}\n"
            "  sticky: {targets: [{backend: m0, model: echo}, {backend: m1, model: echo}],"
            " cache_affinity: true}\n"
        )
    )
    topic = unique("aff.requests")
    worker = Worker(tmp, config, app_id=unique("aff-app"), request_topic=topic)
    gateway = GatewayProcess(tmp, config_path=worker.config_path, request_topic=topic,
                             gateway_id=unique("gw-aff"))  # fmt: skip
    yield worker, gateway
    for p in (gateway, worker, *mocks):
        p.stop()


def run_sessions(client, route: str, turns: int, history: dict) -> tuple[int, int]:
    """Interleaved multi-turn sessions; returns (cached prompt tokens, prompt tokens)."""
    cached = prompt = 0
    for turn in range(turns):
        for s in range(SESSIONS):
            key = f"{route}-session-{s}"
            messages = history.setdefault(key, [
                {"role": "system", "content": f"{key} " + "rule " * 40}])  # fmt: skip
            messages.append({"role": "user", "content": f"turn {turn} of {key}"})
            out = client.chat.completions.create(
                model=route, messages=messages, extra_body={"prompt_cache_key": key}
            )
            messages.append({"role": "assistant", "content": out.choices[0].message.content})
            prompt += out.usage.prompt_tokens
            cached += out.usage.prompt_tokens_details.cached_tokens
    return cached, prompt


def test_affinity_raises_the_prefix_cache_hit_rate_and_survives_a_restart(stack):
    worker, gateway = stack
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0, timeout=60)
    history: dict = {}
    plain = run_sessions(client, "plain", TURNS, history)
    sticky = run_sessions(client, "sticky", TURNS, history)
    plain_rate, sticky_rate = plain[0] / plain[1], sticky[0] / sticky[1]
    print(f"\nprefix-cache hit rate, {SESSIONS} sessions x {TURNS} turns over 2 backends: "
          f"round_robin {plain_rate:.1%} ({plain[0]}/{plain[1]} tokens), "
          f"round_robin + cache_affinity {sticky_rate:.1%} ({sticky[0]}/{sticky[1]})")  # fmt: skip
    assert sticky_rate > plain_rate + 0.1

    worker.kill(signal.SIGTERM)
    worker.start()
    worker.wait_assigned()  # a loaded machine may take longer than the client's timeout
    after = run_sessions(client.with_options(timeout=120), "sticky", 1, history)
    print(f"after a worker restart, next turn: {after[0] / after[1]:.1%} ({after[0]}/{after[1]})")
    # Each session's backend has cached its whole previous prompt: only the last answer
    # ("echo: turn 4 of <key>", 5 words) and the new turn ("turn 5 of <key>", 4) are
    # new to it, as the placement kept across the restart guarantees.
    assert after[1] - after[0] == SESSIONS * (5 + 4)
