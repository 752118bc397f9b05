"""Write the JSON Schema files from the Python types: ``python -m schemas.generate``."""

from __future__ import annotations

import inspect
import pathlib
from typing import Any

import msgspec
import orjson

from schemas.types import WIRE_TYPES

HERE = pathlib.Path(__file__).parent


def render(name: str) -> bytes:
    schema = _clean(msgspec.json.schema(WIRE_TYPES[name]))
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://turnout.dev/schemas/{name}.schema.json",
        **schema,
    }
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _clean(node: Any) -> Any:
    """Dedent docstring descriptions: msgspec 0.23 does, older releases did not."""
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _clean(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def main() -> None:
    for name in WIRE_TYPES:
        path = HERE / f"{name}.schema.json"
        path.write_bytes(render(name))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
