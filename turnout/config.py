"""The routing configuration: backends, routes, rules and clients, from one YAML file.

The file is decoded into frozen types in one validating pass, ``${ENV}``
references are expanded, and then every cross-reference and range is checked.
All problems are reported at once, each naming where it is and how to fix it.
``config/example.yaml`` documents every field; the smallest useful file is::

    backends:
      - id: local
        protocol: openai            # openai | ollama | anthropic
        base_url: http://127.0.0.1:11434
        models: [llama3.2]
    routes:
      default:
        targets: [{backend: local, model: llama3.2}]
    default_route: default
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

from turnout.errors import StartupError

Protocol = Literal["openai", "ollama", "anthropic"]
Tier = Literal["local", "cloud"]
Kind = Literal["chat", "completion", "embeddings"]
Policy = Literal[
    "round_robin", "weighted", "least_connections", "latency", "cost", "local_first", "first"
]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_IMPLICIT = "model:"
_REGION = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
"""A region name (as ``turnout.core.region_state.REGION_NAME``)."""


class ConfigError(StartupError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    code = "invalid_config"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


class Secret:
    """A value that must never be printed: repr and str hide it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class Cost(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Price in currency units per million tokens; used by the ``cost`` policy."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0


class Probe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the prober checks a backend: cheap, since a probe is a real request."""

    every: Annotated[int, msgspec.Meta(ge=1)] = 1
    """Probe on every Nth round only (a paid cloud backend: e.g. 12 = once a minute)."""
    model: str | None = None
    """The model to probe; default: the backend's first model."""
    kind: Literal["chat", "embeddings"] = "chat"
    """A one-token chat, or a one-word embedding for embedding-only servers."""


class Rate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A backend's own caps; None means uncapped."""

    requests_per_s: float | None = None
    tokens_per_min: float | None = None


class Backend(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    protocol: Protocol
    base_url: str
    models: list[str]
    tier: Tier = "local"
    api_key_env: str | None = None
    max_concurrency: Annotated[int, msgspec.Meta(gt=0)] = 64
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] = 120_000
    """The longest one call may take; shorter once its latency is known (health/timeouts)."""
    first_byte_timeout_ms: Annotated[int, msgspec.Meta(gt=0)] | None = None
    """Until the response (a stream's first chunk) starts; None derives it from latency."""
    stall_timeout_ms: Annotated[int, msgspec.Meta(gt=0)] | None = None
    """Longest gap between a stream's chunks; None derives it from latency."""
    hang_after_ms: Annotated[int, msgspec.Meta(gt=0)] | None = None
    """How long calls may go with nothing completed before the backend counts as hung
    (at least; 3 x p99 if longer). None: 3 s. Raise it for a one-slot server whose
    plain (unstreamed) answers can legitimately take longer (turnout.health.hang)."""
    weight: float = 1.0
    """Share for the ``weighted`` policy; 0 means only when no weighted backend is open."""
    capabilities: list[str] = []
    """Free-form, e.g. chat, embeddings, vision, long-context; routes may ``require`` them."""
    cost: Cost = Cost()
    rate: Rate = Rate()
    probe: Probe = Probe()
    embed_endpoint: Literal["embed", "embeddings"] = "embed"
    """Ollama only: ``/api/embed`` (batch, current) or ``/api/embeddings`` (older servers)."""

    def api_key(self, env: Mapping[str, str]) -> Secret | None:
        if self.api_key_env is None:
            return None
        return Secret(env[self.api_key_env])


class Target(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    backend: str
    model: str


class RegionTarget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Another region as a target: written ``{region: eu}`` among a route's targets.

    Used only when no local target can serve in time, and only while that region's
    synced state is fresh and shows spare capacity (cross-region spillover,
    ``turnout/spillover.py``). ``model``: the route or model to ask for there
    (default: the request's own model)."""

    region: str
    model: str | None = None


class Route(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    targets: list[Target]
    """Local backends. ``{region: X}`` entries are moved to ``regions`` when loading."""
    regions: list[RegionTarget] = []
    """Other regions to spill over to, in order of preference."""
    policy: Policy = "round_robin"
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 2
    fallbacks: list[str] = []
    """Other routes, in order, tried when this one cannot serve (degraded mode)."""
    require: list[str] = []
    """Capabilities a backend must have to be a candidate."""
    cache_affinity: bool = False
    """Requests sharing a ``prompt_cache_key`` (else ``metadata.session``) go to the
    backend that served that key last, while it can serve (``turnout/core/affinity.py``)."""
    retry_budget: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    """Retries of calls that reached a backend may add at most this share of the
    route's requests (plus a reserve of 10), so retries cannot multiply an overload."""


class Match(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Conditions of a rule; all given ones must hold. An omitted condition matches anything."""

    clients: list[str] | None = None
    tags: dict[str, str] = {}
    """Each key must be in the request's ``metadata`` with exactly this value."""
    min_priority: int | None = None
    max_priority: int | None = None
    kinds: list[Kind] | None = None
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    route: str
    match: Match = Match()
    tiers: list[Tier] | None = None
    """Restricts every candidate backend, fallbacks included, to these tiers."""


class Client(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits and permissions of one client; None means unlimited / unrestricted."""

    requests_per_s: float | None = None
    burst: int | None = None
    """Requests allowed at once after idling; default ``ceil(requests_per_s)``."""
    tokens_per_min: float | None = None
    token_burst: int | None = None
    """Tokens allowed at once after idling; default ``tokens_per_min``."""
    max_wait_ms: int | None = None
    """A request over the limit is delayed up to this long instead of being rejected;
    None: as long as the request's deadline allows."""
    allowed_routes: list[str] | None = None
    default_priority: int = 5
    """The priority (0 to 9) of this client's requests that set none."""

    def allows(self, route_name: str) -> bool:
        return self.allowed_routes is None or route_name in self.allowed_routes


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    backends: list[Backend]
    routes: dict[str, Route] = {}
    default_route: str | None = None
    rules: list[Rule] = []
    """Tried in order; the first whose ``match`` holds picks the route."""
    clients: dict[str, Client] = {}
    default_client: Client | None = None
    """Applies to every client not listed in ``clients``; None means unlimited."""

    def backend(self, backend_id: str) -> Backend:
        for b in self.backends:
            if b.id == backend_id:
                return b
        raise KeyError(backend_id)

    def client(self, client_id: str) -> Client | None:
        """The client's own block, else ``default_client``."""
        return self.clients.get(client_id, self.default_client)

    def route(self, name: str) -> Route | None:
        """A route by name: a declared one or an implicit ``model:<name>``."""
        if name in self.routes:
            return self.routes[name]
        if name.startswith(_IMPLICIT):
            model = name[len(_IMPLICIT) :]
            targets = [
                Target(backend=b.id, model=model) for b in self.backends if model in b.models
            ]
            if targets:
                return Route(targets=targets)
        return None

    def resolve(self, model: str) -> tuple[str, Route] | None:
        """Map a request's ``model`` to (route name, route), or None if nothing serves it.

        A route alias wins; otherwise every backend that lists the model is a target,
        in file order, on an implicit route named ``model:<name>``.
        """
        if model == "default" and self.default_route is not None:
            model = self.default_route
        route = self.routes.get(model)
        if route is not None:
            return model, route
        name = f"{_IMPLICIT}{model}"
        route = self.route(name)
        return None if route is None else (name, route)

    def model_names(self) -> list[str]:
        names = list(self.routes)
        for b in self.backends:
            names.extend(m for m in b.models if m not in names)
        return names


def _expand_env(text: str, env: Mapping[str, str], problems: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name not in env and default is not None:
            return default  # ${NAME:-default}, as in a shell
        if name not in env:
            problems.append(f"environment variable {name} is referenced as ${{{name}}} but not set")
            return m.group(0)  # left as is, so the rest of the file is still checked
        return env[name]

    return _ENV_REF.sub(sub, text)


def schema_problems(raw: Any) -> list[str]:
    """Every place where the decoded YAML ``raw`` does not fit ``Config``, in file order.

    msgspec reports only the first; this walks structs field by field (unknown
    fields, missing fields, wrong values) so that one run of ``turnout config
    check`` names them all.
    """
    problems: list[str] = []
    _walk(raw, Config, "", problems)
    return problems


def _walk(value: Any, typ: Any, where: str, problems: list[str]) -> None:
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
        _walk_struct(value, typ, where, problems)
        return
    origin, args = get_origin(typ), get_args(typ)
    if origin is list and args and isinstance(value, list):
        for i, item in enumerate(value):
            label = item.get("id") or item.get("name") if isinstance(item, dict) else None
            _walk(item, args[0], f"{where}[{i}{':' + str(label) if label else ''}]", problems)
        return
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        for key, item in value.items():
            _walk(item, args[1], f"{where}[{key}]", problems)
        return
    try:
        msgspec.convert(value, typ)
    except msgspec.ValidationError as exc:
        problems.append(f"{where}: {_explain(typ, value, exc)}")


def _walk_struct(value: Any, cls: type[msgspec.Struct], where: str, problems: list[str]) -> None:
    prefix = f"{where}." if where else ""
    if not isinstance(value, dict):
        problems.append(f"{where or 'the file'}: expected a mapping, got {value!r}")
        return
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    for key in value:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown field (expected one of: {', '.join(fields)})")
    for name, field in fields.items():
        if name in value:
            _walk(value[name], field.type, prefix + name, problems)
        elif field.required:
            problems.append(f"{prefix}{name}: required field is missing")


def _explain(typ: Any, value: Any, exc: msgspec.ValidationError) -> str:
    """What was expected and what arrived; Literal types list their allowed values."""
    if get_origin(typ) is Literal:
        allowed = ", ".join(str(a) for a in get_args(typ))
        return f"expected one of {allowed}, got {value!r}"
    detail = str(exc)
    return f"{detail[0].lower()}{detail[1:]}, got {value!r}" if detail else f"got {value!r}"


def check(config: Config, env: Mapping[str, str]) -> list[str]:
    """Every cross-reference and range problem in ``config``, as messages a person can act on."""
    problems: list[str] = []
    _check_backends(config, env, problems)
    _check_routes(config, problems)
    _check_rules(config, problems)
    for cid, c in config.clients.items():
        _check_client(config, f"clients[{cid}]", c, problems)
    if config.default_client is not None:
        _check_client(config, "default_client", config.default_client, problems)
    return problems


def _non_negative(where: str, value: float | None, problems: list[str]) -> None:
    if value is not None and not (value >= 0 and math.isfinite(value)):
        problems.append(f"{where}: expected a finite number >= 0, got {value}")


def _positive(where: str, value: float | None, problems: list[str]) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        problems.append(
            f"{where}: expected a finite number > 0 (omit it for no limit), got {value}"
        )


def _check_backends(config: Config, env: Mapping[str, str], problems: list[str]) -> None:
    ids = [b.id for b in config.backends]
    if not config.backends:
        problems.append("backends: the list is empty; declare at least one backend")
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"backends: id {dup!r} is declared more than once")
    for b in config.backends:
        where = f"backends[{b.id}]"
        if not b.base_url.startswith(("http://", "https://")):
            problems.append(f"{where}.base_url: expected http:// or https://, got {b.base_url!r}")
        if not b.models:
            problems.append(f"{where}.models: the list is empty; name the models it serves")
        if b.api_key_env is not None and b.api_key_env not in env:
            problems.append(f"{where}.api_key_env: environment variable {b.api_key_env} is not set")
        _non_negative(f"{where}.weight", b.weight, problems)
        _non_negative(f"{where}.cost.input_per_mtok", b.cost.input_per_mtok, problems)
        _non_negative(f"{where}.cost.output_per_mtok", b.cost.output_per_mtok, problems)
        _positive(f"{where}.rate.requests_per_s", b.rate.requests_per_s, problems)
        _positive(f"{where}.rate.tokens_per_min", b.rate.tokens_per_min, problems)


def _route_names(config: Config) -> str:
    return ", ".join(config.routes) or "none"


def _unknown_route(config: Config, where: str, name: str, problems: list[str]) -> bool:
    if config.route(name) is not None:
        return False
    problems.append(
        f"{where}: {name!r} is not a route (routes: {_route_names(config)}; "
        f"or 'model:<name>' for a model a backend lists)"
    )
    return True


def _check_routes(config: Config, problems: list[str]) -> None:
    known = {b.id: b for b in config.backends}
    for name, route in config.routes.items():
        where = f"routes[{name}]"
        for t in route.targets:
            if t.backend not in known:
                problems.append(
                    f"{where}: target backend {t.backend!r} is not declared "
                    f"(declared: {', '.join(known) or 'none'})"
                )
        able = [
            t
            for t in route.targets
            if t.backend in known and set(route.require) <= set(known[t.backend].capabilities)
        ]
        _check_regions(where, route, problems)
        if not route.targets and not route.regions:
            problems.append(f"{where}.targets: the route has no candidates")
        elif not able and route.require:
            problems.append(
                f"{where}: the route has no candidates: no target backend has every "
                f"required capability ({', '.join(route.require)})"
            )
        for fb in route.fallbacks:
            if fb == name:
                problems.append(f"{where}.fallbacks: the route falls back to itself")
            else:
                _unknown_route(config, f"{where}.fallbacks", fb, problems)
    problems.extend(_fallback_cycles(config))
    if config.default_route is not None and config.default_route not in config.routes:
        problems.append(
            f"default_route: {config.default_route!r} is not a route "
            f"(routes: {_route_names(config)})"
        )


def _check_regions(where: str, route: Route, problems: list[str]) -> None:
    """Region targets: valid names (they become topic names), each named once."""
    seen: set[str] = set()
    for r in route.regions:
        if not _REGION.match(r.region):
            problems.append(
                f"{where}.targets: region {r.region!r} is not a region name: expected "
                "lower-case letters, digits and '-', starting with a letter (e.g. eu)"
            )
        elif r.region in seen:
            problems.append(f"{where}.targets: region {r.region!r} is named twice")
        seen.add(r.region)


def _fallback_cycles(config: Config) -> list[str]:
    """Each cycle of two or more routes through ``fallbacks``, reported once."""
    found: list[str] = []
    seen: set[frozenset[str]] = set()

    def walk(path: list[str]) -> None:
        route = config.routes.get(path[-1])
        for nxt in route.fallbacks if route else []:
            if nxt == path[-1]:
                continue  # reported as "falls back to itself"
            if nxt in path:
                cycle = path[path.index(nxt) :]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(f"routes: fallback cycle {' -> '.join([*cycle, nxt])}")
            else:
                walk([*path, nxt])

    for name in config.routes:
        walk([name])
    return found


def _check_rules(config: Config, problems: list[str]) -> None:
    names = [r.name for r in config.rules]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"rules: name {dup!r} is used more than once; names must be unique")
    for i, rule in enumerate(config.rules):
        where = f"rules[{i}:{rule.name}]"
        m = rule.match
        if m.clients is not None and not m.clients:
            problems.append(f"{where}.match.clients: the list is empty; omit it to match any")
        if m.kinds is not None and not m.kinds:
            problems.append(f"{where}.match.kinds: the list is empty; omit it to match any")
        for key, value in (("min_priority", m.min_priority), ("max_priority", m.max_priority)):
            if value is not None and not 0 <= value <= 9:
                problems.append(f"{where}.match.{key}: expected 0 to 9, got {value}")
        _non_negative(f"{where}.match.min_prompt_tokens", m.min_prompt_tokens, problems)
        _non_negative(f"{where}.match.max_prompt_tokens", m.max_prompt_tokens, problems)
        for lo, a, hi, b in (
            ("min_priority", m.min_priority, "max_priority", m.max_priority),
            ("min_prompt_tokens", m.min_prompt_tokens, "max_prompt_tokens", m.max_prompt_tokens),
        ):
            if a is not None and b is not None and a > b:
                problems.append(f"{where}.match: {lo} {a} > {hi} {b}; the rule can never match")
        if rule.tiers is not None and not rule.tiers:
            problems.append(f"{where}.tiers: the list is empty; omit it to allow every tier")
        if _unknown_route(config, f"{where}.route", rule.route, problems):
            continue
        route = config.route(rule.route)
        if route is not None and rule.tiers:
            tiers = [
                b.tier
                for t in route.targets
                for b in config.backends
                if b.id == t.backend and set(route.require) <= set(b.capabilities)
            ]
            if not set(tiers) & set(rule.tiers):
                problems.append(
                    f"{where}: tiers {rule.tiers} leave route {rule.route!r} no candidate "
                    f"(its targets are {', '.join(sorted(set(tiers))) or 'none'}); "
                    "add a target of an allowed tier or change tiers"
                )


def _check_client(config: Config, where: str, c: Client, problems: list[str]) -> None:
    _positive(f"{where}.requests_per_s", c.requests_per_s, problems)
    _positive(f"{where}.tokens_per_min", c.tokens_per_min, problems)
    if c.burst is not None and c.burst < 1:
        problems.append(f"{where}.burst: expected an integer >= 1, got {c.burst}")
    if c.token_burst is not None and c.token_burst < 1:
        problems.append(f"{where}.token_burst: expected an integer >= 1, got {c.token_burst}")
    if c.burst is not None and c.requests_per_s is None:
        problems.append(f"{where}.burst: set without requests_per_s; set both or neither")
    if c.token_burst is not None and c.tokens_per_min is None:
        problems.append(f"{where}.token_burst: set without tokens_per_min; set both or neither")
    if c.max_wait_ms is not None and c.max_wait_ms < 0:
        problems.append(f"{where}.max_wait_ms: expected >= 0, got {c.max_wait_ms}")
    if not 0 <= c.default_priority <= 9:
        problems.append(f"{where}.default_priority: expected 0 to 9, got {c.default_priority}")
    for name in c.allowed_routes or []:
        _unknown_route(config, f"{where}.allowed_routes", name, problems)


def loads(text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Decode and check a YAML config; raise ConfigError naming every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    text = _expand_env(text, env, problems)
    try:
        raw = _region_targets(msgspec.yaml.decode(text))
        config = msgspec.convert(raw, type=Config, builtin_types=(dt.datetime, dt.date))
    except msgspec.ValidationError as exc:
        # msgspec stops at the first error; walk the file to name every one of them.
        found = schema_problems(raw) or [str(exc)]
        raise ConfigError(source, [*problems, *found]) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(source, [*problems, str(exc)]) from None
    unset = bool(problems)
    # A value holding an unset ${VAR} was reported above; do not report it again.
    problems.extend(p for p in check(config, env) if not (unset and _ENV_REF.search(p)))
    if problems:
        raise ConfigError(source, problems)
    return config


def _region_targets(raw: Any) -> Any:
    """Move each route's ``{region: X}`` targets to its ``regions`` list, keeping order."""
    routes = raw.get("routes") if isinstance(raw, dict) else None
    if not isinstance(routes, dict):
        return raw
    for route in routes.values():
        targets = route.get("targets") if isinstance(route, dict) else None
        if not isinstance(targets, list):
            continue
        regions = [t for t in targets if isinstance(t, dict) and "region" in t]
        if regions:
            route["targets"] = [t for t in targets if not (isinstance(t, dict) and "region" in t)]
            route["regions"] = [*(route.get("regions") or []), *regions]
    return raw


def load(path: str, *, env: Mapping[str, str] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror}"]) from None
    return loads(text, source=path, env=env)
