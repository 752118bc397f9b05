"""In-flight slots, and requests that wait for backend capacity without holding one."""

from __future__ import annotations

import asyncio


class SlotPool:
    """The worker's in-flight slots, and how many requests may wait for capacity without one.

    A request waiting for backend capacity parks: it gives back its slot. Otherwise
    requests for one saturated backend would hold every slot while they wait, and
    requests for idle backends (other routes, other clients) could not get in. At most
    ``max_waiting`` park at once; past that a waiting request keeps its slot, and Kafka
    buffers the rest, as before.
    """

    def __init__(self, max_in_flight: int, max_waiting: int) -> None:
        self.slots = asyncio.Semaphore(max_in_flight)
        self.free_parking = max_waiting
        self.parked = 0

    def __repr__(self) -> str:
        return f"<SlotPool parked={self.parked} free_parking={self.free_parking}>"


class SlotLease:
    """One request's hold on a slot of a ``SlotPool``: given back exactly once."""

    __slots__ = ("_parked", "_pool", "held")

    def __init__(self, pool: SlotPool, *, held: bool) -> None:
        self._pool = pool
        self.held = held
        self._parked = False

    async def acquire(self) -> None:
        await self._pool.slots.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._pool.slots.release()

    def park(self) -> bool:
        """Give the slot back while waiting for capacity, if parking has room."""
        pool = self._pool
        if not self.held or pool.free_parking <= 0:
            return False
        pool.free_parking -= 1
        pool.parked += 1
        self._parked = True
        self.release()
        return True

    async def unpark(self) -> None:
        try:
            await self.acquire()
        finally:
            if self._parked:
                self._parked = False
                self._pool.free_parking += 1
                self._pool.parked -= 1
