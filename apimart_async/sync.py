"""A blocking facade over the async `Session`, for scripts and notebooks.

    from apimart_async import VideoRequest
    from apimart_async.sync import Session

    with Session() as session:                     # key from APIMART_API_KEY
        sub = session.submit(VideoRequest("a red fox in the snow", duration=5))
        task = session.wait(sub)
        session.download(task, "fox.mp4")

Same method names, arguments, return types and errors as `apimart_async.Session`;
the work is done by that async session, on an event loop in a private thread the
sync session owns (started on ``with`` or first use, stopped and joined by `close`).
Each call blocks the calling thread only, so it works in a plain script, from any
thread, and inside a running event loop (a notebook cell); KeyboardInterrupt cancels
the operation in flight, waits for it to unwind, and is raised again.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Future
from contextlib import AbstractContextManager, ExitStack, suppress
from os import PathLike
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._batch.report import BatchItem, BatchReport, ItemResult, WorkerOutcome
from ._core.balance import Balance
from ._core.config import DownloadPolicy, Timeout
from ._core.errors import APIMartError, ValidationError
from ._core.events import BatchEvent, TaskUpdate
from ._core.hooks import Hooks
from ._core.models import Submission, Task, VideoRequest
from ._core.polling import PollPolicy
from ._core.retry import RetryPolicy
from ._engine.streams import BatchStream as AsyncBatchStream
from ._engine.streams import Watch as AsyncWatch
from ._io.clock import Clock
from ._io.download import DownloadResult
from ._io.stats import SessionStats
from ._session import Session as AsyncSession

__all__ = ["BatchStream", "Session", "Watch"]

T = TypeVar("T")
E = TypeVar("E", TaskUpdate, BatchEvent)

# How often (real seconds) a sync run_batch looks at its threading.Event `stop`: a
# threading.Event cannot wake an event loop, and a waiter thread would outlive the run.
_STOP_CHECK = 0.05

# The name of the loop task running each blocking call (for debuggers and tests).
CALL_TASK = "apimart-sync-call"


LOOP_THREAD = "apimart-sync-loop"
"""The name of a sync session's event loop thread."""

CLOSE_THREAD = "apimart-sync-close"
"""The name of the thread `Session.close` stops the loop from (joined with a timeout)."""

CLOSE_TIMEOUT = 30.0
"""`Session.close`'s default bound, in real seconds, on stopping the calls in flight."""


def _name_thread() -> int:
    # Named here, not through start_blocking_portal(name=): anyio >= 4.4 is all we require.
    thread = threading.current_thread()
    thread.name = LOOP_THREAD
    return thread.ident or 0


class _Loop:
    """The event loop thread of one sync session, and the one way to run work on it."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self.portal: BlockingPortal | None = None
        self.thread_id: int | None = None
        # The calls in flight (from any thread): close cancels them and waits them out.
        self._calls: dict[Future[Any], threading.Event] = {}
        self._calls_lock = threading.Lock()
        self._closing = False

    def start(self) -> BlockingPortal:
        self.portal = self._stack.enter_context(start_blocking_portal("asyncio"))
        self.thread_id = self.portal.call(_name_thread)
        return self.portal

    def cancel_calls(self) -> None:
        """Refuse new calls; cancel those in flight and wait until they have unwound."""
        with self._calls_lock:
            self._closing = True
            calls = list(self._calls.items())
        for future, unwound in calls:
            future.cancel()
            unwound.wait()

    def stop(self) -> None:
        # Stops the loop and joins its thread.
        self.portal = None
        self._stack.close()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the loop and wait for it; on KeyboardInterrupt (or
        any exception in this thread) cancel it and wait until it has unwound."""
        unwound = threading.Event()

        async def guarded() -> T:
            try:
                return await fn(*args)
            finally:
                unwound.set()

        with self._calls_lock:
            portal = self.portal
            if portal is None or self._closing:
                raise RuntimeError("the sync session is closed: create a new Session")
            future: Future[T] = portal.start_task_soon(guarded, name=CALL_TASK)
            self._calls[future] = unwound
        try:
            return future.result()
        except CancelledError:
            raise RuntimeError(
                "the sync session was closed (from another thread) while this call was "
                "in flight: the call was cancelled"
            ) from None
        except BaseException:
            if not future.done():
                future.cancel()
                # Its finally blocks (closing a watch, releasing a slot) have run when
                # this returns: nothing of the cancelled call is left running.
                unwound.wait()
            raise
        finally:
            with self._calls_lock:
                del self._calls[future]


