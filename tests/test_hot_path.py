"""The hot path over real sockets: reused per-task requests, many tasks in one watch."""

from __future__ import annotations

import gc
import sys
import weakref
from array import array
from collections import Counter

import attrs
import pytest

from apimart_async import NotFoundError, Submission, VideoRequest
from apimart_async.testing import EmulatorConfig, EmulatorServer, SteppedClock, TaskPlan

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio


async def test_an_id_that_needs_quoting_is_asked_for_as_itself(server: EmulatorServer) -> None:
    # Plain ids skip `quote`; this one may not: sent unquoted, "%41" would reach the
    # server as "A". The real task beside it is polled on its reused request to its end.
    odd = "a%41"
    async with session_for(server) as session:
        real = await session.submit(VideoRequest("x"))
        with pytest.raises(NotFoundError, match="a%41"):
            await session.get_task(odd)
        updates = [u async for u in session.watch([odd, real])]
    finals = {u.task_id: u for u in updates if u.final}
    assert set(finals) == {odd, real.task_id}
    assert isinstance(finals[odd].error, NotFoundError)
    assert finals[real.task_id].task is not None and finals[real.task_id].task.is_terminal
    polls = server.emulator.stats.polls
    assert polls[odd] == 2 and "aA" not in polls
    assert polls[real.task_id] >= 2  # the same prepared request, sent again


async def test_many_tasks_one_terminal_update_each(make_server: MakeServer) -> None:
    n = 400
    server = await make_server(EmulatorConfig(profile="linear"), speed=200)
    async with session_for(server, max_concurrency=32) as session:
        outcomes = await session.submit_many([VideoRequest(f"clip {i}") for i in range(n)])
        subs = [o for o in outcomes if isinstance(o, Submission)]
        assert len(subs) == n
        finals: Counter[str] = Counter()
        after_final = 0
        async for update in session.watch(subs):
            if update.task_id in finals:
                after_final += 1
            finals[update.task_id] += update.final
        poller = session._engine.poller_started
        assert poller is not None and poller.watched == 0  # ended tasks left the poller
    assert finals == Counter({s.task_id: 1 for s in subs})
    assert after_final == 0
    assert all(t.status == "completed" for t in server.emulator.tasks.values())


async def test_a_watch_keeps_no_ended_tasks_answer(server: EmulatorServer) -> None:
    # 100,000 watched tasks: the watch held every final `Task` until it was dropped.
    # Once handed on, an ended task's answer is the caller's alone.
    async with session_for(server) as session:
        quick = await session.submit(VideoRequest("quick"))
        slow = await session.submit(VideoRequest("slow"))
        server.emulator.replan(slow.task_id, TaskPlan(duration=10_000.0))
        async with session.watch([quick, slow]) as updates:
            async for update in updates:
                if update.task_id == quick.task_id and update.final:
                    assert update.task is not None
                    answer = weakref.ref(update.task)
                    break
            del update
            gc.collect()
            assert answer() is None


async def test_a_big_watch_leaves_no_tables_behind(make_server: MakeServer) -> None:
    # 100,000 watched tasks: a task's poll state waits for its first answer, and the
    # hand-over tables (submission time, model) and the poller's entries give back
    # their memory once emptied (a dict keeps its table after its last pop).
    n = 300
    server = await make_server(EmulatorConfig(profile="linear"), speed=200)
    async with session_for(server, max_concurrency=16) as session:
        subs = [o for o in await session.submit_many([VideoRequest(f"c{i}") for i in range(n)])
                if isinstance(o, Submission)]
        engine = session._engine
        poller = engine.poller
        # Submitted, not watched: one entry each is the whole hand-over (no tables of
        # submission times and models beside it), and none is polled.
        table = poller._table
        assert len(table) == n and poller.watched == 0 and not len(poller._queue)
        tables = [name for obj in (engine, poller, engine.transport, engine.limits)
                  for name, value in vars(obj).items()
                  if isinstance(value, (dict, list, set)) and len(value) >= n]
        assert tables == []  # the table's row is all
        assert all(table.models[row] for row in table.rows())
        finals = 0
        async with session.watch(subs) as updates:
            rows = list(table.rows())
            assert len(rows) == n
            assert all(table.poll[row] == -1 for row in rows)  # nothing polled yet
            del rows
            async for update in updates:
                finals += update.final
        assert finals == n
        assert poller.watched == 0
        assert not len(table) and not table.ids and not table.started
        assert sys.getsizeof(table._index) <= sys.getsizeof(array("i", bytes(32)))
        # The poll states' columns are given back with their last slot.
        running = poller._running
        assert len(running) == 0 and not running.polled_at and not running._floats
        assert not poller._inflight and not poller._errors and not poller._raw_status


async def test_a_watch_without_deadlines_keeps_nothing_per_task(make_server: MakeServer) -> None:
    # No timeout, no task_timeout: the watch holds no table of its tasks (the poller's
    # entry is the record), and still hands on exactly one final update per task and
    # nothing after it. With a deadline it tracks its tasks, and forgets each at its end.
    n = 200
    server = await make_server(EmulatorConfig(duration=(30.0, 40.0)), speed=20)
    async with session_for(server, max_concurrency=16) as session:
        for timeout in (None, 10_000.0):
            subs = [o for o in await session.submit_many(
                [VideoRequest(f"c{i}") for i in range(n)]) if isinstance(o, Submission)]
            finals: Counter[str] = Counter()
            after_final = progress = 0
            async with session.watch(subs, timeout=timeout) as updates:
                async for update in updates:
                    after_final += finals[update.task_id] > 0
                    finals[update.task_id] += update.final
                    progress += not update.final
                    tracked, last = len(updates._deadlines), len(updates._last)
                    if timeout is None:
                        assert tracked == last == 0
                    else:  # ended tasks leave
                        assert tracked == n - sum(finals.values()) >= last
            assert finals == Counter({s.task_id: 1 for s in subs}) and after_final == 0
            assert progress > 0  # the tasks were watched while running, not only at the end


