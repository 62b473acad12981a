"""`Engine`: the machinery behind one `Session`, and the only API the features use.

The engine owns the task group, the HTTP client, the transport, the shared limits,
the downloader and the (lazily started) poller. `Watch`, `BatchStream` and the batch
runner are built on the methods below, never on the `Session`, so each of them can be
read and tested with an engine alone, and the facade stays a thin layer of checks.

Its lifecycle is single-use, like the `Session` over it: created (unopened), open
inside ``async with``, then closed for good.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskGroup

from .._core.balance import Balance, build_get_balance, parse_balance
from .._core.config import ApiKey, DownloadPolicy, Timeout
from .._core.groups import ungrouped
from .._core.hooks import DownloadEvent, Hooks
from .._core.models import Submission, Task, VideoRequest, sdk_submission
from .._core.polling import PollPolicy
from .._core.retry import RetryPolicy
from .._core.wire import RememberingTaskGet, TaskGet, build_submit, parse_submit
from .._io.clock import Clock
from .._io.download import Downloader, DownloadResult
from .._io.hooks import fire
from .._io.http import Http
from .._io.limits import Limits
from .._io.stats import SessionStats
from .._io.transport import Transport
from .poller import Poller

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Engine", "State"]

log = logging.getLogger("apimart_async")
# `get_task`'s requests for the tasks asked about most recently, each remembering its
# last answer (a loop asking about one task sends and reads the same things again).
_RECENT_GETS = 256


class _Wakeable(Protocol):
    """A watch or stream of this engine's: woken when the engine closes."""

    def session_closed(self) -> None: ...