class _Blocking(Generic[E]):
    """A blocking iterator over an async `Watch` or `BatchStream` living on the loop.

    Use it as ``with session.watch(ids) as updates: for u in updates: ...``; a plain
    ``for`` works too. Leaving ``with`` (or `close`) stops polling at once.
    """

    def __init__(self, loop: _Loop, stream: AsyncWatch | AsyncBatchStream) -> None:
        self._loop = loop
        self._stream = stream
        self._done = False

    def __iter__(self) -> _Blocking[E]:
        return self

    def __next__(self) -> E:
        if self._done:
            raise StopIteration
        stream = self._stream

        async def step() -> tuple[bool, Any]:
            try:
                return True, await stream.__anext__()
            except StopAsyncIteration:
                return False, None

        try:
            more, event = self._loop.run(step)
        except BaseException:
            self.close()
            raise
        if not more:
            self._done = True
            raise StopIteration
        return event  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop at once: the tasks are no longer polled for this iterator (idempotent)."""
        self._done = True
        portal = self._loop.portal
        if portal is not None:
            # RuntimeError: the session closed meanwhile; its loop, and the stream, are gone.
            with suppress(RuntimeError):
                portal.call(self._stream.close)

    def __enter__(self) -> _Blocking[E]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Watch(_Blocking[TaskUpdate]):
    """The blocking `apimart_async.Watch`: an iterator of `TaskUpdate`."""


class BatchStream(_Blocking[BatchEvent]):
    """The blocking `apimart_async.BatchStream`: an iterator of `BatchEvent`."""


class Session:
    """A blocking connection to the APIMart API: ``with Session() as s: ...``.

    The arguments are those of `apimart_async.Session` (`api_key`, `base_url`,
    `max_concurrency`, `rps`, `burst`, `timeout`, `retry`, `poll`, `download_concurrency`,
    `clock`, `downloads`, `hooks`) except `http_session`: an aiohttp session belongs to one event
    loop, and this one runs its own. Bad arguments are refused here, as there.

    The methods are those of the async session, blocking: `submit`, `submit_many`,
    `get_task`, `balance`, `wait`, `download`, `run_batch`, and `watch` / `stream` returning
    blocking iterators. They raise the same error classes (not wrapped). The session's
    event loop runs in a private thread, started by ``with`` or the first call and
    stopped (the thread joined) by `close` or leaving ``with``; `close` is idempotent. A
    session is opened once: entering it again after `close` raises `RuntimeError`.

    Calls may come from any thread, several at once; callbacks (`hooks`, `run_batch`'s
    `on_change`) run on the session's loop thread.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        max_concurrency: int = 16,
        rps: float | None = None,
        burst: int | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        download_concurrency: int = 4,
        clock: Clock | None = None,
        downloads: DownloadPolicy | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        def make() -> AsyncSession:
            return AsyncSession(
                api_key, base_url=base_url, max_concurrency=max_concurrency, rps=rps,
                burst=burst, timeout=timeout, retry=retry, poll=poll,
                download_concurrency=download_concurrency, clock=clock, downloads=downloads,
                hooks=hooks,
            )

        # Built here to refuse bad arguments at once; the live session is built on the
        # loop thread, so that everything it holds belongs to that loop.
        self._config = make()
        self._make = make
        self._session: AsyncSession | None = None
        self._loop = _Loop()
        self._state = "unopened"
        self._lock = threading.Lock()
        self._context: AbstractContextManager[AsyncSession] | None = None

    # -- configuration, as on the async session ---------------------------------------

    @property
    def base_url(self) -> str:
        """The API base URL."""
        return self._config.base_url

    @property
    def max_concurrency(self) -> int:
        """Requests in flight to the API host at once, at most."""
        return self._config.max_concurrency

    @property
    def rps(self) -> float | None:
        """The key's rate limit given, requests per second (None: learned from 429s)."""
        return self._config.rps

    @property
    def burst(self) -> int | None:
        """The key's burst given with `rps`, if any."""
        return self._config.burst

    @property
    def timeout(self) -> Timeout:
        """The per-request time limits."""
        return self._config.timeout

    @property
    def retry(self) -> RetryPolicy:
        """How requests are retried."""
        return self._config.retry

    @property
    def poll(self) -> PollPolicy:
        """How often watched tasks are polled."""
        return self._config.poll

    @property
    def clock(self) -> Clock:
        """The session's time (API seconds)."""
        return self._config.clock

    @property
    def stats(self) -> SessionStats:
        """Counters of what this session sent and met: a snapshot taken now."""
        session = self._session
        return (session or self._config).stats

    def __repr__(self) -> str:
        return f"sync.Session(base_url={self.base_url!r}, state={self._state})"

    # -- lifecycle ---------------------------------------------------------------------

    def _open(self) -> Session:
        # Start the loop thread and open the session (``with`` and the first call do
        # this). Opening an open session does nothing; a closed one raises RuntimeError.
        with self._lock:
            if self._state == "open":
                return self
            if self._state == "closed":
                raise RuntimeError(
                    "the session is closed: a Session is opened once; create a new Session"
                )
            portal = self._loop.start()
            try:
                session = portal.call(self._make)
                context = portal.wrap_async_context_manager(session)
                context.__enter__()
            except BaseException:
                self._state = "closed"
                self._loop.stop()
                raise
            self._session, self._context = session, context
            self._state = "open"
        return self

    def close(self, *, timeout: float | None = CLOSE_TIMEOUT) -> None:
        """Close the session and stop its loop thread (joined). Idempotent.

        Calls in flight are cancelled and waited for, at most `timeout` real seconds
        (None: no limit) for the whole close: a call that does not unwind (a hook or
        `on_change` callback blocking the loop thread) makes `close` raise `RuntimeError`
        rather than hang; the session is closed to new calls all the same, and its loop
        thread stops by itself once the stuck call returns.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not timeout > 0
        ):
            raise ValidationError("timeout", f"must be a number of seconds > 0 or None, "
                                             f"got {timeout!r}")
        with self._lock:
            if self._state == "closed":
                return
            self._state = "closed"
            context, self._context = self._context, None
            failed: list[BaseException] = []

            def shut_down() -> None:
                try:
                    try:
                        self._loop.cancel_calls()
                        if context is not None:
                            context.__exit__(None, None, None)
                    finally:
                        self._loop.stop()
                except BaseException as exc:  # handed to close's caller below
                    failed.append(exc)

            # In a thread of its own, so that a call which never unwinds bounds close()
            # instead of hanging it (and whoever calls it: a fixture's teardown).
            closer = threading.Thread(target=shut_down, name=CLOSE_THREAD, daemon=True)
            closer.start()
            closer.join(timeout)
            if closer.is_alive():
                raise RuntimeError(
                    f"the sync session did not stop within {timeout} s of close(): a call "
                    "in flight did not unwind when cancelled (a hook or on_change callback "
                    f"blocking the loop thread?); its thread {LOOP_THREAD!r} stops once "
                    "that call returns"
                )
            if failed:
                raise failed[0]

    def __del__(self) -> None:
        # Dropped open, it would keep its loop thread and connections for good.
        if getattr(self, "_state", None) != "open":
            return
        warnings.warn(f"unclosed {self!r}: call close() or use 'with'", ResourceWarning,
                      source=self, stacklevel=1)
        if threading.get_ident() != self._loop.thread_id:  # joining itself would hang
            self.close()

    def __enter__(self) -> Session:
        if self._state != "unopened":
            raise RuntimeError(
                "the session was opened already: enter a Session once ('with'); "
                "create a new Session"
            )
        return self._open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _live(self) -> AsyncSession:
        if self._state != "open":
            self._open()
        assert self._session is not None
        return self._session

    # -- the operations -----------------------------------------------------------------

    def submit(self, request: VideoRequest, *, idempotency_key: str | None = None) -> Submission:
        """Submit one generation; see `apimart_async.Session.submit`."""
        session = self._live()
        return self._loop.run(lambda: session.submit(request, idempotency_key=idempotency_key))

    def submit_many(
        self,
        requests: Iterable[VideoRequest],
        *,
        idempotency_keys: Sequence[str] | None = None,
    ) -> list[Submission | APIMartError]:
        """Submit every request; see `apimart_async.Session.submit_many`."""
        session = self._live()
        # Read here, on the caller's thread (a generator of theirs); anything that is not
        # an iterable goes as given, for the async session to refuse by name.
        items = list(requests) if isinstance(requests, Iterable) and not isinstance(
            requests, VideoRequest) else requests
        return self._loop.run(
            lambda: session.submit_many(items, idempotency_keys=idempotency_keys)
        )

    def get_task(self, task_id: str | Submission) -> Task:
        """The task's current state; see `apimart_async.Session.get_task`."""
        session = self._live()
        return self._loop.run(session.get_task, task_id)

    def balance(self) -> Balance:
        """The API key's balance (``GET /v1/balance``); see `apimart_async.Session.balance`."""
        session = self._live()
        return self._loop.run(session.balance)

    def wait(self, task_id: str | Submission, *, timeout: float | None = None) -> Task:
        """Poll until the task ends; see `apimart_async.Session.wait`."""
        session = self._live()
        return self._loop.run(lambda: session.wait(task_id, timeout=timeout))

    def download(
        self, task: Task | str | Submission, dest: str | PathLike[str], *,
        overwrite: bool = False,
    ) -> DownloadResult:
        """Download a completed task's outputs; see `apimart_async.Session.download`."""
        session = self._live()
        return self._loop.run(lambda: session.download(task, dest, overwrite=overwrite))

    def watch(
        self,
        tasks: Iterable[str | Submission],
        *,
        timeout: float | None = None,
        task_timeout: float | None = None,
        progress_every: float | None = None,
    ) -> Watch:
        """Follow tasks to their end: a blocking iterator of `TaskUpdate`; see
        `apimart_async.Session.watch`. ``with session.watch(ids) as updates:``."""
        session = self._live()
        # One id or Submission goes as given, for the async session to refuse by name
        # (listed, a str would be its characters).
        ids = tasks if isinstance(tasks, (str, Submission)) or not isinstance(
            tasks, Iterable) else list(tasks)
        assert self._loop.portal is not None
        stream = self._loop.portal.call(
            lambda: session.watch(ids, timeout=timeout, task_timeout=task_timeout,
                                  progress_every=progress_every)
        )
        return Watch(self._loop, stream)

    def stream(
        self,
        requests: Iterable[VideoRequest],
        *,
        timeout: float | None = None,
        task_timeout: float | None = None,
        progress_every: float | None = None,
    ) -> BatchStream:
        """Submit `requests` and follow each to its end: a blocking iterator of
        `BatchEvent`; see `apimart_async.Session.stream`."""
        session = self._live()
        # One request, or no iterable, goes as given for the async session to refuse.
        items = requests if isinstance(requests, VideoRequest) or not isinstance(
            requests, Iterable) else list(requests)
        assert self._loop.portal is not None
        stream = self._loop.portal.call(
            lambda: session.stream(items, timeout=timeout, task_timeout=task_timeout,
                                   progress_every=progress_every)
        )
        return BatchStream(self._loop, stream)

    def run_batch(
        self,
        requests: Sequence[VideoRequest | BatchItem],
        *,
        out_dir: str | PathLike[str],
        journal: str | PathLike[str] | None = None,
        resubmit_ambiguous: bool = False,
        on_change: Callable[[ItemResult], None] | None = None,
        stop: threading.Event | None = None,
        batch: str = "default",
        lease: float = 30.0,
        retry_failed: bool = False,
        max_spend: float | None = None,
        item_cost: float | None = None,
    ) -> BatchReport:
        """Generate and download a whole batch, durably; see
        `apimart_async.Session.run_batch`. `stop` is a `threading.Event` here (set it
        from any thread); `on_change` is called on the session's loop thread."""
        session = self._live()
        options: dict[str, Any] = dict(
            out_dir=out_dir, journal=journal, resubmit_ambiguous=resubmit_ambiguous,
            on_change=on_change, retry_failed=retry_failed, max_spend=max_spend,
            batch=batch, lease=lease,
            item_cost=item_cost,
        )

        async def run() -> BatchReport:
            if stop is None:
                return await session.run_batch(requests, **options)
            stopped = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def relay() -> None:
                    # A threading.Event cannot wake the loop: looked at, see _STOP_CHECK.
                    while not stop.is_set():  # noqa: ASYNC110
                        await anyio.sleep(_STOP_CHECK)
                    stopped.set()

                tg.start_soon(relay)
                try:
                    return await session.run_batch(requests, stop=stopped, **options)
                finally:
                    tg.cancel_scope.cancel()
            raise AssertionError("unreachable")  # pragma: no cover

        return self._loop.run(run)

    def run_worker(
        self,
        *,
        journal: str,
        batch: str = "default",
        out_dir: str | PathLike[str],
        lease: float = 30.0,
        resubmit_ambiguous: bool = False,
        stop: threading.Event | None = None,
        max_spend: float | None = None,
        item_cost: float | None = None,
    ) -> WorkerOutcome:
        """Join a batch kept in PostgreSQL as one more worker; see
        `apimart_async.Session.run_worker`. `stop` is a `threading.Event` here."""
        session = self._live()
        options: dict[str, Any] = dict(
            journal=journal, batch=batch, out_dir=out_dir, lease=lease,
            resubmit_ambiguous=resubmit_ambiguous, max_spend=max_spend, item_cost=item_cost,
        )

        async def run() -> WorkerOutcome:
            if stop is None:
                return await session.run_worker(**options)
            stopped = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def relay() -> None:
                    while not stop.is_set():  # noqa: ASYNC110 - see _STOP_CHECK
                        await anyio.sleep(_STOP_CHECK)
                    stopped.set()

                tg.start_soon(relay)
                try:
                    return await session.run_worker(stop=stopped, **options)
                finally:
                    tg.cancel_scope.cancel()
            raise AssertionError("unreachable")  # pragma: no cover

        return self._loop.run(run)
