"""Watching gives up when the API stays down: a bounded outage, then the typed error.

Everything runs over real sockets against the emulator (or a closed port) on a fast
clock; `anyio.fail_after` bounds real time, so a poller that never gives up fails the
test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from apimart_async import (
    APIConnectionError,
    DecodeError,
    ItemResult,
    ItemState,
    PollPolicy,
    RetryPolicy,
    ServerError,
    Session,
    TaskStatus,
    TaskTimeoutError,
    VideoRequest,
)
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, SteppedClock

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio

# One request per poll, so a test can count what it injected.
ONCE = RetryPolicy(max_attempts=1)
E = TypeVar("E", bound=BaseException)

async def stepped_until_raised(
    clock: SteppedClock, call: Callable[[], Awaitable[object]], expected: type[E],
) -> E:
    """Run `call` while stepping `clock` from wait to wait; return what it raised."""
    caught: list[E] = []

    async def run() -> None:
        try:
            await call()
        except expected as exc:
            caught.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while not caught:
                assert await clock.step() is not None, "the poller stopped waiting"
    return caught[0]



async def test_wait_raises_the_last_poll_error_once_polls_failed_for_give_up_after() -> None:
    clock = SteppedClock()  # API time moves between polls only: the machine's load is not in it
    async with EmulatorServer(EmulatorConfig(), clock=clock) as server, Session(
        KEY, base_url=server.base_url, clock=clock, retry=ONCE
    ) as s:
        server.emulator.inject("task", *[Fault.http(500)] * 5000)
        sub = await s.submit(VideoRequest("x"))
        error = await stepped_until_raised(clock, lambda: s.wait(sub), ServerError)
    assert error.status == 500
    polls = [r.time for r in server.emulator.request_log if r.route == "task"]
    # The default give_up_after (600 API s) from the first failed poll; the last try
    # lands on that deadline, not a whole backoff (up to 30 s) past it.
    assert 599 <= polls[-1] - polls[0] <= 601, polls[-1] - polls[0]
    assert len(polls) < 40  # backed off meanwhile


async def test_wait_against_a_closed_port_gives_up_with_the_connection_error() -> None:
    # A stepped clock: API time moves only between polls, so the span measured is the
    # poller's own, however slow the machine (a compressed clock counted CI's load too).
    clock = SteppedClock()
    async with EmulatorServer(EmulatorConfig(), clock=clock) as server:
        url = server.base_url  # closed when this block ends: nothing listens there now
    policy = PollPolicy(give_up_after=120)
    async with Session(KEY, base_url=url, clock=clock, poll=policy, retry=ONCE) as s:
        await stepped_until_raised(clock, lambda: s.wait("task_abc"), APIConnectionError)
        assert 120 <= clock.now() <= 135, clock.now()


async def test_a_timeout_during_an_outage_chains_the_last_poll_error(
    make_server: MakeServer,
) -> None:
    server = await make_server(speed=2000)
    server.emulator.inject("task", *[Fault.http(503)] * 5000)
    async with session_for(server, retry=ONCE) as s:
        sub = await s.submit(VideoRequest("x"))
        with anyio.fail_after(30), pytest.raises(TaskTimeoutError) as caught:
            await s.wait(sub, timeout=300)
    cause = caught.value.__cause__
    assert isinstance(cause, ServerError) and cause.status == 503
    assert caught.value.poll_error is cause
    assert "polls were failing" in str(caught.value) and "503" in str(caught.value)


async def test_a_timeout_with_healthy_polls_has_no_cause(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(profile="minutes"), speed=2000)
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x"))
        with anyio.fail_after(30), pytest.raises(TaskTimeoutError) as caught:
            await s.wait(sub, timeout=10)
    assert caught.value.__cause__ is None and caught.value.poll_error is None
    assert "failing" not in str(caught.value)


async def test_a_watch_through_an_outage_ends_each_task_with_the_error(
    make_server: MakeServer,
) -> None:
    # 120 API s = 0.3 s real at speed 400: room for a poll to land even under load.
    server = await make_server(EmulatorConfig(profile="kind"), speed=400)
    async with session_for(server, retry=ONCE, max_concurrency=32) as s:
        subs = [await s.submit(VideoRequest(f"{i}")) for i in range(5)]
        server.emulator.inject("task", *[Fault.http(503)] * 5000)
        with anyio.fail_after(30):
            timed = [u async for u in s.watch(subs, timeout=120) if u.final]
        assert len(timed) == 5
        assert all(u.timed_out and isinstance(u.error, ServerError) for u in timed)

        policy_gives_up = s.poll.give_up_after
        assert policy_gives_up == 600
        start = s.clock.now()
        with anyio.fail_after(30):
            ended = [u async for u in s.watch(subs) if u.final]
        assert len(ended) == 5
        assert all(not u.timed_out and isinstance(u.error, ServerError) for u in ended)
        assert s.clock.now() - start >= 600


async def test_failing_polls_warn_once_when_they_start_and_once_when_they_recover(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="apimart_async")
    server = await make_server(speed=500)
    async with session_for(server, retry=ONCE) as s:
        sub = await s.submit(VideoRequest("x"))
        server.emulator.inject("task", *[Fault.http(502)] * 6)
        with anyio.fail_after(30):
            task = await s.wait(sub)
    assert task.status is TaskStatus.COMPLETED
    assert server.emulator.pending_faults("task") == 0
    about = [r for r in caplog.records if sub.task_id in r.getMessage()
             and "poll" in r.getMessage()]
    assert [(r.levelno, "recovered" in r.getMessage()) for r in about] == [
        (logging.WARNING, False), (logging.WARNING, True),
    ], [r.getMessage() for r in about]


async def test_give_up_never_with_none(make_server: MakeServer) -> None:
    server = await make_server(speed=5000)
    server.emulator.inject("task", *[Fault.http(500)] * 400)
    policy = PollPolicy(give_up_after=None, max_interval=5.0)
    async with session_for(server, retry=ONCE, poll=policy) as s:
        sub = await s.submit(VideoRequest("x"))
        with anyio.fail_after(30):
            task = await s.wait(sub)
    # 400 polls at 5 s apart: ~2,000 API s of failures, well past the default 600.
    assert task.status is TaskStatus.COMPLETED


async def test_run_batch_keeps_a_task_whose_polls_gave_up_resumable(
    make_server: MakeServer, tmp_path: Path,
) -> None:
    # The task was paid for: an outage that outlasts give_up_after leaves the item
    # SUBMITTED, with the error as its reason, and a re-run fetches its video. The
    # faults begin once the tasks have been read (their last state is known), which is
    # when an item could be mistaken for a task that ended.
    server = await make_server(EmulatorConfig(profile="minutes"), speed=1000)
    policy = PollPolicy(give_up_after=60)
    seen: dict[int, int] = {}

    def on_change(result: ItemResult) -> None:
        if result.state is ItemState.SUBMITTED:
            seen[result.index] = seen.get(result.index, 0) + 1
            if seen[result.index] == 2 and server.emulator.pending_faults("task") == 0:
                server.emulator.inject("task", *[Fault.http(500)] * 3000)

    requests = [VideoRequest(f"video {i}") for i in range(3)]
    async with session_for(server, retry=ONCE, poll=policy) as s:
        with anyio.fail_after(30):
            report = await s.run_batch(requests, out_dir=tmp_path, on_change=on_change)
        assert report.unfinished == 3 and report.failed == 0
        for item in report.items:
            assert item.state is ItemState.SUBMITTED and item.task_id
            assert isinstance(item.error, ServerError)
            assert item.reason is not None and "polls kept failing" in item.reason
        while server.emulator.pending_faults("task"):  # the outage ends
            with contextlib.suppress(ServerError):
                await s.get_task(report.items[0].task_id)
        submissions = server.stats.submissions
        with anyio.fail_after(30):
            again = await s.run_batch(requests, out_dir=tmp_path)
    assert again.ok, [(i.state, i.reason) for i in again.items]
    assert server.stats.submissions == submissions  # nothing submitted twice


async def test_a_bug_in_the_poller_comes_out_of_the_session_once_not_as_a_group(
    make_server: MakeServer,
) -> None:
    # A policy corrupted after its checks (frozen attrs can be forced) makes every
    # worker's next_delay raise TypeError at about the same moment: the session must
    # raise that TypeError, once, not an ExceptionGroup of one per worker.
    server = await make_server(EmulatorConfig(profile="minutes"), speed=50)
    policy = PollPolicy()
    object.__setattr__(policy, "watch_interval", None)

    async def watch_all() -> None:
        async with session_for(server, poll=policy, max_concurrency=64) as s:
            subs = await s.submit_many([VideoRequest(f"{i}") for i in range(20)])
            async for _ in s.watch([sub for sub in subs if not isinstance(sub, Exception)]):
                pass

    with anyio.fail_after(30), pytest.raises(TypeError):
        await watch_all()


async def test_a_status_unknown_on_every_poll_gives_up_with_a_decode_error_naming_it(
) -> None:
    # #12: a task whose status is never one this SDK knows was polled forever, silently.
    # Consecutive unknown statuses count as failed polls for give_up_after (120 API s).
    clock = SteppedClock()  # API time moves between polls only: the machine's load is not in it
    policy = PollPolicy(give_up_after=120)
    async with EmulatorServer(EmulatorConfig(), clock=clock) as server, Session(
        KEY, base_url=server.base_url, clock=clock, retry=ONCE, poll=policy
    ) as s:
        server.emulator.inject("task", *[Fault.task_status("rendering-v9")] * 5000)
        sub = await s.submit(VideoRequest("x"))
        error = await stepped_until_raised(clock, lambda: s.wait(sub), DecodeError)
    assert "rendering-v9" in str(error)
    polls = [r.time for r in server.emulator.request_log if r.route == "task"]
    assert 119 <= polls[-1] - polls[0] <= 121, polls[-1] - polls[0]


async def test_a_single_unknown_status_between_known_ones_is_tolerated(
    make_server: MakeServer,
) -> None:
    # Forward compatibility: a new server state seen once (or for a while, within
    # give_up_after) does not end the watch.
    server = await make_server(speed=500)
    async with session_for(server, retry=ONCE) as s:
        sub = await s.submit(VideoRequest("x"))
        server.emulator.inject("task", Fault.task_status("rendering-v9"))
        with anyio.fail_after(30):
            task = await s.wait(sub)
    assert task.status is TaskStatus.COMPLETED
    assert server.emulator.pending_faults("task") == 0
