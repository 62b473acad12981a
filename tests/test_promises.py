"""Promises the README makes, each pinned by a test that fails when the promise breaks.

Stopping a stream stops its billing, deadlines stop unsent work, an ambiguous POST is
never repeated, plain http goes only to loopback, a fatal answer stops items that were
waiting for a slot, and the poller delivers each change once and each end once.
Counts are read from the emulator: what reached the server, not what we meant to send.
"""

from __future__ import annotations

import errno
from typing import Any

import aiohttp
import anyio
import pytest

from apimart_async import (
    APIConnectionError,
    EventKind,
    InsufficientBalanceError,
    NotSubmittedError,
    PollPolicy,
    RetryPolicy,
    Session,
    TaskUpdate,
    ValidationError,
    VideoRequest,
)
from apimart_async._io.http import translate
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, TaskPlan

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio


def requests(n: int, prefix: str = "clip") -> list[VideoRequest]:
    return [VideoRequest(f"{prefix} {i}") for i in range(n)]


def created(server: EmulatorServer, prefix: str) -> int:
    """Tasks the server created (and billed) for prompts starting with `prefix`."""
    return sum(t.body["prompt"].startswith(prefix) for t in server.emulator.tasks.values())


# -- leaving a stream, and its deadline, stop the billing ---------------------------------

async def test_leaving_a_stream_early_stops_submitting_the_rest(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(latency=0.02, duration=(500, 600)))
    async with session_for(server, max_concurrency=2) as s:
        async with s.stream(requests(40)) as events:
            async for event in events:
                if event.kind is EventKind.SUBMITTED:
                    break
        at_exit = created(server, "clip")
        # The session goes on working (sharing its two slots); the abandoned stream
        # must not take any of them to submit, and bill, more of its items.
        others = await s.submit_many(requests(20, "other"))
    assert created(server, "other") == 20 and len(others) == 20
    # At most the submissions already on the wire when the stream closed get through.
    assert created(server, "clip") <= at_exit + s.max_concurrency < 10


async def test_whole_stream_deadline_stops_unsent_submissions(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(latency=0.05, duration=(500, 600)))
    async with session_for(server, max_concurrency=2) as s:
        # 40 items at 2 x 20/s take ~1 s; the deadline is 5 API s = 0.1 s real.
        events = [e async for e in s.stream(requests(40), timeout=5)]
        await s.submit_many(requests(20, "other"))  # time for stragglers to show
    finals = [e for e in events if e.final]
    assert sorted(e.index for e in finals) == list(range(40))
    assert all(e.kind is EventKind.TIMED_OUT for e in finals)
    sent = created(server, "clip")
    assert sent <= 20, f"{sent} of 40 items were still submitted after the deadline"
    # Every item that was billed is reported with its task id.
    assert sent == sum(e.task_id is not None for e in finals)


# -- an ambiguous POST is never repeated ---------------------------------------------------

@pytest.mark.parametrize(
    ("fault", "tasks"),
    [(Fault.reset(hard=True), 0), (Fault.lost_answer(hard=True), 1)],
    ids=["rst-before-acting", "rst-after-billing"],
)
async def test_connection_reset_after_sending_makes_a_post_ambiguous(
    server: EmulatorServer, fault: Fault, tasks: int
) -> None:
    server.emulator.inject("submit", fault)
    async with session_for(server) as s:
        with pytest.raises(APIConnectionError) as info:
            await s.submit(VideoRequest("x"))
    # A TCP RST reaches aiohttp as a bare ClientOSError (ECONNRESET), not as
    # ServerDisconnectedError: this is the path under test.
    assert "ClientOSError" in str(info.value)
    assert info.value.request_sent and info.value.submission_ambiguous
    assert server.stats.requests["submit"] == 1  # never sent twice
    assert server.stats.submissions == tasks and server.stats.duplicate_submissions == 0