async def test_get_task_reads_an_unchanged_answer_once_and_a_changed_one_again() -> None:
    # A loop asking about one task gets the same bytes while nothing changes: the same
    # (immutable) `Task` comes back without reading them again; any change is read.
    clock = SteppedClock()
    plan = TaskPlan(duration=10.0, queue_time=2.0, estimated_time=9.0)
    config = EmulatorConfig(planner=lambda body, index: plan)
    async with EmulatorServer(config, clock=clock) as server, session_for(
        server, clock=clock
    ) as session:
        sub = await session.submit(VideoRequest("x"))
        first = await session.get_task(sub)
        again = await session.get_task(sub.task_id)
        assert again is first and first.status == "pending"
        clock.advance(2 + 4)  # 4 s into an 8 s render
        moved = await session.get_task(sub)
        assert moved is not first
        assert (moved.status, moved.progress) == ("processing", 50)
        assert await session.get_task(sub) is moved
        clock.advance(10)
        done = await session.get_task(sub)
        assert done.status == "completed" and done.video_urls
        assert server.emulator.stats.polls[sub.task_id] == 5  # every call was sent


async def test_get_task_remembers_a_bounded_number_of_tasks(server: EmulatorServer) -> None:
    # Remembered answers are for a loop over a few tasks: asking about 300 different
    # tasks keeps the most recent 256, not all of them.
    async with session_for(server) as session:
        for i in range(300):
            with pytest.raises(NotFoundError):
                await session.get_task(f"task_{i}")
            if i >= 1:
                with pytest.raises(NotFoundError):
                    await session.get_task("task_0")  # asked again and again: kept
        gets = session._engine._recent_gets
        assert len(gets) == 256
        assert "task_299" in gets and "task_0" in gets and "task_1" not in gets
    assert session._engine._recent_gets == {}  # given back at close


def test_only_a_small_usual_answer_is_remembered() -> None:
    from apimart_async._core.wire import RememberingTaskGet

    usual = (b'{"code": 200, "data": {"id": "task_1", "status": "processing",'
             b' "progress": 5}}')
    get = RememberingTaskGet("task_1")
    assert get.parse(200, usual) is get.parse(200, usual)
    padded = usual + b" " * 5000  # the same answer, 5 KB on the wire
    assert get.parse(200, padded) is not get.parse(200, padded)


async def test_a_remembered_task_cannot_be_changed_by_its_caller() -> None:
    # `extra` is a read-only mapping, but the values in it are plain dicts: a Task with
    # extras is read afresh every time, so one caller's change to `usage` never reaches
    # the next call's answer.
    clock = SteppedClock()
    config = EmulatorConfig(planner=lambda body, index: TaskPlan(duration=10, queue_time=1))
    async with EmulatorServer(config, clock=clock) as server, session_for(
        server, clock=clock
    ) as session:
        sub = await session.submit(VideoRequest("x"))
        clock.advance(20)
        first = await session.get_task(sub)
        assert first.status == "completed" and "usage" in first.extra
        first.extra["usage"]["credits"] = 999
        again = await session.get_task(sub)
        assert again is not first and again.extra["usage"]["credits"] != 999


def test_a_submission_request_built_by_its_slots_is_the_checked_constructors() -> None:
    # build_submit fills the frozen class's slots itself: the result must be the very
    # request the keyword constructor builds, still frozen.
    from apimart_async._core.wire import SUBMIT_PATH, HttpRequest, build_submit

    request = VideoRequest("a fox", duration=10, extra={"resolution": "1080p"})
    built = build_submit(request, idempotency_key="k-1")
    assert built == HttpRequest(
        method="POST", path=SUBMIT_PATH, json=request.to_body(),
        headers={"Idempotency-Key": "k-1"},
        idempotent=False,
    )
    assert built.params == {}
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.path = "/elsewhere"  # type: ignore[misc]


async def test_a_watch_drops_repeated_ids_without_a_table_of_them(
    server: EmulatorServer,
) -> None:
    # Repeats (a Submission and its id, the same id twice) are watched once, first
    # place kept. Without repeats (nearly always) no dict of the ids is built to find
    # out: at 100,000 ids that dict's ~5 MB stayed in the RSS at the watch's start.
    import tracemalloc

    async with session_for(server) as session:
        a = await session.submit(VideoRequest("a"))
        b = await session.submit(VideoRequest("b"))
        watch = session.watch([b, a.task_id, b.task_id, a])
        updates = [u async for u in watch]
        assert [u.task_id for u in updates if u.final] in (
            [b.task_id, a.task_id], [a.task_id, b.task_id])
        assert sum(u.final for u in updates) == 2
        ids = [f"task_{i:06d}" for i in range(20_000)][::-1]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            watch = session.watch(ids)
            grew = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert grew < 20_000 * 24  # two lists of ids (8 bytes an id each), no dict
        await watch.aclose()
