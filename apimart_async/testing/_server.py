"""`EmulatorServer`: the emulator on real sockets, as an async context manager."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from .._io.clock import Clock
from ._config import EmulatorConfig
from ._emulator import Emulator
from ._stats import EmulatorStats

__all__ = ["EmulatorServer"]


class EmulatorServer:
    """Serves an `Emulator`'s API host and file host on `host` (ports 0 = any free port).

    ``async with EmulatorServer(config) as server:`` then point a `Session` at
    `server.base_url`; `server.emulator` has the controls and `server.stats` the counts.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        file_port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        self.emulator = Emulator(config, clock=clock)
        self.host = host
        self.port = port
        self.file_port = file_port
        self._runners: list[web.AppRunner] = []

    @property
    def stats(self) -> EmulatorStats:
        """The emulator's `EmulatorStats`."""
        return self.emulator.stats

    @property
    def base_url(self) -> str:
        """The API host's base URL, e.g. ``http://127.0.0.1:8089``."""
        return f"http://{self.host}:{self.port}"

    @property
    def file_base_url(self) -> str:
        """The file host's base URL (a different port: a different origin)."""
        return f"http://{self.host}:{self.file_port}"

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def start(self) -> None:
        """Start both hosts."""
        try:
            self.port = await self._serve(self.emulator.api_app(), self.port)
            self.file_port = await self._serve(self.emulator.file_app(), self.file_port)
        except BaseException:
            await self.close()
            raise
        self.emulator.file_base_url = self.file_base_url

    async def close(self) -> None:
        """Stop both hosts."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
