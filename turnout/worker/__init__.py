"""The worker's I/O around the pure core: dispatch, choosing, publishing, probing.

``streams/runtime.py`` composes these into a running worker.
"""
