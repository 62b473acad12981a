"""`apimart_async.sync`: the blocking facade, over real sockets against the emulator.

The emulator runs on its own event loop in a thread (as the pytest plugin's
``apimart_sync_server`` does): a blocking call must not share a loop with its server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from apimart_async import (
    AuthenticationError,
    BatchEvent,
    EventKind,
    NotFoundError,
    Submission,
    Task,
    TaskFailedError,
    TaskStatus,
    TaskUpdate,
    ValidationError,
    VideoRequest,
)
from apimart_async.sync import CALL_TASK, CLOSE_THREAD, LOOP_THREAD, Session
from apimart_async.testing import Clock, EmulatorConfig, EmulatorServer, TaskPlan

from .conftest import KEY


class Threaded:
    """An emulator served from its own loop thread."""

    def __init__(self, portal: BlockingPortal, server: EmulatorServer) -> None:
        self.portal = portal
        self.server = server

    def session(self, **kwargs: object) -> Session:
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("clock", self.server.emulator.clock)
        return Session(base_url=self.server.base_url, **kwargs)  # type: ignore[arg-type]


def _serve(config: EmulatorConfig | None = None, *, speed: float = 50) -> Iterator[Threaded]:
    with start_blocking_portal("asyncio") as portal:
        server = EmulatorServer(config, clock=Clock(speed=speed))
        with portal.wrap_async_context_manager(server):
            yield Threaded(portal, server)


@pytest.fixture
def threaded() -> Iterator[Threaded]:
    yield from _serve()


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


def test_round_trip_blocks_and_returns_the_async_types(threaded: Threaded, tmp_path: Path) -> None:
    with threaded.session() as s:
        sub = s.submit(VideoRequest("a red fox"))
        assert isinstance(sub, Submission)
        assert isinstance(s.get_task(sub), Task)
        task = s.wait(sub)
        assert task.status is TaskStatus.COMPLETED
        result = s.download(task, tmp_path)
        assert result.path.read_bytes() == threaded.server.emulator.video(
            threaded.server.emulator.record(sub.task_id)  # type: ignore[arg-type]
        )
        assert s.stats.submissions == 1


def test_errors_cross_as_the_same_classes(tmp_path: Path) -> None:
    for threaded in _serve(EmulatorConfig(api_key=KEY, fail_rate=1.0)):
        with threaded.session() as s:
            with pytest.raises(NotFoundError) as not_found:
                s.get_task("task_missing")
            assert type(not_found.value) is NotFoundError
            with pytest.raises(ValidationError, match="request"):
                s.submit("a red fox")  # type: ignore[arg-type]
            with pytest.raises(TaskFailedError) as failed:
                s.wait(s.submit(VideoRequest("a red fox")))
            assert failed.value.task.status is TaskStatus.FAILED
        with threaded.session(api_key="sk-wrong-key-0123456789") as s, \
                pytest.raises(AuthenticationError):
            s.submit(VideoRequest("a red fox"))


def test_bad_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValidationError, match="max_concurrency"):
        Session(KEY, base_url="http://127.0.0.1:1", max_concurrency=0)
    assert _loop_threads() == []


def test_watch_and_stream_are_blocking_iterators(threaded: Threaded) -> None:
    with threaded.session() as s:
        sub = s.submit(VideoRequest("a red fox"))
        with s.watch([sub]) as updates:
            seen = list(updates)
        assert all(isinstance(u, TaskUpdate) for u in seen)
        assert [u.final for u in seen][-1] is True and sum(u.final for u in seen) == 1
        events = list(s.stream([VideoRequest("one"), VideoRequest("two")]))
        assert all(isinstance(e, BatchEvent) for e in events)
        finals = sorted(e.index for e in events if e.kind is EventKind.COMPLETED)
        assert finals == [0, 1]


def test_run_batch_and_submit_many(threaded: Threaded, tmp_path: Path) -> None:
    with threaded.session() as s:
        outcomes = s.submit_many([VideoRequest("one"), VideoRequest("two")])
        assert all(isinstance(o, Submission) for o in outcomes)
        seen: list[str] = []
        report = s.run_batch([VideoRequest("three")], out_dir=tmp_path,
                             on_change=lambda r: seen.append(threading.current_thread().name))
        assert report.items[0].path is not None and report.items[0].path.exists()
        assert set(seen) == {LOOP_THREAD}  # on_change runs on the session's loop thread


def test_balance_and_max_spend(tmp_path: Path) -> None:
    from apimart_async import Balance

    for threaded in _serve(EmulatorConfig(balance=10)):  # 1 per task by default
        with threaded.session() as s:
            balance = s.balance()
            assert isinstance(balance, Balance) and balance.remain == 10
            requests = [VideoRequest(f"item {i}") for i in range(3)]
            report = s.run_batch(requests, out_dir=tmp_path, max_spend=2)
        assert threaded.server.stats.submissions == 2  # the cap held: one item left pending
        assert sum(item.path is not None for item in report.items) == 2


def test_hooks_and_progress_every_reach_the_async_session(threaded: Threaded) -> None:
    from apimart_async import Hooks

    threads: list[str] = []
    hooks = Hooks(on_request=lambda event: threads.append(threading.current_thread().name))
    with threaded.session(hooks=hooks) as s:
        sub = s.submit(VideoRequest("a red fox"))
        threaded.server.emulator.replan(sub.task_id, TaskPlan(duration=60))
        polls_before = threaded.server.stats.polls[sub.task_id]
        with s.watch([sub], progress_every=2) as updates:
            progress = [u.progress for u in updates]
    # 60 s at a 2 s resolution: ~30 polls and updates, not the frugal handful (4 without
    # progress_every); 10 leaves room for polls slowed by a loaded machine (40 ms apart).
    assert threaded.server.stats.polls[sub.task_id] - polls_before >= 10
    assert len(progress) >= 10
    assert threads and set(threads) == {LOOP_THREAD}  # hooks run on the loop thread


def test_run_batch_stop_is_a_threading_event(threaded: Threaded, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with threaded.session() as s:
        report = s.run_batch([VideoRequest("one")], out_dir=tmp_path, stop=stop)
    assert report.interrupted
    assert threaded.server.stats.submissions == 0


def test_calls_from_another_thread(threaded: Threaded) -> None:
    outcome: list[object] = []
    with threaded.session() as s:
        def work() -> None:
            outcome.append(s.wait(s.submit(VideoRequest("from a thread"))).status)

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    assert outcome == [TaskStatus.COMPLETED]


def test_calls_from_inside_a_running_event_loop(threaded: Threaded) -> None:
    # A notebook cell: the caller's thread runs an event loop of its own.
    async def cell() -> TaskStatus:
        assert asyncio.get_running_loop().is_running()
        with threaded.session() as s:
            task = s.wait(s.submit(VideoRequest("in a notebook")))
            with pytest.raises(NotFoundError):
                s.get_task("task_missing")
            return task.status

    assert asyncio.run(cell()) is TaskStatus.COMPLETED
    assert _loop_threads() == []


def test_first_call_opens_and_close_stops_the_thread_idempotently(threaded: Threaded) -> None:
    s = threaded.session()
    assert _loop_threads() == []  # nothing started by construction
    s.submit(VideoRequest("no with"))
    assert len(_loop_threads()) == 1
    s.close()
    assert _loop_threads() == []  # joined, not merely told to stop
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.submit(VideoRequest("after close"))
    with pytest.raises(RuntimeError, match="opened already"), s:
        pass


def test_entering_twice_is_refused(threaded: Threaded) -> None:
    with threaded.session() as s:
        with pytest.raises(RuntimeError, match="opened already"), s:
            pass
        assert s.get_task(s.submit(VideoRequest("still open"))).id
    assert _loop_threads() == []


needs_pthread_kill = pytest.mark.skipif(not hasattr(signal, "pthread_kill"),
                                        reason="Ctrl-C is sent with signal.pthread_kill")


@needs_pthread_kill
def test_keyboard_interrupt_cancels_the_call_in_flight(threaded: Threaded) -> None:
    emulator = threaded.server.emulator
    main = threading.get_ident()
    with threaded.session() as s:
        sub = s.submit(VideoRequest("forever"))
        emulator.replan(sub.task_id, TaskPlan(duration=1e9))
        portal = s._loop.portal
        assert portal is not None

        def calls_on_loop() -> int:
            return sum(t.get_name() == CALL_TASK for t in asyncio.all_tasks())

        def interrupt_when_polled() -> None:
            # Once the wait has polled twice, it is surely in flight: Ctrl-C the caller.
            while emulator.stats.polls[sub.task_id] < 2:
                threading.Event().wait(0.001)
            signal.pthread_kill(main, signal.SIGINT)

        helper = threading.Thread(target=interrupt_when_polled)
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            s.wait(sub)
        helper.join()
        # The wait's task has unwound: no call is left running on the session's loop.
        assert portal.call(calls_on_loop) == 0
        assert s.get_task(sub).status is TaskStatus.PROCESSING  # still usable
    assert _loop_threads() == []


def test_a_session_dropped_open_warns_and_stops_its_thread(threaded: Threaded) -> None:
    import gc

    s = threaded.session()
    s.submit(VideoRequest("never closed"))
    assert len(_loop_threads()) == 1
    with pytest.warns(ResourceWarning, match="unclosed"):
        del s  # the last reference: collected at once
    gc.collect()
    assert _loop_threads() == []


def test_close_cancels_calls_in_flight_in_other_threads(threaded: Threaded) -> None:
    emulator = threaded.server.emulator
    s = threaded.session()
    sub = s.submit(VideoRequest("forever"))
    emulator.replan(sub.task_id, TaskPlan(duration=1e9))
    errors: list[BaseException] = []

    def wait_forever() -> None:
        try:
            s.wait(sub)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=wait_forever)
    worker.start()
    while emulator.stats.polls[sub.task_id] < 1:  # the wait is in flight
        threading.Event().wait(0.001)
    s.close()  # does not hang on the wait that would never end
    worker.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "closed" in str(errors[0])
    assert _loop_threads() == []


def _public_names() -> list[str]:
    from apimart_async import Session as AsyncSession

    return ["__init__", *sorted(n for n in dir(AsyncSession) if not n.startswith("_"))]


@pytest.mark.parametrize("name", _public_names())
def test_same_names_and_arguments_as_the_async_session(name: str) -> None:
    import inspect

    from apimart_async import Session as AsyncSession

    assert hasattr(Session, name), f"sync Session lacks {name}"
    mine, theirs = getattr(Session, name), getattr(AsyncSession, name)
    if isinstance(theirs, property):
        assert isinstance(mine, property)
        return
    expected = inspect.signature(theirs).parameters
    got = inspect.signature(mine).parameters
    # An aiohttp session belongs to one event loop: the sync session runs its own.
    missing = set(expected) - set(got) - ({"http_session"} if name == "__init__" else set())
    assert not missing, f"sync Session.{name} lacks {sorted(missing)}"
    assert set(got) <= set(expected)
    for param, spec in got.items():
        assert spec.kind == expected[param].kind, param
        assert spec.default == expected[param].default, param


@needs_pthread_kill
def test_keyboard_interrupt_in_a_blocking_watch_stops_its_polling(threaded: Threaded) -> None:
    emulator = threaded.server.emulator
    main = threading.get_ident()
    with threaded.session() as s:
        sub = s.submit(VideoRequest("forever"))
        emulator.replan(sub.task_id, TaskPlan(duration=1e9))
        updates = s.watch([sub], progress_every=0.5)  # a poll every 10 ms of real time

        def interrupt_when_polled() -> None:
            while emulator.stats.polls[sub.task_id] < 3:
                threading.Event().wait(0.001)
            signal.pthread_kill(main, signal.SIGINT)

        helper = threading.Thread(target=interrupt_when_polled)
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            for _ in updates:  # a plain for, no with: the interrupt alone must close it
                pass
        helper.join()
        after = emulator.stats.polls[sub.task_id]
        # A task of ~6 API s, followed to its end: the forever task would be polled
        # dozens of times meanwhile if the interrupted watch still followed it.
        other = s.submit(VideoRequest("short"))
        emulator.replan(other.task_id, TaskPlan(duration=6))
        s.wait(other)
        assert emulator.stats.polls[sub.task_id] <= after + 1  # at most one in flight
        assert list(updates) == []  # and the iterator is over


def test_a_stepped_clock_advanced_from_the_test_thread_ends_the_sessions_waits() -> None:
    # The waits run on the session's loop thread; advance() comes from this one. It used
    # to cancel their scopes from here (RuntimeError: no running event loop) after having
    # forgotten them, so the wait slept for good and close() hung.
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import wait as wait_for

    from apimart_async.testing import SteppedClock

    clock = SteppedClock()
    config = EmulatorConfig(planner=lambda body, index: TaskPlan(duration=10, queue_time=2))
    with start_blocking_portal("asyncio") as portal:
        server = EmulatorServer(config, clock=clock)
        with portal.wrap_async_context_manager(server), Session(
            KEY, base_url=server.base_url, clock=clock
        ) as s, ThreadPoolExecutor(1) as pool:
            sub = s.submit(VideoRequest("fox"))
            done = pool.submit(s.wait, sub, timeout=600)
            while not done.done() and clock.now() < 600:
                clock.advance(0.5)
                wait_for([done], timeout=0.01)  # real time for the loop thread to react
            task = done.result(timeout=5)
            assert task.status is TaskStatus.COMPLETED
            assert 10 <= clock.now() < 600  # woken by the poller's waits, not the timeout


def test_close_is_bounded_when_a_call_never_unwinds(threaded: Threaded) -> None:
    from apimart_async import Hooks

    entered, release = threading.Event(), threading.Event()

    def stuck(event: object) -> None:
        entered.set()
        release.wait()  # blocks the session's loop thread: nothing can cancel it

    s = threaded.session(hooks=Hooks(on_request=stuck))
    caller = threading.Thread(target=lambda: suppress_all(s.submit, VideoRequest("fox")))
    caller.start()
    assert entered.wait(10)
    with pytest.raises(ValidationError, match="timeout"):
        s.close(timeout=0)
    with pytest.raises(RuntimeError, match=r"did not stop within 0\.2 s of close\(\)"):
        s.close(timeout=0.2)
    s.close()  # closed already: nothing more to do
    release.set()
    caller.join(10)
    for thread in threading.enumerate():
        if thread.name in (LOOP_THREAD, CLOSE_THREAD):
            thread.join(10)
    assert _loop_threads() == []


def suppress_all(fn: object, *args: object) -> None:
    with contextlib.suppress(BaseException):
        fn(*args)  # type: ignore[operator]


def test_the_blocking_watch_refuses_a_single_id_instead_of_its_characters(
    threaded: Threaded,
) -> None:
    with threaded.session() as s:
        sub = s.submit(VideoRequest("a red fox"))
        for one in (sub.task_id, sub):
            with pytest.raises(ValidationError, match="tasks"):
                s.watch(one)  # type: ignore[arg-type]


def test_the_blocking_submit_many_refuses_one_request_by_name(threaded: Threaded) -> None:
    with threaded.session() as s:
        for requests in (VideoRequest("a red fox"), None):
            with pytest.raises(ValidationError, match="requests"):
                s.submit_many(requests)  # type: ignore[arg-type]
