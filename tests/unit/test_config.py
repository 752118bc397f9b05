"""The routing config: decoded with defaults, and every problem named at once."""

import pathlib

import pytest

from turnout.config import Client, ConfigError, Cost, Rate, Route, loads

CONFIG_DIR = pathlib.Path(__file__).parents[2] / "config"
ENV = {"OLLAMA_URL": "http://127.0.0.1:11434", "OPENAI_API_KEY": "sk-test", "URL": "http://m"}

BASE = """
backends:
  - {id: loc, protocol: ollama, base_url: "http://l", models: [m], capabilities: [chat]}
  - {id: cld, protocol: openai, base_url: "http://c", models: [m, big], tier: cloud,
     capabilities: [chat, vision]}
routes:
  main: {targets: [{backend: loc, model: m}, {backend: cld, model: m}], fallbacks: [spare]}
  spare: {targets: [{backend: cld, model: m}], policy: first}
"""


def load(extra="", base=BASE):
    return loads(base + extra, env=ENV)


def problems(extra="", base=BASE):
    with pytest.raises(ConfigError) as info:
        load(extra, base)
    return info.value.problems


def test_example_config_loads():
    """config/example.yaml, which documents every field, is itself valid."""
    config = loads((CONFIG_DIR / "example.yaml").read_text(), env=ENV)
    assert [b.id for b in config.backends] == ["ollama", "vllm", "openai"]
    assert config.routes["default"].policy == "local_first"
    assert config.routes["vision"].require == ["vision"]
    assert config.backend("openai").cost == Cost(input_per_mtok=0.15, output_per_mtok=0.60)
    assert config.backend("openai").rate == Rate(requests_per_s=50, tokens_per_min=2_000_000)
    assert config.rules[0].name == "private-data-stays-local"
    assert config.rules[0].tiers == ["local"]
    assert config.client("web-app").max_wait_ms == 250
    assert config.client("someone-else") == config.default_client


@pytest.mark.parametrize("name", ["local.yaml", "docker.yaml"])
def test_shipped_configs_still_load(name):
    """The configs the quick start and compose file use are still valid."""
    loads((CONFIG_DIR / name).read_text(), env={"TURNOUT_MOCK_URL": "http://127.0.0.1:1"})


def test_new_fields_have_defaults():
    """Capabilities, cost, rate, fallbacks, require, rules and clients are all optional."""
    config = loads(
        "backends: [{id: a, protocol: openai, base_url: 'http://a', models: [m]}]", env={}
    )
    a = config.backends[0]
    assert (a.capabilities, a.cost, a.rate, a.weight) == ([], Cost(), Rate(), 1.0)
    assert (config.rules, config.clients, config.default_client) == ([], {}, None)
    route = Route(targets=[])
    assert (route.policy, route.fallbacks, route.require) == ("round_robin", [], [])
    assert config.client("anyone") is None


def test_routes_by_name():
    """route() finds declared routes and implicit model:<name> routes, nothing else."""
    config = load()
    assert config.route("main") is config.routes["main"]
    implicit = config.route("model:big")
    assert implicit is not None
    assert [t.backend for t in implicit.targets] == ["cld"]
    assert config.route("model:nope") is None
    assert config.route("nope") is None
    assert config.resolve("big") == ("model:big", implicit)


