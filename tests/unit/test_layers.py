"""The layers import one way: read from the source (the AST), never by importing it.

    schemas  <-  turnout  <-  agents  <-  streams
    (wire)       (core, worker, gateway, ...)  (the faust app and its composition root)

``turnout/cli.py`` is the one exception: the command line starts every process, the
worker's composition root (``streams/runtime.py``) among them. Inside ``turnout``,
``core/`` is pure: no event loop, no clock, no I/O, and nothing of turnout but
``core/`` itself, the error tree and the two value modules it decides on.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "turnout", "agents", "streams")
# Lower index = lower layer; a module may import only its own layer or lower ones.
LAYER = {name: i for i, name in enumerate(PACKAGES)}
UPWARD_ALLOWED = {"turnout.cli"}

CORE_FORBIDDEN = {
    "asyncio", "aiohttp", "aiokafka", "faust", "mode", "time", "datetime", "threading",
    "socket", "ssl", "select", "signal", "subprocess", "os", "logging", "structlog",
    "prometheus_client", "opentelemetry", "concurrent",
}  # fmt: skip
CORE_MAY_USE = ("turnout.core", "turnout.errors", "turnout.config", "turnout.settings")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = sources()


@functools.cache
def imports(path: pathlib.Path) -> list[str]:
    """Every module ``path`` imports, at any depth (lazy imports in functions count)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.append(sub if sub in MODULES else node.module)
    return names


@functools.cache
def graph() -> dict[str, set[str]]:
    return {
        name: {m for m in imports(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle():
    """The cycle finder reports a loop through three modules and nothing for a chain."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_is_read():
    """The graph is not vacuous: known edges across the layers are in it."""
    edges = graph()
    assert "turnout.core.routing" in edges["turnout.worker.chooser"]
    assert "turnout.settings" in edges["streams.app"]
    assert "agents.router" in edges["streams.runtime"]
    assert "schemas.types" in edges["turnout.core.admission"]


def test_no_module_imports_itself_back():
    """No cycle of imports among modules, lazy imports included."""
    assert cycles(graph()) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_down_the_layers(name):
    """A module imports only from its own package layer or the ones below it."""
    if name in UPWARD_ALLOWED:
        return
    own = LAYER[name.split(".")[0]]
    upward = sorted(m for m in graph()[name] if LAYER[m.split(".")[0]] > own)
    assert upward == [], f"{name} imports a layer above it: {upward}"


def core_modules() -> list[str]:
    return sorted(n for n in MODULES if n == "turnout.core" or n.startswith("turnout.core."))


def test_core_is_not_empty():
    """The purity check has modules to check."""
    assert {"turnout.core.routing", "turnout.core.admission", "turnout.core.retry"} <= set(
        core_modules()
    )


@pytest.mark.parametrize("name", core_modules())
def test_core_is_pure(name):
    """turnout/core/ imports no event loop, clock, network or logging, and no edge module."""
    bad = []
    for imported in imports(MODULES[name]):
        top = imported.split(".")[0]
        if top in CORE_FORBIDDEN:
            bad.append(imported)
        elif top in PACKAGES and top != "schemas" and not imported.startswith(CORE_MAY_USE):
            bad.append(imported)
    assert bad == [], f"{name} is in turnout/core/ but imports {bad}"
