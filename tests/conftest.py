"""Shared fixtures: the emulator on real sockets and sessions pointed at it.

Retry delays are zero (the SDK's test switch); task time runs on a compressed
`Clock` shared by the emulator and the session, so nothing here sleeps for real.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from apimart_async import Session
from apimart_async.testing import Clock, EmulatorConfig, EmulatorServer, set_testing

KEY = "sk-canary-5f3a9c0e-do-not-leak"
SPEED = 50.0


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp runs on asyncio only.
    return "asyncio"


@pytest.fixture(autouse=True)
def _zero_delays() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


MakeServer = Callable[..., Awaitable[EmulatorServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    """Start an emulator: ``await make_server(EmulatorConfig(...), speed=50)``."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(config: EmulatorConfig | None = None, *, speed: float = SPEED) -> EmulatorServer:
            server = EmulatorServer(config, clock=Clock(speed=speed))
            return await stack.enter_async_context(server)

        yield make


@pytest.fixture
async def server(make_server: MakeServer) -> EmulatorServer:
    return await make_server()


def session_for(server: EmulatorServer, **kwargs: Any) -> Session:
    """A session on `server`'s clock with the canary key."""
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("clock", server.emulator.clock)
    return Session(base_url=server.base_url, **kwargs)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog
