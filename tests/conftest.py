"""Shared fixtures: the emulator on real sockets and sessions pointed at it.

Retry delays are zero (the SDK's test switch); task time runs on a compressed
`Clock` shared by the emulator and the session, so nothing here sleeps for real.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
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


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """For in-process CLI runs: the canary key in the environment, no base URL."""
    monkeypatch.delenv("APIMART_BASE_URL", raising=False)
    monkeypatch.setenv("APIMART_API_KEY", KEY)


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `apimart-async ARGS` in-process (on a worker thread with its own event loop):
    exit status, stdout, stderr."""
    from apimart_async._cli.main import main

    capsys.readouterr()
    status = await anyio.to_thread.run_sync(main, list(args))
    out, err = capsys.readouterr()
    return status, out, err


# -- PostgreSQL (the fleet journal) ----------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (see tests/pgcluster.py)."""
    import os

    from tests.pgcluster import Cluster, find_bindir

    missing = None
    bindir = find_bindir()
    if bindir is None:
        missing = "PostgreSQL is not installed (no initdb found)"
    else:
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            missing = "asyncpg is not installed (pip install -e '.[dev]')"
    if missing is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {missing}; no PostgreSQL test may be skipped")
        pytest.skip(missing)
    assert bindir is not None
    with Cluster(bindir) as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """A fresh, empty database on the session's cluster: its postgresql:// URL."""
    url: str = pg_cluster.new_database()
    return url
