"""Layer 2, I/O: the clock, HTTP (the only aiohttp importer), limits, transport, downloads.

Imports `_core` only.
"""
