"""`Session`: the async context manager users hold; a thin facade over the parts."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import AsyncExitStack
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ._batch import submit_each
from ._clock import Clock
from ._config import (
    DEFAULT_BASE_URL,
    ENV_BASE_URL,
    ApiKey,
    DownloadPolicy,
    Timeout,
    check_base_url,
)
from ._download import Downloader, DownloadResult
from ._errors import APIMartError, TaskFailedError, TaskTimeoutError, ValidationError
from ._groups import ungrouped
from ._http import Http
from ._limits import Limits
from ._models import Submission, Task, VideoRequest, finite_positive, whole_number
from ._poller import Poller
from ._polling import PollPolicy
from ._retry import RetryPolicy
from ._runner import BatchItem, BatchReport, ItemResult, run_batch
from ._streams import BatchStream, Watch
from ._transport import SessionStats, Transport
from ._wire import build_get_task, build_submit, check_task_id, parse_submit, parse_task

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Session"]

log = logging.getLogger("apimart_async")
_SUBMITTED_AT_LIMIT = 100_000


class Session:
    """A connection to the APIMart API; use it as ``async with Session() as s:``.

    - `api_key`: defaults to the ``APIMART_API_KEY`` environment variable.
    - `base_url`: defaults to ``APIMART_BASE_URL``, else ``https://api.apimart.ai``;
      https, or plain http to a loopback host (the emulator).
    - `max_concurrency`: requests in flight to the API host at any moment, all
      coroutines of this session together.
    - `rps`: an optional ceiling on requests per second to the API host; the session
      also slows down by itself when the server answers 429.
    - `timeout`, `retry`, `poll`: see `Timeout`, `RetryPolicy` and `PollPolicy`.
    - `http_session`: an `aiohttp.ClientSession` of yours to send on; it is not
      closed. Without one the session owns and closes its own.
    - `download_concurrency`: video downloads at once (separate from API requests).
    - `downloads`: what a file host may do before a download is given up on (size cap,
      low-speed limit, deadline, allowed hosts): see `DownloadPolicy`.
    - `clock`: API time; only tests with a compressed emulator clock change it.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        max_concurrency: int = 16,
        rps: float | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        http_session: aiohttp.ClientSession | None = None,
        download_concurrency: int = 4,
        clock: Clock | None = None,
        downloads: DownloadPolicy | None = None,
    ) -> None:
        self._key = ApiKey.resolve(api_key)
        self.base_url = check_base_url(
            base_url if base_url is not None else os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        )
        self.max_concurrency = whole_number("max_concurrency", max_concurrency)
        finite_positive("rps", rps)
        self.timeout = timeout or Timeout()
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollPolicy()
        self.clock = clock or Clock()
        self.stats = SessionStats()
        self._http = Http(
            timeout=self.timeout, session=http_session, connections=max(100, max_concurrency)
        )
        self.limits = Limits(max_concurrency=self.max_concurrency, rps=rps)
        self._transport = Transport(
            base_url=self.base_url,
            key=self._key,
            http=self._http,
            limits=self.limits,
            retry=self.retry,
            stats=self.stats,
        )
        whole_number("download_concurrency", download_concurrency)
        self._downloader = Downloader(
            http=self._http, concurrency=download_concurrency, retry=self.retry,
            clock=self.clock, refresh=self.get_task, stats=self.stats, policy=downloads,
        )
        self._open = False
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._poller: Poller | None = None
        # When this session submitted each task (clock time), for the poller's first poll;
        # bounded, since tasks submitted but never watched would otherwise pile up here.
        self._submitted_at: dict[str, float] = {}

    def __repr__(self) -> str:
        return (
            f"Session(base_url={self.base_url!r}, max_concurrency={self.max_concurrency}, "
            f"open={self._open})"
        )

    async def __aenter__(self) -> Session:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self._http.open()
            stack.push_async_callback(self._http.close)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            # Background work (the poller, stream submissions) ends before the socket closes.
            stack.callback(self._tg.cancel_scope.cancel)
        except BaseException:
            await stack.__aexit__(*sys.exc_info())
            raise
        self._stack = stack
        self._open = True
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
            self._open = False
            self._poller = None
            self._tg = None

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError("the session is not open: use 'async with Session(...) as s'")

    def _spawn(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `func` in the session's task group (it ends when the session closes)."""
        self._require_open()
        assert self._tg is not None
        self._tg.start_soon(func)

    def _get_poller(self) -> Poller:
        self._require_open()
        if self._poller is None:
            self._poller = Poller(
                fetch=self.get_task, policy=self.poll, clock=self.clock,
                workers=self.max_concurrency,
            )
            assert self._tg is not None
            self._poller.bind(self._tg)
        return self._poller

    def _started_at(self, task_id: str) -> float | None:
        return self._submitted_at.pop(task_id, None)

    # -- single requests --------------------------------------------------------------

    async def submit(
        self, request: VideoRequest, *, idempotency_key: str | None = None
    ) -> Submission:
        """Submit one generation; returns its `Submission` (the task id).

        Retried only when the server surely did not create the task. After an
        ambiguous failure the error has ``submission_ambiguous`` set: the task may
        exist and be billed, so look before submitting again.
        """
        return await self._submit(_check_request("request", request), key=idempotency_key)

    async def _submit(
        self,
        request: VideoRequest,
        *,
        key: str | None = None,
        gate: Callable[[], None] | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        on_safe_retry: Callable[[], Awaitable[None]] | None = None,
    ) -> Submission:
        self._require_open()
        key = key or uuid.uuid4().hex
        task_id: str = await self._transport.call(
            build_submit(request, idempotency_key=key), parse_submit, gate=gate,
            before_send=before_send, on_safe_retry=on_safe_retry,
        )
        self.stats.submissions += 1
        self._submitted_at[task_id] = self.clock.now()
        self._get_poller().expect(task_id, request.model)
        if len(self._submitted_at) > _SUBMITTED_AT_LIMIT:
            del self._submitted_at[next(iter(self._submitted_at))]  # the oldest
        log.info("submitted task %s", task_id)
        return Submission(task_id=task_id, request=request, idempotency_key=key)

    async def submit_many(
        self,
        requests: Iterable[VideoRequest],
        *,
        idempotency_keys: Sequence[str] | None = None,
    ) -> list[Submission | APIMartError]:
        """Submit every request; one outcome per request, in input order.

        Each outcome is the `Submission` or the error that stopped that item; one
        item's failure never cancels the others. Requests in flight stay within the
        session's `max_concurrency` (and `rps`); a 429 slows the whole session down.
        A fatal answer (401, 402, 403) stops the items not yet sent, each marked with
        `NotSubmittedError` naming the reason. Everything is validated first.
        """
        items = [_check_request(f"requests[{i}]", r) for i, r in enumerate(requests)]
        if idempotency_keys is not None and len(idempotency_keys) != len(items):
            raise ValidationError(
                "idempotency_keys", f"has {len(idempotency_keys)} keys for {len(items)} requests"
            )
        self._require_open()
        outcomes: dict[int, Submission | APIMartError] = {}

        async def submit_one(
            index: int, request: VideoRequest, gate: Callable[[], None]
        ) -> Submission:
            key = idempotency_keys[index] if idempotency_keys is not None else None
            return await self._submit(request, key=key, gate=gate)

        def done(index: int, outcome: Submission | APIMartError | None) -> None:
            # None only comes from a closed gate, and this batch never closes its gate.
            assert outcome is not None
            outcomes[index] = outcome

        await submit_each(items, submit_one, done, workers=self.max_concurrency)
        return [outcomes[i] for i in range(len(items))]

    async def get_task(self, task_id: str | Submission) -> Task:
        """The task's current state (``GET /v1/tasks/{id}``), retried on transient errors."""
        tid = task_id.task_id if isinstance(task_id, Submission) else task_id
        request = build_get_task(tid)  # validates the id before anything is sent
        self._require_open()
        task: Task = await self._transport.call(request, parse_task)
        self.stats.polls += 1
        return task

    def watch(
        self,
        tasks: Iterable[str | Submission],
        *,
        timeout: float | None = None,
        task_timeout: float | None = None,
    ) -> Watch:
        """Follow tasks to their end: an async iterator of `TaskUpdate`.

        One update per change of status or progress, exactly one final update per task
        (`update.final`), and the iteration ends when every task has had its final
        update. `task_timeout` bounds each task, `timeout` the whole watch (API
        seconds); a task past either gets a final update with `timed_out` set. Use it as
        ``async with session.watch(ids) as updates: async for u in updates: ...``; plain
        ``async for`` works too, and leaving the loop stops the polling at once.
        """
        finite_positive("timeout", timeout)
        finite_positive("task_timeout", task_timeout)
        ids = list(dict.fromkeys(_task_id(t) for t in tasks))
        poller = self._get_poller()
        return Watch(
            poller, self.clock, [(tid, self._started_at(tid)) for tid in ids],
            timeout=timeout, task_timeout=task_timeout,
        )

    def stream(
        self,
        requests: Iterable[VideoRequest],
        *,
        timeout: float | None = None,
        task_timeout: float | None = None,
    ) -> BatchStream:
        """Submit `requests` and follow each to its end, as one stream of `BatchEvent`.

        ``async with session.stream(requests) as events: async for e in events: ...``
        Each item gets SUBMITTED, PROGRESS events, then exactly one final event:
        COMPLETED, FAILED, SUBMIT_FAILED or TIMED_OUT (`e.index` is its input position).
        """
        items = [_check_request(f"requests[{i}]", r) for i, r in enumerate(requests)]
        finite_positive("timeout", timeout)
        finite_positive("task_timeout", task_timeout)
        return BatchStream(self, items, timeout=timeout, task_timeout=task_timeout)

    # `timeout` is in API seconds on the session's clock, so anyio.fail_after would not do.
    async def wait(
        self, task_id: str | Submission, *, timeout: float | None = None  # noqa: ASYNC109
    ) -> Task:
        """Poll until the task ends; return it when completed.

        Raises `TaskFailedError` when it fails or is cancelled, `TaskTimeoutError`
        after `timeout` API seconds (the task itself goes on), or the error that made
        watching impossible (e.g. `NotFoundError`).
        """
        tid = _task_id(task_id)
        async with self.watch([tid], task_timeout=timeout) as updates:
            async for update in updates:
                if not update.final:
                    continue
                if update.timed_out:
                    raise TaskTimeoutError(tid, timeout=timeout or 0.0, task=update.task)
                if update.error is not None:
                    raise update.error
                assert update.task is not None
                if update.completed:
                    return update.task
                raise TaskFailedError(update.task)
        raise RuntimeError(f"watch of {tid} ended without a final update")  # pragma: no cover


    async def download(
        self, task: Task | str | Submission, dest: str | PathLike[str]
    ) -> DownloadResult:
        """Download a completed task's video to `dest` (a file path, or a directory).

        The bytes stream into a hidden ``.NAME.part`` file beside `dest`; a cut
        connection resumes with a Range request (and starts over if the host ignores
        Range); the length is checked and the file renamed into place atomically, so
        `dest` is either absent or whole. Nothing of the API's (key, headers) is sent
        to the file host. An expired link triggers one fresh `get_task`, else
        `ResultExpiredError`. A task id is looked up first.

        The file host is distrusted (see `DownloadPolicy`): the link must be https (http
        to loopback), not a private or link-local address; the body must be a video or
        image container, of a provable length within ``max_bytes``; a ``.part`` left by
        another task or link is never resumed. Such failures raise `DownloadError`.

        Into a directory, the file is named after the task id you passed (a `Task`'s
        own id), never after the id in the server's answer, and must stay inside it.
        """
        self._require_open()
        if isinstance(task, Task):
            asked = check_task_id(task.id)
        else:
            asked = check_task_id(task.task_id if isinstance(task, Submission) else task)
            task = await self.get_task(task)
        path = Path(dest)
        if await anyio.Path(path).is_dir():
            name = f"{asked}.mp4"
            # One plain name, never a path: the file stays inside `dest`.
            if Path(name).name != name or "\\" in name:
                raise ValidationError("task_id", f"{asked!r} does not name a file in {dest}")
            path = path / name
        return await self._downloader.download(task, path)

    async def run_batch(
        self,
        requests: Sequence[VideoRequest | BatchItem],
        *,
        out_dir: str | PathLike[str],
        journal: str | PathLike[str] | None = None,
        resubmit_ambiguous: bool = False,
        on_change: Callable[[ItemResult], None] | None = None,
        stop: anyio.Event | None = None,
    ) -> BatchReport:
        """Generate and download a whole batch, durably; returns a `BatchReport`.

        Every step of every item is recorded in an SQLite journal (default: a file in
        `out_dir`). Re-running the same batch with the same journal never submits again
        an item that has a task id: it resumes polling and downloading. Items a crash
        left mid-submission are reported as ambiguous, and resubmitted (with the same
        Idempotency-Key) only when `resubmit_ambiguous` is True. `on_change` is called
        with each item's new `ItemResult` as it moves. A 401/402/403 stops sending and is
        kept in `BatchReport.account_error`; the items it stopped stay in the journal, so
        a re-run after fixing the account resumes them.

        Setting `stop` (e.g. from a signal handler) stops sending at once: submissions
        already on the wire land and are journaled, polling and downloads end, and the
        report comes back with `interrupted` set; a re-run resumes. Items are known by
        content, so a re-run with lines added, removed or reordered sends only the new
        requests. One run per journal: a second gets `JournalBusyError`.
        """
        self._require_open()
        return await run_batch(
            self, requests, out_dir=Path(out_dir),
            journal=None if journal is None else Path(journal),
            resubmit_ambiguous=resubmit_ambiguous, on_change=on_change, stop=stop,
        )


def _task_id(task: object) -> str:
    return task.task_id if isinstance(task, Submission) else check_task_id(task)


def _check_request(field: str, request: object) -> VideoRequest:
    if not isinstance(request, VideoRequest):
        raise ValidationError(field, f"must be a VideoRequest, got {type(request).__name__}")
    return request
