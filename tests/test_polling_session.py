"""The poller inside a session: failed polls back off (capped) and it learns per model."""

from __future__ import annotations

import math

import anyio
import pytest

from apimart_async import PollPolicy, RetryPolicy, Submission, TaskStatus, VideoRequest
from apimart_async.testing import EmulatorConfig, Fault, TaskPlan

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio


async def test_a_session_survives_thousands_of_consecutive_failed_polls(
    make_server: MakeServer,
) -> None:
    # 2**1024 overflows a float: an uncapped backoff dies at the 1,024th miss. Tiny
    # intervals on a fast clock make 2,100 misses take a few real seconds, no sleeps.
    server = await make_server(speed=1000)
    misses = 2_100
    server.emulator.inject("task", *[Fault.http(503)] * misses)
    # (give_up_after=None: polls on real sockets take real time, thousands of API s here.)
    policy = PollPolicy(first_delay=0.001, min_interval=0.001, max_interval=0.002,
                        give_up_after=None)
    async with session_for(server, poll=policy, retry=RetryPolicy(max_attempts=1)) as s:
        sub = await s.submit(VideoRequest("x"))
        with anyio.fail_after(60):
            finals = [u async for u in s.watch([sub]) if u.final]
    assert server.emulator.pending_faults("task") == 0
    assert sum(server.stats.faults_injected.values()) == misses
    assert [u.status for u in finals] == [TaskStatus.COMPLETED]


async def test_a_failure_mid_run_tightens_the_watch_of_that_model(
    make_server: MakeServer,
) -> None:
    # Once the session has seen a render of a model fail part-way, its later tasks are
    # polled at least every watch_interval while they render, like a 1-s loop.
    server = await make_server(EmulatorConfig(profiles={"flaky": "minutes"}), speed=100)
    async with session_for(server) as s:
        bad = await s.submit(VideoRequest("bad", model="flaky"))
        server.emulator.replan(bad.task_id, TaskPlan(
            duration=10.0, queue_time=0.0, render_time=40.0, outcome="failed",
        ))
        assert [u.status async for u in s.watch([bad]) if u.final] == [TaskStatus.FAILED]
        steady = await s.submit(VideoRequest("steady", model="other"))
        subs = [await s.submit(VideoRequest(f"{i}", model="flaky")) for i in range(3)]
        async for _ in s.watch([steady, *subs]):
            pass
    polls = [server.stats.polls[sub.task_id] for sub in subs]
    # 30-60 s renders polled every ~0.95 s of API time: dozens of polls each ...
    # (>= 12, not ~30: at x100 a loaded machine stretches each poll by API seconds.)
    assert min(polls) >= 12, polls
    # ... while a model never seen failing gets a handful.
    assert server.stats.polls[steady.task_id] <= 8


async def test_the_first_poll_of_a_later_task_lands_where_its_model_says(
    make_server: MakeServer,
) -> None:
    server = await make_server(EmulatorConfig(profiles={"long": "minutes"}), speed=200)
    async with session_for(server) as s:
        first = [await s.submit(VideoRequest(f"{i}", model="long")) for i in range(6)]
        other = await s.submit(VideoRequest("x", model="quick"))
        async for _ in s.watch([*first, other]):
            pass
        later = await s.submit(VideoRequest("later", model="long"))
        async with s.watch([later]) as updates:
            table = s._engine.poller._table
            row = table.find(later.task_id)
            # 30-60 s tasks: not after the default 2 s, but well into the render.
            assert table.due[row] - table.started[row] >= 8.0
            async for _ in updates:
                pass


async def test_the_first_failure_brings_the_models_rendering_tasks_forward_at_once(
    make_server: MakeServer,
) -> None:
    # Tasks already in flight when a model's first failure is seen are not left to
    # their old schedule (the next reading of a 30-60 s render is 10+ s away): every
    # rendering task of that model is polled within failure_interval from then on.
    server = await make_server(EmulatorConfig(profiles={"flaky": "minutes"}), speed=100)
    policy = PollPolicy()
    async with session_for(server, poll=policy) as s:
        bad = await s.submit(VideoRequest("bad", model="flaky"))
        server.emulator.replan(bad.task_id, TaskPlan(
            duration=4.0, queue_time=0.0, render_time=40.0, outcome="failed",
        ))
        others = [await s.submit(VideoRequest(f"{i}", model="flaky")) for i in range(3)]
        gaps: list[float] = []
        async for update in s.watch([bad, *others]):
            if update.task_id == bad.task_id and update.final:
                assert update.status is TaskStatus.FAILED
                now = s.clock.now()
                poller = s._engine.poller
                gaps = [poller._due_of(poller._table.find(o.task_id)) - now for o in others]
                break
    assert len(gaps) == 3
    assert max(gaps) <= policy.failure_interval + 0.05, gaps


async def test_a_session_learns_while_tasks_run_that_they_sit_at_99(
    make_server: MakeServer,
) -> None:
    # Tasks reaching 99 % half-way, then stuck there: the session learns it from the
    # batch's first tasks read twice at 99 %, and watches the others as stalls from
    # their first 99 % on: fewer polls than a 1-s loop on the same tasks.
    server = await make_server(EmulatorConfig(profiles={"st": "stall-99"}), speed=20)
    async with session_for(server) as s:
        outcomes = await s.submit_many([VideoRequest(f"{i}", model="st") for i in range(40)])
        subs = [o for o in outcomes if isinstance(o, Submission)]
        async for _ in s.watch(subs):
            pass
        learned = s._engine.poller._stats["st"]
    assert learned.stalls_at_top
    plans = [server.emulator.tasks[sub.task_id].plan for sub in subs]
    loop = sum(math.ceil(plan.duration) for plan in plans)
    polls = sum(server.stats.polls[sub.task_id] for sub in subs)
    assert polls <= loop
