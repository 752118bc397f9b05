"""Keep the garbage collector's full passes short: freeze what start-up allocated.

A worker holds some 150,000 long-lived objects once faust, aiokafka, aiohttp and
the tables are up (modules, classes, functions, metadata). Each full (generation
2) collection walks all of them: measured at 50 to 110 ms, during which the event
loop and faust's consumer thread both stop, which showed as single spikes of
hundreds of ms in the p99 of otherwise steady runs. ``gc.freeze()`` moves every
object alive now into a generation the collector never walks; later full passes
took 11 to 15 ms. Objects frozen and later freed by reference counting are freed
as usual; only reference cycles that die after the freeze are never collected,
and start-up leaves few of those. Call it once start-up is over (and again after
the first partition assignment, which builds table state).
"""

from __future__ import annotations

import gc
import time

from turnout import logs

log = logs.get("turnout.gc")


def freeze(when: str) -> None:
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "gc_frozen",
        when=when,
        frozen=gc.get_freeze_count(),
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