async def test_connection_reset_on_a_get_is_retried(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x"))
        server.emulator.inject("task", Fault.reset(hard=True))
        assert (await s.get_task(sub)).id == sub.task_id
    assert server.stats.polls[sub.task_id] == 2


@pytest.mark.parametrize(
    ("exc", "sent"),
    [
        (aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"), True),
        (aiohttp.ClientOSError(errno.EPIPE, "Broken pipe"), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientConnectorError(
            aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
            OSError(errno.ECONNREFUSED, "refused"),
        ), False),
    ],
    ids=["oserror-reset", "oserror-pipe", "bare-reset", "disconnected", "refused"],
)
def test_only_a_failure_to_connect_counts_as_not_sent(exc: Exception, sent: bool) -> None:
    assert translate(exc).request_sent is sent


# -- plain http only to loopback ------------------------------------------------------------

@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1.evil.example",
        "http://127.0.0.1.evil.example:8080/v1",
        "http://localhost.evil.example",
        "http://localhost.evil.example:1",
        "http://127.evil.example",
        "http://[::1].evil.example",
        "http://127.0.0.1:80@evil.example",
        "http://localhost@evil.example",
        "http://[::2]",
        "http://0x7f000001",
    ],
)
def test_plain_http_to_look_alikes_of_loopback_is_refused(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Session(KEY, base_url=url)
    assert info.value.field == "base_url"


@pytest.mark.parametrize(
    "url", ["http://[::1]", "http://[::1]:8089/v1", "http://127.0.0.1", "http://LOCALHOST:9"]
)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    Session(KEY, base_url=url)


# -- the gate is checked after waiting for a slot --------------------------------------------

async def test_a_fatal_answer_stops_items_already_waiting_for_their_slot(
    make_server: MakeServer,
) -> None:
    server = await make_server(EmulatorConfig(balance=0))
    # Four workers pass the first check at once, then wait for their paced slots
    # (1 API second apart: 20 ms at the test clock's speed); the 402 to the first
    # arrives while the others wait. Pacing runs on the session's clock.
    async with session_for(server, max_concurrency=4, rps=1) as s:
        outcomes = await s.submit_many(requests(12))
    assert server.stats.requests["submit"] == 1
    assert isinstance(outcomes[0], InsufficientBalanceError)
    assert all(isinstance(o, NotSubmittedError) for o in outcomes[1:])


# -- the poller: each change once, each end once, backing off from failures -----------------

async def _follow(s: Session, task_id: str) -> list[TaskUpdate]:
    """Every update the session's poller delivers for `task_id`, to its end."""
    got: list[TaskUpdate] = []
    done = anyio.Event()

    def on_update(update: TaskUpdate) -> None:
        got.append(update)
        if update.final:
            done.set()

    s._engine.poller.subscribe(on_update, task_id, started_at=None)
    with anyio.fail_after(20):
        await done.wait()
    return got


async def test_poller_never_repeats_an_unchanged_state_nor_an_end(
    make_server: MakeServer,
) -> None:
    # No progress reported: most polls see exactly what the previous one saw.
    plan = TaskPlan(duration=20, estimated_time=20, report_progress=False)
    server = await make_server(EmulatorConfig(planner=lambda body, i: plan))
    policy = PollPolicy(first_delay=0.5, min_interval=0.5, max_interval=1.0)
    async with session_for(server, poll=policy) as s:
        sub = await s.submit(VideoRequest("x"))
        got = await _follow(s, sub.task_id)
        polls = server.stats.polls[sub.task_id]
        await server.emulator.clock.sleep(5)  # room for more polls, were it still polling
    assert polls >= 5  # many polls, few changes
    states = [(u.status, u.progress) for u in got]
    assert len(states) == len(set(states)), states
    assert [u.final for u in got] == [False] * (len(got) - 1) + [True]
    assert got[-1].completed
    assert server.stats.polls[sub.task_id] == polls  # nothing polled after the end


async def test_poller_backs_off_from_a_failing_host(make_server: MakeServer) -> None:
    plan = TaskPlan(duration=1000, estimated_time=1000, report_progress=False)
    server = await make_server(EmulatorConfig(planner=lambda body, i: plan))
    policy = PollPolicy(first_delay=1.0, min_interval=0.5, max_interval=30.0)
    # One attempt per poll, so every injected 500 is a failed poll for the poller.
    async with session_for(server, poll=policy, retry=RetryPolicy(max_attempts=1)) as s:
        sub = await s.submit(VideoRequest("x"))
        server.emulator.inject("task", *[Fault.http(500)] * 50)
        seen: list[Any] = []
        s._engine.poller.subscribe(seen.append, sub.task_id, started_at=None)
        await server.emulator.clock.sleep(30)
        failed = 50 - server.emulator.pending_faults("task")
    # Every 0.5 s would be 60 polls in 30 s; doubling from 0.5 s is about 6.
    assert 3 <= failed <= 10, failed
    assert seen == []  # a transient failure is not an update