class State(enum.Enum):
    """Where an engine (and its session) is in its one life."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Engine:
    """Submits, polls and downloads for one open session (see the module docstring)."""

    def __init__(
        self,
        *,
        base_url: str,
        key: ApiKey,
        timeout: Timeout,
        retry: RetryPolicy,
        poll: PollPolicy,
        clock: Clock,
        max_concurrency: int,
        rps: float | None,
        download_concurrency: int,
        http_session: aiohttp.ClientSession | None,
        downloads: DownloadPolicy | None = None,
        hooks: Hooks | None = None,
        burst: int | None = None,
    ) -> None:
        self.clock = clock
        #: Names the key in shared tables (a fleet's rate), never the key itself.
        self.key_fingerprint = key.fingerprint()
        self.hooks = hooks = hooks or Hooks()
        self.poll_policy = poll
        self.max_concurrency = max_concurrency
        self.stats = SessionStats()
        self.http = Http(
            timeout=timeout, session=http_session, connections=max(100, max_concurrency)
        )
        self.limits = Limits(
            max_concurrency=max_concurrency, rps=rps, burst=burst, clock=clock, hooks=hooks
        )
        self.transport = Transport(
            base_url=base_url, key=key, http=self.http, limits=self.limits, retry=retry,
            stats=self.stats, clock=clock, hooks=hooks,
        )
        self.downloader = Downloader(
            http=self.http, concurrency=download_concurrency, retry=retry,
            clock=clock, refresh=self.get_task, stats=self.stats, policy=downloads,
        )
        self.state = State.UNOPENED
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._poller: Poller | None = None
        self._recent_gets: dict[str, RememberingTaskGet] = {}
        # The watches and streams made on this session, to wake when it closes (weakly:
        # a dropped one is nobody's concern).
        self._streams: weakref.WeakSet[_Wakeable] = weakref.WeakSet()

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        if self.state is State.OPEN:
            raise RuntimeError("the session is already open: enter it once ('async with')")
        if self.state is State.CLOSED:
            raise RuntimeError(
                "the session is closed: a Session is opened once; create a new Session"
            )
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.http.open()
            stack.push_async_callback(self.http.close)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            # Background work (the poller, stream submissions) ends before the socket closes.
            stack.callback(self._tg.cancel_scope.cancel)
        except BaseException:
            self.state = State.CLOSED
            await stack.__aexit__(*sys.exc_info())
            raise
        self._stack = stack
        self.state = State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                # An error in the block (or one background failure) leaves as itself.
                with ungrouped():
                    await stack.__aexit__(exc_type, exc, tb)
        finally:
            self.state = State.CLOSED
            self._poller = None
            self._recent_gets = {}
            self._tg = None
            # A consumer still waiting on a watch (a `wait` in another task) would wait
            # for ever: nothing polls any more. It is woken, and raises.
            streams, self._streams = list(self._streams), weakref.WeakSet()
            for stream in streams:
                stream.session_closed()

    def follow(self, stream: _Wakeable) -> None:
        """Wake `stream` (its `session_closed`) when the engine closes."""
        self._streams.add(stream)

    def require_open(self) -> None:
        """Raise a clear `RuntimeError` unless the engine is open."""
        if self.state is State.UNOPENED:
            raise RuntimeError("the session is not open: use 'async with Session(...) as s'")
        if self.state is State.CLOSED:
            raise RuntimeError("the session is closed: create a new Session")

    # -- what the features run on --------------------------------------------------------

    def spawn(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `func` in the engine's task group (it ends when the session closes)."""
        self.require_open()
        assert self._tg is not None
        self._tg.start_soon(func)

    @property
    def poller(self) -> Poller:
        """The session's one poller, created on first use."""
        self.require_open()
        if self._poller is None:
            assert self._tg is not None
            self._poller = Poller(
                fetch=self.fetch_task, policy=self.poll_policy, clock=self.clock,
                workers=self.max_concurrency, hooks=self.hooks,
            )
            self._poller.bind(self._tg)
        return self._poller

    @property
    def poller_started(self) -> Poller | None:
        """The poller if one was created, without creating it."""
        return self._poller

    def submit(
        self,
        request: VideoRequest,
        *,
        key: str | None = None,
        gate: Callable[[], None] | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        on_safe_retry: Callable[[], Awaitable[None]] | None = None,
    ) -> Coroutine[Any, Any, Submission]:
        """Submit `request` (already validated) with Idempotency-Key `key` (new if None):
        await the result.

        `gate`, `before_send` and `on_safe_retry` are the transport's hooks (see
        `Transport.call`): a batch stops unsent items, journals "submitting" and puts a
        refused item back in line through them.

        Not a coroutine of its own: it gives the transport's, whose parse step records
        the submission, so every await of it passes one coroutine layer less (measured:
        the layers, not the work, were most of the SDK's cost over raw aiohttp).
        """
        if self.state is not State.OPEN:
            self.require_open()
        # 128 random bits, as uuid4's hex, at a quarter of its cost.
        made: bytes | None = None
        if not key:
            made = os.urandom(16)
            key = made.hex()
        given = key

        def submitted(status: int, body: bytes, *, retry_after: float | None = None,
                      secret: str | None = None) -> Submission:
            task_id = parse_submit(status, body, retry_after=retry_after, secret=secret)
            self.stats.submissions += 1
            # A watch's first poll waits from the submission, and the poller learns per
            # model how long tasks take (#7): it keeps both until the task is watched.
            (self._poller or self.poller).expect(task_id, request.model, self.clock.now())
            # DEBUG: a batch of hundreds would flood INFO; its story is told at DEBUG.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("submitted task %s (model %s)", task_id, request.model)
            if made is not None:
                return sdk_submission(task_id, request, made)
            return Submission(task_id=task_id, request=request, idempotency_key=given)

        return self.transport.call(
            build_submit(request, idempotency_key=key), submitted, gate=gate,
            before_send=before_send, on_safe_retry=on_safe_retry,
        )

    def get_task(self, task_id: str) -> Coroutine[Any, Any, Task]:
        """``GET /v1/tasks/{id}``, retried on transient errors (the id is checked first):
        await the result. (The transport's coroutine itself, as in `submit`.)"""
        gets = self._recent_gets
        get = gets.pop(task_id, None)
        if get is None:
            get = RememberingTaskGet(task_id)  # a bad id: ValidationError, nothing sent
            if len(gets) >= _RECENT_GETS:
                del gets[next(iter(gets))]  # the one asked about least recently
        gets[task_id] = get  # (last: the most recently asked)
        if self.state is not State.OPEN:
            self.require_open()
        return self.transport.call(get, self._counted(get.parse))

    def fetch_task(self, get: TaskGet) -> Coroutine[Any, Any, Task]:
        """Send a prepared ``GET /v1/tasks/{id}`` (the poller builds one per poll): await
        the result. (The transport's coroutine itself, as in `submit`.)"""
        return self.transport.call(get, self._counted(get.parse))

    def _counted(self, parse: Callable[..., Task]) -> Callable[..., Task]:
        stats = self.stats

        def counted(status: int, body: bytes, *, retry_after: float | None = None,
                    secret: str | None = None) -> Task:
            task = parse(status, body, retry_after=retry_after, secret=secret)
            stats.get_task_calls += 1  # a successful call: its answer was read
            return task

        return counted

    async def balance(self) -> Balance:
        """``GET /v1/balance``, retried on transient errors like any GET."""
        self.require_open()
        balance: Balance = await self.transport.call(build_get_balance(), parse_balance)
        self.stats.balance_calls += 1
        return balance

    async def download(
        self, task: Task, path: Path, *, overwrite: bool = False, index: int = 0
    ) -> DownloadResult:
        """Download output `index` of completed `task` to the file `path` (see
        `Downloader`)."""
        self.require_open()
        started = time.perf_counter()
        try:
            result = await self.downloader.download(
                task, path, overwrite=overwrite, index=index)
        except Exception as exc:  # told to the hook, then raised as it was
            log.debug("task %s: download to %s failed (%s)", task.id, path, type(exc).__name__)
            if self.hooks.on_download is not None:
                fire(self.hooks.on_download, DownloadEvent(
                    task_id=task.id, path=path, size=0,
                    elapsed=time.perf_counter() - started, error=type(exc).__name__))
            raise
        log.debug("task %s: saved %s (%d bytes%s)", task.id, result.path, result.size,
                  f", resumed {result.resumed}x" if result.resumed else "")
        if self.hooks.on_download is not None:
            fire(self.hooks.on_download, DownloadEvent(
                task_id=task.id, path=result.path, size=result.size,
                elapsed=time.perf_counter() - started, resumed=result.resumed))
        return result
