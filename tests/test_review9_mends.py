"""Review 9: a watch left waiting when its session closes, and the cost of a watch's end."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from apimart_async import Submission, TaskTimeoutError, VideoRequest
from apimart_async.testing import EmulatorConfig, TaskPlan

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio

# A guard only: each of these ends in a few loop turns; without the mend it hung.
GUARD = 30.0


async def test_a_wait_in_another_task_raises_when_the_session_closes(
    make_server: MakeServer,
) -> None:
    # README: using a Session outside its `async with` raises RuntimeError. A `wait`
    # still waiting in another task when the session closed waited for ever: nothing
    # polls any more, and nothing woke it.
    server = await make_server(EmulatorConfig(duration=(5_000.0, 6_000.0)), speed=100)
    raised: list[BaseException] = []

    async def waiter(session: Any, sub: Submission) -> None:
        try:
            await session.wait(sub)
        except RuntimeError as exc:
            raised.append(exc)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg, session_for(server) as session:
            sub = await session.submit(VideoRequest("a fox"))
            tg.start_soon(waiter, session, sub)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
    assert len(raised) == 1 and "session was closed" in str(raised[0])


async def test_a_watch_kept_past_its_session_hands_on_what_came_then_raises(
    make_server: MakeServer,
) -> None:
    server = await make_server(EmulatorConfig(duration=(5_000.0, 6_000.0)), speed=200)
    with anyio.fail_after(GUARD):
        async with session_for(server) as session:
            subs = [await session.submit(VideoRequest(f"clip {i}")) for i in range(2)]
            updates = session.watch(subs)
            first = await updates.__anext__()
            # Both tasks' first answers (queued, or soon): let the second arrive.
            while len(updates._queue) < 1:
                await anyio.lowlevel.checkpoint()
        later = []

        async def drain() -> None:
            async for update in updates:
                later.append(update)

        with pytest.raises(RuntimeError, match="session was closed"):
            await drain()
    assert first.task_id != later[0].task_id and len(later) == 1


async def test_the_end_of_a_watch_looks_only_at_its_own_tasks(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One `wait` per task among many: each watch's end looked through every task of
    # the session (quadratic: 8,000 concurrent waits took 13.5 s of CPU). A watch that
    # saw every final, one with deadlines, and a small one closed early unsubscribe by
    # task id; only a big watch without deadlines closed early looks through them all.
    server = await make_server(EmulatorConfig(duration=(20.0, 30.0)), speed=200)
    async with session_for(server, max_concurrency=16) as session:
        subs = [o for o in await session.submit_many(
            [VideoRequest(f"c{i}") for i in range(100)]) if isinstance(o, Submission)]
        server.emulator.replan(subs[1].task_id, TaskPlan(duration=10_000.0))
        poller = session._engine.poller
        calls: list[list[str] | None] = []
        unsubscribe = poller.unsubscribe

        def spy(subscriber: Any, task_ids: list[str] | None = None) -> None:
            calls.append(None if task_ids is None else list(task_ids))
            unsubscribe(subscriber, task_ids)

        monkeypatch.setattr(poller, "unsubscribe", spy)
        await session.wait(subs[0])
        with pytest.raises(TaskTimeoutError):
            await session.wait(subs[1], timeout=5.0)
        async with session.watch(subs[2:5]) as updates:
            async for _ in updates:
                break
        assert None not in calls
        assert calls[-1] is not None and set(calls[-1]) == {s.task_id for s in subs[2:5]}
        async with session.watch(subs[5:]) as updates:
            async for _ in updates:
                break
        assert calls[-1] is None  # 95 tasks, no deadline: the one look through all


class OneBusyWorker:
    """A poller with one worker on a stepped clock, whose fetch of task "a" holds that
    worker until `release` is set: whatever is due meanwhile waits for it."""

    def __init__(self) -> None:
        from apimart_async._core.polling import PollPolicy
        from apimart_async._engine.poller import Poller
        from apimart_async.testing import SteppedClock

        self.clock = SteppedClock()
        self.fetched: list[str] = []
        self.holding = anyio.Event()  # the worker is in a's fetch
        self.release = anyio.Event()
        self.poller = Poller(fetch=self._fetch, policy=PollPolicy(), clock=self.clock,
                             workers=1)

    async def _fetch(self, get: Any) -> Any:
        from apimart_async._core.models import Task, TaskStatus

        self.fetched.append(get.task_id)
        if get.task_id == "a":
            self.holding.set()
            await self.release.wait()
        return Task(id=get.task_id, status=TaskStatus.PROCESSING, progress=5)

    @staticmethod
    def watcher(update: object) -> None:
        pass


async def turns() -> None:
    """Enough loop turns for the poller's schedule and worker to act on what changed."""
    for _ in range(100):
        await anyio.lowlevel.checkpoint()


async def test_a_task_unwatched_while_it_waits_for_a_worker_is_not_polled() -> None:
    # Review 10: a watch ending while one of its tasks' ids waited for a busy worker
    # (the schedule had taken its queue item): a task this session submitted and never
    # polled keeps its row with no subscriber, and the worker polled it anyway, then
    # kept rescheduling it until it ended (and the count of unwatched tasks drifted).
    busy = OneBusyWorker()
    poller, clock, watcher = busy.poller, busy.clock, busy.watcher
    async with anyio.create_task_group() as tg:
        poller.bind(tg)
        clock.advance(10.0)
        poller.expect("a", "sora-2", 1.0)
        poller.expect("b", "sora-2", 1.0)
        poller.subscribe(watcher, "a", started_at=None)
        poller.subscribe(watcher, "b", started_at=None)
        clock.advance(120.0)
        await busy.holding.wait()
        await turns()
        assert busy.fetched == ["a"]  # the one worker is busy; b's id waits for it
        poller.unsubscribe(watcher, ["b"])
        busy.release.set()
        await turns()
        clock.advance(600.0)
        await turns()
        assert "b" not in busy.fetched
        assert poller.watched == 1 and poller._unwatched == 1 and len(poller._table) == 2
        tg.cancel_scope.cancel()


async def test_a_row_handed_to_another_task_while_queued_for_a_worker_is_not_polled() -> None:
    # The schedule hands a worker a row and its arrival number. A task dropped while its
    # row waited for the busy worker, and the row given to a new task meanwhile: the
    # worker must not poll the new task then (its first poll is due later).
    busy = OneBusyWorker()
    poller, clock, watcher = busy.poller, busy.clock, busy.watcher
    async with anyio.create_task_group() as tg:
        poller.bind(tg)
        clock.advance(10.0)
        poller.subscribe(watcher, "a", started_at=None)
        poller.subscribe(watcher, "b", started_at=None)
        await busy.holding.wait()
        await turns()
        assert busy.fetched == ["a"]  # b's row waits for the one worker
        row = poller._table.find("b")
        poller.unsubscribe(watcher, ["b"])  # not this session's: dropped, row freed
        poller.subscribe(watcher, "c", started_at=clock.now())
        assert poller._table.find("c") == row
        busy.release.set()
        await turns()
        assert busy.fetched == ["a"]  # c waits for its first delay
        tg.cancel_scope.cancel()
