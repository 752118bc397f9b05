"""The pure decisions: no await, no clock, no I/O, no logging.

Each function takes what it decides on (a record, a snapshot, ``now``, an ``rng``)
and returns a value; the worker (``turnout/worker/``) does the I/O around it.
``tests/unit/test_layers.py`` fails when a module here imports an event loop, a
clock, a network library, logging, or any turnout module but ``core/``,
``errors``, ``config`` and ``settings``.
"""
