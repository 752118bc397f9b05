"""The routing configuration: backends and routes, loaded from one YAML file.

The file is decoded into frozen types in one validating pass, ``${ENV}``
references are expanded, and then every cross-reference is checked. All
problems are reported at once, each naming where it is and how to fix it::

    backends:
      - id: local
        protocol: openai            # openai | ollama
        base_url: http://127.0.0.1:11434
        api_key_env: OPENAI_API_KEY # optional; the key is read from this variable
        models: [llama3.2]
        tier: local                 # local | cloud
        max_concurrency: 64
    routes:
      default:
        targets: [{backend: local, model: llama3.2}]
    default_route: default
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

Protocol = Literal["openai", "ollama"]
Tier = Literal["local", "cloud"]
Policy = Literal["round_robin", "first"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every problem found."""

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


class Backend(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    protocol: Protocol
    base_url: str
    models: list[str]
    tier: Tier = "local"
    api_key_env: str | None = None
    max_concurrency: Annotated[int, msgspec.Meta(gt=0)] = 64
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] = 120_000
    weight: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    embed_endpoint: Literal["embed", "embeddings"] = "embed"
    """Ollama only: ``/api/embed`` (batch, current) or ``/api/embeddings`` (older servers)."""

    def api_key(self, env: Mapping[str, str]) -> Secret | None:
        if self.api_key_env is None:
            return None
        return Secret(env[self.api_key_env])


class Target(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    backend: str
    model: str


class Route(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    targets: list[Target]
    policy: Policy = "round_robin"
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 2


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    backends: list[Backend]
    routes: dict[str, Route] = {}
    default_route: str | None = None

    def backend(self, backend_id: str) -> Backend:
        for b in self.backends:
            if b.id == backend_id:
                return b
        raise KeyError(backend_id)

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
        targets = [Target(backend=b.id, model=model) for b in self.backends if model in b.models]
        if not targets:
            return None
        return f"model:{model}", Route(targets=targets)

    def model_names(self) -> list[str]:
        names = list(self.routes)
        for b in self.backends:
            names.extend(m for m in b.models if m not in names)
        return names


def _expand_env(text: str, env: Mapping[str, str], problems: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            problems.append(f"environment variable {name} is referenced as ${{{name}}} but not set")
            return ""
        return env[name]

    return _ENV_REF.sub(sub, text)


def check(config: Config, env: Mapping[str, str]) -> list[str]:
    """Every cross-reference problem in ``config``, as messages a person can act on."""
    problems: list[str] = []
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
    for name, route in config.routes.items():
        where = f"routes[{name}]"
        if not route.targets:
            problems.append(f"{where}.targets: the route has no candidates")
        for t in route.targets:
            if t.backend not in ids:
                problems.append(
                    f"{where}: target backend {t.backend!r} is not declared "
                    f"(declared: {', '.join(ids) or 'none'})"
                )
    if config.default_route is not None and config.default_route not in config.routes:
        problems.append(
            f"default_route: {config.default_route!r} is not a route "
            f"(routes: {', '.join(config.routes) or 'none'})"
        )
    return problems


def loads(text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Decode and check a YAML config; raise ConfigError naming every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    text = _expand_env(text, env, problems)
    try:
        config = msgspec.yaml.decode(text, type=Config)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(source, [*problems, str(exc)]) from None
    problems.extend(check(config, env))
    if problems:
        raise ConfigError(source, problems)
    return config


def load(path: str, *, env: Mapping[str, str] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror}"]) from None
    return loads(text, source=path, env=env)
