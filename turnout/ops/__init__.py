"""Operator tools: ``turnout replay``, ``turnout dlq`` and ``turnout status``.

- ``replay`` (``replay.py``, pure parts in ``replay_core.py``): re-publish a window
  of the request topic or the dead-letter topic into the request topic, with
  ``turnout-replay`` headers; the worker skips requests answered ok before.
- ``dlq`` (``dlq.py``): count, show and replay dead letters.
- ``status`` (``status.py``): per-partition lag of the worker group, and what
  running workers report on ``/status.json``.

``turnout.cli`` registers them with ``add_commands`` and runs them with ``main``.
``local_llm.py`` installs and serves a real local model (``scripts/local-llm``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

COMMANDS = ("replay", "dlq", "status")


def add_commands(sub: Any) -> None:
    """Add the operator subcommands to the ``turnout`` parser's subparsers."""
    from turnout.ops import dlq, replay, status

    replay.add_arguments(
        sub.add_parser("replay", help="re-publish a window of a topic into the request topic")
    )
    dlq.add_arguments(sub.add_parser("dlq", help="dead letters: stats, show, replay"))
    status.add_arguments(
        sub.add_parser("status", help="request topic lag for the worker group; worker status")
    )


def main(settings: Any, args: argparse.Namespace) -> int:
    """Run an operator command; Ctrl-C ends it with a note that running it again is safe."""
    try:
        return asyncio.run(run(settings, args))
    except KeyboardInterrupt:
        print(
            f"turnout {args.command}: interrupted; running the same command again is safe",
            file=sys.stderr,
        )
        return 130


async def run(settings: Any, args: argparse.Namespace) -> int:
    from turnout.ops import dlq, replay, status

    runners = {"replay": replay.run, "dlq": dlq.run, "status": status.run}
    return await runners[args.command](settings, args)
