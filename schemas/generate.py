"""Write the JSON Schema files from the Python types: ``python -m schemas.generate``."""

from __future__ import annotations

import pathlib

import msgspec
import orjson

from schemas.types import WIRE_TYPES

HERE = pathlib.Path(__file__).parent


def render(name: str) -> bytes:
    schema = msgspec.json.schema(WIRE_TYPES[name])
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://turnout.dev/schemas/{name}.schema.json",
        **schema,
    }
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> None:
    for name in WIRE_TYPES:
        path = HERE / f"{name}.schema.json"
        path.write_bytes(render(name))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
