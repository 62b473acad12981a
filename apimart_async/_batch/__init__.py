"""Layer 4, durable batches: the journal, the runner (on an `Engine`), input files.

Imports `_engine`, `_io` and `_core` only.
"""
