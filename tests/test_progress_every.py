"""`progress_every`: a progress resolution asked per watch, on a stepped clock.

A 60 s task watched at ``progress_every=2`` is polled about every 2 API seconds and
yields about 30 updates; a default watcher of the same task stays on the frugal
schedule, and when the fine watcher leaves the task goes back to it.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import anyio
import pytest

from apimart_async import Session, TaskUpdate, ValidationError, VideoRequest
from apimart_async.testing import EmulatorConfig, EmulatorServer, SteppedClock, TaskPlan

from .conftest import KEY

pytestmark = pytest.mark.anyio

PLAN = TaskPlan(duration=60.0, queue_time=1.0, estimated_time=60.0)


def _config() -> EmulatorConfig:
    return EmulatorConfig(api_key=KEY, planner=lambda body, index: PLAN)


def _poll_times(server: EmulatorServer) -> list[float]:
    return [r.time for r in server.emulator.request_log if r.route == "task"]


async def _drive(clock: SteppedClock, done: anyio.Event) -> None:
    for _ in range(1000):
        if done.is_set():
            return
        if await clock.step() is None:
            await anyio.sleep(0.001)  # something is on the wire; real time
    raise AssertionError("the watch did not end")


async def _watch_alone(**kwargs: Any) -> tuple[list[TaskUpdate], list[float]]:
    clock = SteppedClock()
    updates: list[TaskUpdate] = []
    async with EmulatorServer(_config(), clock=clock) as server, Session(
        KEY, base_url=server.base_url, clock=clock
    ) as session:
        sub = await session.submit(VideoRequest("a fox"))
        done = anyio.Event()

        async def follow() -> None:
            async with session.watch([sub], **kwargs) as watch:
                async for update in watch:
                    updates.append(update)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await _drive(clock, done)
    return updates, _poll_times(server)


async def test_a_60s_task_at_progress_every_2_gets_about_30_updates() -> None:
    updates, polls = await _watch_alone(progress_every=2.0)
    assert updates[-1].completed
    assert 27 <= len(updates) <= 33, len(updates)
    assert 28 <= len(polls) <= 33, polls
    # No gap between polls above the resolution asked for.
    assert max(b - a for a, b in itertools.pairwise(polls)) <= 2.0 + 1e-9


async def test_the_default_watch_stays_frugal() -> None:
    updates, polls = await _watch_alone()
    assert updates[-1].completed
    assert len(polls) <= 8, polls
    assert len(updates) <= 8


async def test_a_fine_watcher_does_not_change_a_default_watchers_schedule_after_it_leaves(
) -> None:
    clock = SteppedClock()
    fine: list[float] = []
    coarse: list[TaskUpdate] = []
    async with EmulatorServer(_config(), clock=clock) as server, Session(
        KEY, base_url=server.base_url, clock=clock
    ) as session:
        sub = await session.submit(VideoRequest("a fox"))
        done = anyio.Event()

        async def follow_default() -> None:
            async for update in session.watch([sub]):
                coarse.append(update)
            done.set()

        async def follow_fine() -> None:
            # A UI open for the first 20 s of the task, then closed.
            async with session.watch([sub], progress_every=2.0) as watch:
                async for _update in watch:
                    fine.append(clock.now())
                    if clock.now() >= 20:
                        break

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow_default)
            tg.start_soon(follow_fine)
            await _drive(clock, done)
    polls = _poll_times(server)
    early = [t for t in polls if t <= 20]
    late = [t for t in polls if t > 20]
    assert len(early) >= 9, early  # ~every 2 s while the fine watcher was there
    assert len(late) <= 6, late  # then the frugal schedule again
    assert coarse[-1].completed
    # The default watcher saw the fine polls' news too (one poller, one stream of news).
    assert len(coarse) >= len(fine)


async def test_two_resolutions_poll_at_the_tightest() -> None:
    clock = SteppedClock()
    async with EmulatorServer(_config(), clock=clock) as server, Session(
        KEY, base_url=server.base_url, clock=clock
    ) as session:
        sub = await session.submit(VideoRequest("a fox"))
        done = anyio.Event()

        async def follow(every: float) -> None:
            async for _update in session.watch([sub], progress_every=every):
                pass
            if every == 5.0:
                done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, 5.0)
            tg.start_soon(follow, 3.0)
            await _drive(clock, done)
    polls = _poll_times(server)
    assert max(b - a for a, b in itertools.pairwise(polls)) <= 3.0 + 1e-9
    assert 18 <= len(polls) <= 22, polls


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, "2", True])
async def test_progress_every_is_validated(server: EmulatorServer, bad: object) -> None:
    async with Session(KEY, base_url=server.base_url) as session:
        for call in (lambda: session.watch(["task_1"], progress_every=bad),  # type: ignore[arg-type]
                     lambda: session.stream([VideoRequest("x")],
                                            progress_every=bad)):  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="progress_every") as info:
                call()
            assert f"must be a finite number of seconds > 0, got {bad!r}" in str(info.value)
