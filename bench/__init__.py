"""Benchmark tooling: outside the turnout package, so it ships in neither the wheel nor the image.

``python -m bench.run`` is what ``scripts/bench`` runs (see docs/benchmarks.md); ``bench.soak``
and ``bench.bench_local_llm`` back ``scripts/soak`` and ``scripts/bench-local-llm``.
"""
