"""What the dispatcher needs of its state tables, and a dict that provides it.

The faust changelog-backed tables (``streams/tables.py``) implement ``StateTable``;
the dispatcher depends only on this protocol, so the worker package never imports
``streams/`` (the layer above it).
"""

from __future__ import annotations

from typing import Protocol


def done_key(client_id: str, request_id: str) -> bytes:
    return f"{client_id}\x00{request_id}".encode()


class StateTable(Protocol):
    """What the dispatcher needs of a table: read a key, write one in a partition."""

    def get(self, key: bytes) -> bytes | None: ...

    async def put(self, partition: int, key: bytes, value: bytes) -> None: ...


class MemoryTable(dict[bytes, bytes]):
    """A ``StateTable`` in a dict: for the dispatcher's unit tests and tools without Kafka."""

    async def put(self, partition: int, key: bytes, value: bytes) -> None:
        self[key] = value
