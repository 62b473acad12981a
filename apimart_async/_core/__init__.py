"""Layer 1, pure: models, errors, validation, wire format, retry and poll policy, events.

Nothing here does I/O or imports aiohttp/anyio I/O; everything is unit-tested without
a socket. Every other layer may import this one; this one imports none of them.
"""
