"""The emulator in a child process, for harnesses that must not share its event loop."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator

import anyio

__all__ = ["emulator_process"]

_MARK = b"APIMART_BASE_URL="


@contextlib.asynccontextmanager
async def emulator_process(*flags: str) -> AsyncIterator[str]:
    """Run ``apimart-async emulator --port 0 FLAGS`` in a child process; yield its base URL.

    The process is terminated on exit. Its counters are at ``GET {url}/_emulator/stats``,
    its request log at ``GET {url}/_emulator/requests``.
    """
    cmd = [sys.executable, "-m", "apimart_async", "emulator", "--port", "0", *flags]
    async with await anyio.open_process(cmd, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        banner = b""
        async for chunk in proc.stdout:
            banner += chunk
            if _MARK in banner and banner.endswith(b"\n"):
                break
        else:
            raise RuntimeError(f"the emulator exited before it said where it listens: {banner!r}")
        url = banner.split(_MARK, 1)[1].split()[0].decode()
        try:
            yield url
        finally:
            proc.terminate()
            await proc.wait()
