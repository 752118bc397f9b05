"""Where a worker's CPU goes, by part: a py-spy raw profile, each sample charged to the
innermost library or part of turnout it was in (``docs/ceiling.md``, section 3).

    .venv/bin/python -m bench.profile_parts docs/profile-ab7a50.txt.gz

A sample's stack is read from its innermost frame outwards; the first frame that names a
part decides. Samples on faust's consumer thread are reported under that thread.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import pathlib

PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("http-client", ("aiohttp/", "HttpBackendClient", "TracedClient.call")),
    ("kafka-produce", ("aiokafka/producer", "Producer.send", "Publisher.", "ChangelogTable._send")),
    ("kafka-fetch", ("aiokafka/consumer", "fetcher", "Fetcher")),
    ("rocksdb/table", ("stores/", "ChangelogTable")),
    ("faust-thread", ("WorkerThread.run",)),
    ("faust-stream", ("faust/streams", "faust/agents", "faust/transport/consumer",
                      "TrackedConsumer")),
    ("tracing", ("trace/__init__", "turnout/tracing", "opentelemetry")),
    ("logging", ("structlog",)),
    ("metrics", ("prometheus", "Metrics.")),
    ("turnout", ("turnout/", "agents/router", "schemas/")),
    ("select", ("EpollSelector.select",)),
)  # fmt: skip
THREAD = "WorkerThread.run"


def part_of(frames: list[str]) -> str:
    """The part a sample is charged to; ``faust-thread:`` prefixed on faust's thread.

    >>> part_of(["main", "Dispatcher._serve (turnout/worker/dispatch.py:1)",
    ...          "StreamWriter.write (aiohttp/http_writer.py:2)", "write (asyncio/x.py:3)"])
    'http-client'
    >>> part_of(["WorkerThread.run (mode/threads.py:1)", "Fetcher._fetcher (aiokafka/x:2)"])
    'faust-thread:kafka-fetch'
    >>> part_of(["BaseEventLoop._run_once (asyncio/base_events.py:1)"])
    'other-loop'
    """
    hit = next(
        (name for frame in reversed(frames) for name, keys in PARTS
         if any(k in frame for k in keys)),
        "other-loop",
    )  # fmt: skip
    return f"faust-thread:{hit}" if any(THREAD in f for f in frames) else hit


def shares(text: str) -> dict[str, float]:
    """Percent of samples per part, largest first, from py-spy's ``--format raw`` output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if stack and n.isdigit():
            counts[part_of(stack.split(";"))] += int(n)
    total = sum(counts.values()) or 1
    return {part: round(100 * n / total, 1) for part, n in counts.most_common()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=pathlib.Path, help="py-spy raw output (.gz read as such)")
    a = p.parse_args()
    raw = a.profile.read_bytes()
    text = (gzip.decompress(raw) if a.profile.suffix == ".gz" else raw).decode()
    for part, pct in shares(text).items():
        print(f"{pct:5.1f}% {part}")


if __name__ == "__main__":
    main()
