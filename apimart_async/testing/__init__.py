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

from .._io.clock import Clock, is_testing, set_testing
from ._config import PRICED_DURATION, EmulatorConfig, Price
from ._emulator import Emulator
from ._faults import Fault
from ._process import emulator_process
from ._profiles import PRESETS, PROFILES, ProgressMode, TimingProfile
from ._server import EmulatorServer
from ._stats import EmulatorStats, RequestRecord
from ._stepped import SteppedClock
from ._tasks import EmulatedTask, TaskPlan, video_bytes

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
