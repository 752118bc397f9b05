"""The benchmark tooling stays out of what turnout ships: the wheel and the Docker image."""

from __future__ import annotations

import fnmatch
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_wheel_does_not_include_the_bench_package() -> None:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    include = find["find"]["include"]
    assert (ROOT / "bench" / "__init__.py").exists()
    assert not any(fnmatch.fnmatch(name, pattern) for pattern in include
                   for name in ("bench", "bench.tests"))
    assert any(fnmatch.fnmatch("turnout", pattern) for pattern in include)


def test_the_image_does_not_copy_the_bench_package() -> None:
    copies = [ln.split() for ln in (ROOT / "Dockerfile").read_text().splitlines()
              if ln.startswith("COPY")]
    sources = {part.rstrip("/") for ln in copies for part in ln[1:-1]}
    assert "turnout" in sources
    assert not {s for s in sources if s in (".", "bench") or s.startswith("bench")}


def test_no_turnout_module_is_benchmark_tooling() -> None:
    left = sorted(p.name for p in (ROOT / "turnout").rglob("*.py")
                  if p.name.startswith(("bench", "soak")))
    assert left == []
