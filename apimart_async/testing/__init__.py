"""Test your APIMart code offline: the emulator, compressed and stepped clocks, the retry switch.

    from apimart_async import Session, VideoRequest
    from apimart_async.testing import EmulatorServer, set_testing

    async with EmulatorServer() as server:
        async with Session("any-key", base_url=server.base_url) as session:
            sub = await session.submit(VideoRequest("a red fox"))
            task = await session.wait(sub)

The emulator is a toolkit: `Emulator.inject` faults per route (refused where they would
have no effect), read tasks as `EmulatedTask` snapshots (`Emulator.tasks`,
`Emulator.task`), assert on `Emulator.request_log` (`RequestRecord`), and step time by
hand with a `SteppedClock` shared with the `Session`.

`apimart-async emulator --port 8089` runs the same emulator standalone, and the pytest
plugin (`apimart_async.testing.pytest_plugin`, loaded by entry point) hands it out as
fixtures: ``apimart_server``, ``apimart_session``, ``apimart_sync_session`` and the like.
"""

from typing import TYPE_CHECKING, Any

from .._io.clock import Clock, is_testing, set_testing

if TYPE_CHECKING:
    from ._config import PRICED_DURATION, EmulatorConfig, Price
    from ._emulator import Emulator
    from ._faults import Fault
    from ._process import emulator_process
    from ._profiles import PRESETS, PROFILES, ProgressMode, TimingProfile
    from ._server import EmulatorServer
    from ._stats import EmulatorStats, RequestRecord
    from ._stepped import SteppedClock
    from ._tasks import EmulatedTask, TaskPlan, video_bytes

# Each name is imported from its module on first use: a harness that runs the emulator
# in a child process (`emulator_process`) does not load the emulator and its web
# server into its own memory (~2.8 MB, #14: the client's peak RSS is what it measures).
_LAZY = {
    "EmulatedTask": "._tasks",
    "Emulator": "._emulator",
    "EmulatorConfig": "._config",
    "EmulatorServer": "._server",
    "EmulatorStats": "._stats",
    "Fault": "._faults",
    "PRESETS": "._profiles",
    "PRICED_DURATION": "._config",
    "PROFILES": "._profiles",
    "Price": "._config",
    "ProgressMode": "._profiles",
    "RequestRecord": "._stats",
    "SteppedClock": "._stepped",
    "TaskPlan": "._tasks",
    "TimingProfile": "._profiles",
    "emulator_process": "._process",
    "video_bytes": "._tasks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Clock",
    "EmulatedTask",
    "Emulator",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorStats",
    "Fault",
    "PRESETS",
    "PRICED_DURATION",
    "PROFILES",
    "Price",
    "ProgressMode",
    "RequestRecord",
    "SteppedClock",
    "TaskPlan",
    "TimingProfile",
    "emulator_process",
    "is_testing",
    "set_testing",
    "video_bytes",
]