def test_client_permissions():
    """A client with allowed_routes may use only those."""
    assert Client(allowed_routes=["main"]).allows("main")
    assert not Client(allowed_routes=["main"]).allows("spare")
    assert Client().allows("anything")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "  bad: {targets: [{backend: ghost, model: m}]}\n",
            "routes[bad]: target backend 'ghost' is not declared (declared: loc, cld)",
        ),
        ("  empty: {targets: []}\n", "routes[empty].targets: the route has no candidates"),
        (
            "  eyes: {targets: [{backend: loc, model: m}], require: [vision]}\n",
            "routes[eyes]: the route has no candidates: no target backend has every "
            "required capability (vision)",
        ),
        (
            "  lost: {targets: [{backend: loc, model: m}], fallbacks: [nowhere]}\n",
            "routes[lost].fallbacks: 'nowhere' is not a route (routes: main, spare, lost; "
            "or 'model:<name>' for a model a backend lists)",
        ),
        (
            "  self: {targets: [{backend: loc, model: m}], fallbacks: [self]}\n",
            "routes[self].fallbacks: the route falls back to itself",
        ),
        (
            "  x: {targets: [{backend: loc, model: m}], fallbacks: [y]}\n"
            "  y: {targets: [{backend: loc, model: m}], fallbacks: [z]}\n"
            "  z: {targets: [{backend: loc, model: m}], fallbacks: [x, main]}\n",
            "routes: fallback cycle x -> y -> z -> x",
        ),
        (
            "rules: [{name: r, route: nowhere}]\n",
            "rules[0:r].route: 'nowhere' is not a route",
        ),
        (
            "rules: [{name: r, route: spare, tiers: [local]}]\n",
            "rules[0:r]: tiers ['local'] leave route 'spare' no candidate (its targets are "
            "cloud); add a target of an allowed tier or change tiers",
        ),
        (
            "rules: [{name: r, route: main}, {name: r, route: spare}]\n",
            "rules: name 'r' is used more than once",
        ),
        (
            "rules: [{name: r, route: main, match: {min_priority: 7, max_priority: 3}}]\n",
            "rules[0:r].match: min_priority 7 > max_priority 3; the rule can never match",
        ),
        (
            "rules: [{name: r, route: main, match: {max_priority: 12}}]\n",
            "rules[0:r].match.max_priority: expected 0 to 9, got 12",
        ),
        (
            "rules: [{name: r, route: main, match: {clients: []}}]\n",
            "rules[0:r].match.clients: the list is empty; omit it to match any",
        ),
        (
            "rules: [{name: r, route: main, match: {min_prompt_tokens: -1}}]\n",
            "rules[0:r].match.min_prompt_tokens: expected a finite number >= 0, got -1",
        ),
        (
            "clients: {c1: {allowed_routes: [main, ghost]}}\n",
            "clients[c1].allowed_routes: 'ghost' is not a route",
        ),
        ("clients: {c1: {requests_per_s: -5}}\n", "clients[c1].requests_per_s: expected a finite"),
        ("clients: {c1: {requests_per_s: 5, burst: 0}}\n", "clients[c1].burst: expected an "),
        ("clients: {c1: {burst: 3}}\n", "clients[c1].burst: set without requests_per_s"),
        ("clients: {c1: {default_priority: 10}}\n", "clients[c1].default_priority: expected 0"),
        ("default_client: {tokens_per_min: 0}\n", "default_client.tokens_per_min: expected a "),
        ("default_route: nope\n", "default_route: 'nope' is not a route (routes: main, spare)"),
    ],
)
def test_each_problem_is_named(extra, expected):
    """check names each kind of problem precisely, with where it is and what to do."""
    found = problems(extra)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("weight: -1", "backends[x].weight: expected a finite number >= 0, got -1"),
        ("cost: {input_per_mtok: -0.5}", "backends[x].cost.input_per_mtok: expected a finite"),
        ("cost: {output_per_mtok: -2}", "backends[x].cost.output_per_mtok: expected a finite"),
        ("rate: {requests_per_s: -1}", "backends[x].rate.requests_per_s: expected a finite"),
        ("rate: {tokens_per_min: 0}", "backends[x].rate.tokens_per_min: expected a finite"),
        ("api_key_env: NOT_SET", "backends[x].api_key_env: environment variable NOT_SET"),
        ("base_url: ftp://x", "backends[x].base_url: expected http:// or https://"),
    ],
)
def test_backend_numbers_are_checked(field, expected):
    """Negative weights, costs and rates are named with the backend and field."""
    base = (
        f"backends:\n  - {{id: x, protocol: openai, base_url: 'http://x', models: [m], {field}}}\n"
    )
    assert any(expected in p for p in problems(base=base)), problems(base=base)


def test_every_problem_is_reported_at_once():
    """One load lists all problems, so one edit fixes them all."""
    found = problems(
        "  bad: {targets: [{backend: ghost, model: m}], fallbacks: [nowhere]}\n"
        "rules: [{name: r, route: gone}]\n"
        "clients: {c1: {requests_per_s: -1, allowed_routes: [nope]}}\n"
        "default_route: ${MISSING}\n"
    )
    assert len(found) == 6, found
    assert found[0] == "environment variable MISSING is referenced as ${MISSING} but not set"


def test_missing_env_var_in_a_url_is_reported_once():
    """An unset variable is named once, not again as a malformed URL."""
    base = "backends: [{id: a, protocol: openai, base_url: '${NOPE}/v1', models: [m]}]"
    assert problems(base=base) == ["environment variable NOPE is referenced as ${NOPE} but not set"]


def test_unknown_fields_are_refused():
    """A misspelt field is an error, not silently ignored."""
    found = problems("clients: {c1: {request_per_s: 5}}\n")
    assert "request_per_s" in found[0]


def test_schema_errors_are_all_named_at_once():
    """An unknown protocol and an unknown policy in one file are both reported, with where."""
    base = """
backends:
  - {id: a, protocol: grpc, base_url: "http://a", models: [m], colour: red}
  - {id: b, protocol: openai, base_url: "http://b", models: [m], max_concurrency: 0}
routes:
  main: {targets: [{backend: a}], policy: fastest}
"""
    found = problems(base=base)
    assert found == [
        "backends[0:a].colour: unknown field (expected one of: id, protocol, base_url, models, "
        "tier, api_key_env, max_concurrency, timeout_ms, first_byte_timeout_ms, "
        "stall_timeout_ms, hang_after_ms, weight, capabilities, cost, rate, probe, "
        "embed_endpoint)",
        "backends[0:a].protocol: expected one of openai, ollama, anthropic, got 'grpc'",
        "backends[1:b].max_concurrency: expected `int` >= 1, got 0",
        "routes[main].targets[0].model: required field is missing",
        "routes[main].policy: expected one of round_robin, weighted, least_connections, "
        "latency, cost, local_first, first, got 'fastest'",
    ]


def test_env_reference_with_a_default_needs_no_variable():
    """``${NAME:-default}`` uses the default when NAME is unset, and NAME when it is set."""
    text = "backends: [{id: a, protocol: openai, base_url: '${U:-http://d:1}', models: [m]}]"
    assert loads(text, env={}).backends[0].base_url == "http://d:1"
    assert loads(text, env={"U": "http://set:2"}).backends[0].base_url == "http://set:2"


def test_quick_start_config_loads_without_the_mock_url():
    """The gateway started after ``scripts/demo`` needs no TURNOUT_MOCK_URL."""
    config = loads((CONFIG_DIR / "local.yaml").read_text(), env={})
    assert {b.base_url for b in config.backends} == {"http://127.0.0.1:8100"}
