"""The pytest plugin (registered by entry point): the emulator and sessions as fixtures.

Async tests (``@pytest.mark.anyio``) use `apimart_server` and `apimart_session`; plain
tests use `apimart_sync_server` (the emulator on its own loop thread) and
`apimart_sync_session`. All of them turn testing mode on (zero retry delays) for the
test. Configure the emulator with ``@pytest.mark.apimart(speed=..., **EmulatorConfig
fields)`` or by overriding the `apimart_config` / `apimart_clock` fixtures.

Each run draws a seed (``--apimart-seed N`` sets it; the pytest header shows it); each
test's emulator is seeded from it and the test's id, so task ids and fault draws differ
from run to run and test to test, and ``--apimart-seed N`` replays a failure.

The module imports nothing of the SDK until a fixture is used: every pytest run of a
project with the SDK installed loads it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .. import sync
    from .._io.clock import Clock
    from .._session import Session
    from ._config import EmulatorConfig
    from ._server import EmulatorServer

__all__ = [
    "DEFAULT_SPEED",
    "TEST_KEY",
    "apimart_clock",
    "apimart_config",
    "apimart_seed",
    "apimart_server",
    "apimart_session",
    "apimart_sync_server",
    "apimart_sync_session",
    "apimart_testing",
]

DEFAULT_SPEED = 50.0
"""The fixtures' clock speed: API seconds per real second (a 6 s task takes 0.12 s)."""

TEST_KEY = "sk-apimart-pytest-0000000000000000"
"""The key the fixtures' sessions send when `EmulatorConfig.api_key` is not set."""

_RUN_SEED = pytest.StashKey[int]()
_MARKER = "apimart"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("apimart", "apimart_async emulator fixtures")
    group.addoption(
        "--apimart-seed", type=int, default=None, metavar="N",
        help="seed of the run's emulators (task ids, plans, random faults); "
             "default: a fresh one per run, shown in the header",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(speed=None, **config): the emulator of the apimart_* fixtures: its "
        "clock speed and EmulatorConfig fields",
    )
    seed = config.getoption("apimart_seed", default=None)
    # A pytest-xdist worker takes the seed its controller drew (and printed).
    worker_seed = getattr(config, "workerinput", {}).get("apimart_seed")
    if seed is None:
        seed = worker_seed if worker_seed is not None else secrets.randbits(32)
    config.stash[_RUN_SEED] = seed


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: hand the run's seed to each worker."""
    node.workerinput["apimart_seed"] = node.config.stash[_RUN_SEED]


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash[_RUN_SEED]
    return f"apimart_async: emulator seed {seed} (replay with --apimart-seed {seed})"


def _marker_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    # Closest last: a test's marker overrides its class's and module's.
    for marker in reversed(list(request.node.iter_markers(_MARKER))):
        if marker.args:
            raise pytest.UsageError(
                f"@pytest.mark.{_MARKER} takes keyword arguments only (speed=..., and "
                f"EmulatorConfig fields), got {marker.args!r}"
            )
        kwargs.update(marker.kwargs)
    return kwargs


@pytest.fixture
def apimart_seed(request: pytest.FixtureRequest) -> int:
    """This test's emulator seed: from the run's seed and the test's id."""
    run_seed = request.config.stash[_RUN_SEED]
    digest = hashlib.sha256(f"{run_seed}:{request.node.nodeid}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@pytest.fixture
def apimart_config(request: pytest.FixtureRequest, apimart_seed: int) -> EmulatorConfig:
    """The emulator's `EmulatorConfig`: the ``apimart`` marker's fields (but `speed`),
    seeded with `apimart_seed` unless the marker sets `seed`. Override it to choose."""
    from ._config import EmulatorConfig

    kwargs = _marker_kwargs(request)
    kwargs.pop("speed", None)
    kwargs.setdefault("seed", apimart_seed)
    return EmulatorConfig(**kwargs)


@pytest.fixture
def apimart_clock(request: pytest.FixtureRequest) -> Clock:
    """The clock the emulator and the session share: `DEFAULT_SPEED` times real time,
    or the ``apimart`` marker's `speed`. Override it (e.g. with a `SteppedClock`)."""
    from .._io.clock import Clock

    speed = _marker_kwargs(request).get("speed")
    return Clock(speed=DEFAULT_SPEED if speed is None else speed)


@pytest.fixture
def apimart_testing() -> Iterator[None]:
    """Testing mode (zero retry delays) for the test, restored after it."""
    from .._io.clock import set_testing

    with set_testing(True):
        yield


def _require_asyncio(backend: object) -> None:
    name = backend if isinstance(backend, str) else backend[0]  # type: ignore[index]
    if name != "asyncio":
        pytest.skip(f"the apimart_async emulator and Session run on asyncio, not {name}")


@pytest.fixture
async def apimart_server(
    anyio_backend: object, apimart_config: EmulatorConfig, apimart_clock: Clock,
    apimart_testing: None,
) -> AsyncIterator[EmulatorServer]:
    """The emulator on 127.0.0.1 (free ports), on the test's event loop (async tests:
    ``@pytest.mark.anyio``). Its controls are ``apimart_server.emulator``."""
    _require_asyncio(anyio_backend)
    from ._server import EmulatorServer

    async with EmulatorServer(apimart_config, clock=apimart_clock) as server:
        yield server


@pytest.fixture
async def apimart_session(
    anyio_backend: object, apimart_server: EmulatorServer
) -> AsyncIterator[Session]:
    """An open async `Session` bound to `apimart_server` and its clock."""
    from .._session import Session

    emulator = apimart_server.emulator
    async with Session(
        emulator.config.api_key or TEST_KEY, base_url=apimart_server.base_url,
        clock=emulator.clock,
    ) as session:
        yield session


@pytest.fixture
def apimart_sync_server(
    apimart_config: EmulatorConfig, apimart_clock: Clock, apimart_testing: None
) -> Iterator[EmulatorServer]:
    """The emulator on its own event loop in a thread, for plain (sync) tests: a blocking
    call cannot be answered by a server on the loop it blocks. Its controls
    (``.emulator.inject`` and the like) may be called from the test."""
    from anyio.from_thread import start_blocking_portal

    from ._server import EmulatorServer

    with start_blocking_portal("asyncio") as portal:
        server = EmulatorServer(apimart_config, clock=apimart_clock)
        with portal.wrap_async_context_manager(server):
            yield server


@pytest.fixture
def apimart_sync_session(apimart_sync_server: EmulatorServer) -> Iterator[sync.Session]:
    """An open blocking `apimart_async.sync.Session` bound to `apimart_sync_server`."""
    from ..sync import Session

    emulator = apimart_sync_server.emulator
    with Session(
        emulator.config.api_key or TEST_KEY, base_url=apimart_sync_server.base_url,
        clock=emulator.clock,
    ) as session:
        yield session
