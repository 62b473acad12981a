"""Layer 3, the engine: the task group, transport, limits and poller of one open session.

`Engine` offers submit / get_task / spawn / poller / download; `Watch` and
`BatchStream` run on it. Imports `_io` and `_core` only.
"""
