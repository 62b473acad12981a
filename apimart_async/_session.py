"""`Session`: the async context manager users hold; a thin facade over the parts."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import cast

import anyio
import attrs

from ._batch.report import BatchItem, BatchReport, ItemResult, WorkerOutcome
from ._core.balance import Balance
from ._core.config import (
    DEFAULT_BASE_URL,
    ENV_BASE_URL,
    ApiKey,
    DownloadPolicy,
    Timeout,
    check_base_url,
)
from ._core.errors import APIMartError, TaskFailedError, TaskTimeoutError, ValidationError
from ._core.hooks import Hooks
from ._core.models import Submission, Task, TaskOutput, VideoRequest
from ._core.outputs import numbered_name
from ._core.polling import PollPolicy
from ._core.retry import RetryPolicy
from ._core.validation import (
    check_idempotency_key,
    require_finite_positive_or_none,
    require_positive_or_none,
    require_whole_number,
)
from ._core.wire import check_task_id
from ._engine.engine import Engine
from ._engine.streams import BatchStream, Watch
from ._engine.submit import UNENCODABLE, submit_each, unsendable
from ._io.clock import Clock
from ._io.download import DownloadResult
from ._io.http import ClientSession
from ._io.stats import SessionStats

__all__ = ["Session"]


class Session:
    """A connection to the APIMart API; use it as ``async with Session() as s:``.

    - `api_key`: defaults to the ``APIMART_API_KEY`` environment variable.
    - `base_url`: defaults to ``APIMART_BASE_URL``, else ``https://api.apimart.ai``;
      https, or plain http to a loopback host (the emulator).
    - `max_concurrency`: requests in flight to the API host at any moment, all
      coroutines of this session together.
    - `rps`: the key's rate limit in requests per second, if you know it: every request
      is paced to it from the start, so none meets a 429. Without it the session learns
      the limit from the server's 429s (a few learning costs) and paces at it.
    - `burst`: with `rps`, how many requests the key's limit lets through at once (its
      token bucket's size): they go at once before pacing starts. Default 1.
    - `timeout`, `retry`, `poll`: see `Timeout`, `RetryPolicy` and `PollPolicy`.
    - `http_session`: an `aiohttp.ClientSession` of yours to send on; it is not
      closed. Without one the session owns and closes its own.
    - `download_concurrency`: video downloads at once (separate from API requests).
    - `downloads`: what a file host may do before a download is given up on (size cap,
      low-speed limit, deadline, allowed hosts): see `DownloadPolicy`.
    - `hooks`: callables told of each request, retry, rate change, task update and
      download (`Hooks`), e.g. for metrics; a hook that raises is logged, never raised.
    - `clock`: API time; only tests with a compressed emulator clock change it.
      Every wait of the session (polls, deadlines, retry delays, `rps` pacing) is on it.

    A session is opened once: unopened, then open inside ``async with``, then closed.
    Entering it again (open or closed) raises `RuntimeError`; make a new `Session`.
    Its configuration is read-only after construction: setting any attribute of a
    session raises `AttributeError`.
    """

    # Set at the end of __init__: from then on __setattr__ refuses every attribute.
    _sealed = False

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
        http_session: ClientSession | None = None,
        download_concurrency: int = 4,
        clock: Clock | None = None,
        downloads: DownloadPolicy | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        key = ApiKey.resolve(api_key)
        if hooks is not None and not isinstance(hooks, Hooks):
            raise ValidationError("hooks", f"must be a Hooks, got {type(hooks).__name__}")
        self._base_url = check_base_url(
            base_url if base_url is not None else os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        )
        self._max_concurrency = require_whole_number("max_concurrency", max_concurrency)
        self._rps = require_positive_or_none("rps", rps)
        if burst is not None:
            require_whole_number("burst", burst)
            if rps is None:
                raise ValidationError("burst", "needs rps: a burst is the rate limit's, give both")
        self._burst = burst
        require_whole_number("download_concurrency", download_concurrency)
        self._timeout = timeout or Timeout()
        self._retry = retry or RetryPolicy()
        self._poll = poll or PollPolicy()
        self._clock = clock or Clock()
        self._http_session = http_session
        self._engine = Engine(
            base_url=self._base_url, key=key, timeout=self._timeout, retry=self._retry,
            poll=self._poll, clock=self._clock, max_concurrency=self._max_concurrency, rps=rps,
            burst=self._burst,
            download_concurrency=download_concurrency, http_session=http_session,
            downloads=downloads, hooks=hooks,
        )
        self._sealed = True

    def __setattr__(self, name: str, value: object) -> None:
        # The parts were built from the configuration at construction: a later change
        # would be silently ignored (or break them), so none is accepted.
        if self._sealed:
            raise AttributeError(
                f"Session attributes are read-only after construction, cannot set {name!r}: "
                "make a new Session with the settings you want"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Session attributes are read-only, cannot delete {name!r}")

    # Configuration is read-only: the parts below were built from it at construction.

    @property
    def base_url(self) -> str:
        """The API base URL."""
        return self._base_url

    @property
    def max_concurrency(self) -> int:
        """Requests in flight to the API host at once, at most."""
        return self._max_concurrency

    @property
    def burst(self) -> int | None:
        """The key's burst given with `rps`, if any."""
        return self._burst

    @property
    def rps(self) -> float | None:
        """The key's rate limit given, requests per second (None: learned from 429s)."""
        return self._rps

    @property
    def timeout(self) -> Timeout:
        """The per-request time limits."""
        return self._timeout

    @property
    def retry(self) -> RetryPolicy:
        """How requests are retried."""
        return self._retry

    @property
    def poll(self) -> PollPolicy:
        """How often watched tasks are polled."""
        return self._poll

    @property
    def clock(self) -> Clock:
        """The session's time (API seconds)."""
        return self._clock

    @property
    def stats(self) -> SessionStats:
        """Counters of what this session sent and met: a snapshot taken now (a copy;
        changing it changes nothing in the session; read it again for newer counts)."""
        return attrs.evolve(self._engine.stats)

    def __repr__(self) -> str:
        return (
            f"Session(base_url={self._base_url!r}, max_concurrency={self._max_concurrency}, "
            f"state={self._engine.state.value})"
        )

    async def __aenter__(self) -> Session:
        """Open the session: once. Entering it again, open or closed, is a `RuntimeError`.

        A borrowed `http_session` that is already closed, or has ``auth=`` or a default
        Authorization header of its own, is refused here (`ValidationError`, field
        ``http_session``), before anything is sent.
        """
        if self._http_session is not None and self._http_session.closed:
            raise ValidationError(
                "http_session", "the aiohttp.ClientSession passed as http_session= is closed: "
                "pass an open one (it stays yours and is not closed by the Session)"
            )
        if self._http_session is not None and (
                "Authorization" in self._http_session.headers):
            # The session's default headers go with every request it sends, downloads
            # from file hosts included: credentials there would reach every file host.
            raise ValidationError(
                "http_session", "the aiohttp.ClientSession passed as http_session= has a "
                "default Authorization header, which it would send to file hosts too: the "
                "Session sends the API key itself, to the API host only; pass one without it"
            )
        if self._http_session is not None and self._http_session.auth is not None:
            # aiohttp refuses a request with both its own auth and an Authorization
            # header; and the session's credentials would go to file hosts too.
            raise ValidationError(
                "http_session", "the aiohttp.ClientSession passed as http_session= has "
                "auth= set: the Session sends the API key itself; pass one without auth"
            )
        await self._engine.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._engine.__aexit__(exc_type, exc, tb)

    # -- single requests --------------------------------------------------------------

    async def submit(
        self, request: VideoRequest, *, idempotency_key: str | None = None
    ) -> Submission:
        """Submit one generation; returns its `Submission` (the task id).

        Retried only when the server surely did not create the task. After an
        ambiguous failure the error has ``submission_ambiguous`` set: the task may
        exist and be billed, so look before submitting again.

        `idempotency_key` (default: 128 random bits as hex) is sent as the
        ``Idempotency-Key`` header of every attempt: printable ASCII, 1 to 255
        characters, no spaces at its ends.
        """
        if type(request) is not VideoRequest:  # (the usual request: one check, inline)
            request = _check_request("request", request)
        if idempotency_key is not None:
            check_idempotency_key("idempotency_key", idempotency_key)
        try:
            return await self._engine.submit(request, key=idempotency_key)
        except UNENCODABLE as exc:
            refused = unsendable(request, exc)
            if refused is None:
                raise
            raise refused from None

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
        _check_iterable("requests", requests, VideoRequest, "VideoRequest")
        items = [_check_request(f"requests[{i}]", r) for i, r in enumerate(requests)]
        if idempotency_keys is not None and (
                isinstance(idempotency_keys, (str, bytes))
                or not isinstance(idempotency_keys, Sequence)):
            raise ValidationError(
                "idempotency_keys", f"must be a list or tuple of keys, one per request, got"
                f" {type(idempotency_keys).__name__}")
        if idempotency_keys is not None and len(idempotency_keys) != len(items):
            raise ValidationError(
                "idempotency_keys", f"has {len(idempotency_keys)} keys for {len(items)} requests"
            )
        if idempotency_keys is not None:
            seen: dict[str, int] = {}
            for i, given in enumerate(idempotency_keys):
                if check_idempotency_key(f"idempotency_keys[{i}]", given) is None:
                    continue  # a new random key each: None repeats nothing
                if given in seen:
                    # Two requests under one key: a server that honours it keeps one.
                    raise ValidationError(
                        f"idempotency_keys[{i}]", f"repeats idempotency_keys[{seen[given]}]"
                        " (one key per submission)")
                seen[given] = i
        self._engine.require_open()
        # A list, not a dict by index: 100,000 outcomes cost 8 bytes each, not ~50.
        outcomes: list[Submission | APIMartError | None] = [None] * len(items)

        async def submit_one(
            index: int, request: VideoRequest, gate: Callable[[], None]
        ) -> Submission:
            key = idempotency_keys[index] if idempotency_keys is not None else None
            try:
                return await self._engine.submit(request, key=key, gate=gate)
            except UNENCODABLE as exc:
                refused = unsendable(request, exc)
                if refused is None:
                    raise
                raise refused from None

        def done(index: int, outcome: Submission | APIMartError | None) -> None:
            # None only comes from a closed gate, and this batch never closes its gate.
            assert outcome is not None
            outcomes[index] = outcome

        await submit_each(items, submit_one, done, workers=self.max_concurrency)
        # `submit_each` ends every index exactly once, and never with None here (`done`).
        return cast("list[Submission | APIMartError]", outcomes)

    async def get_task(self, task_id: str | Submission) -> Task:
        """The task's current state (``GET /v1/tasks/{id}``), retried on transient errors."""
        tid = task_id.task_id if isinstance(task_id, Submission) else task_id
        return await self._engine.get_task(tid)

    async def balance(self) -> Balance:
        """The API key's balance (``GET /v1/balance``), retried on transient errors.

        `Balance.remain` is None when the key has no quota limit (`Balance.unlimited`).
        A 401 raises `AuthenticationError`; an answer with ``"success": false`` raises
        `APIStatusError` with the server's message; a malformed one `DecodeError`.
        """
        return await self._engine.balance()

    def watch(
        self,
        tasks: Iterable[str | Submission],
        *,
        timeout: float | None = None,
        task_timeout: float | None = None,
        progress_every: float | None = None,
    ) -> Watch:
        """Follow tasks to their end: an async iterator of `TaskUpdate`.

        One update per change of status or progress, exactly one final update per task
        (`update.final`), and the iteration ends when every task has had its final
        update. `task_timeout` bounds each task, `timeout` the whole watch (API
        seconds); a task past either gets a final update with `timed_out` set. Use it as
        ``async with session.watch(ids) as updates: async for u in updates: ...``; plain
        ``async for u in session.watch(ids)`` works too, and leaving that loop stops the
        polling at once. A watch kept in a variable polls until it is closed (leaving
        ``async with``, or `Watch.close`): a later loop may go on where one left.

        `progress_every` (API seconds, finite and > 0) asks for a progress resolution:
        while this watch follows a task, it is polled at least that often (never more
        often than the poll policy's `min_interval`), so a task whose progress moves
        gets an update about every `progress_every` seconds. It costs polls: a 60 s
        task at ``progress_every=2`` takes about 30 polls instead of the handful the
        default (frugal) schedule spends. Other watchers of the same task are not
        affected, and when this watch ends the task goes back to the policy's schedule.
        """
        require_positive_or_none("timeout", timeout)
        require_positive_or_none("task_timeout", task_timeout)
        every = require_finite_positive_or_none("progress_every", progress_every)
        if isinstance(tasks, (str, Submission)) or not isinstance(tasks, Iterable):
            # A single id is a string: iterated, it would be watched as one "task" a
            # character.
            raise ValidationError(
                "tasks", "must be an iterable of task ids or Submissions, got " + (
                    f"one {type(tasks).__name__}: pass [it]"
                    if isinstance(tasks, (str, Submission)) else type(tasks).__name__))
        ids = _distinct([_task_id(t) for t in tasks])
        self._engine.require_open()
        return Watch(self._engine, ids, timeout=timeout, task_timeout=task_timeout,
                     progress_every=every)

    def stream(
        self,
        requests: Iterable[VideoRequest],
        *,
        timeout: float | None = None,
        task_timeout: float | None = None,
        progress_every: float | None = None,
    ) -> BatchStream:
        """Submit `requests` and follow each to its end, as one stream of `BatchEvent`.

        ``async with session.stream(requests) as events: async for e in events: ...``
        Each item gets SUBMITTED, PROGRESS events, then exactly one final event:
        COMPLETED, FAILED, SUBMIT_FAILED or TIMED_OUT (`e.index` is its input position).
        `progress_every`: as for `watch`, for every task of the stream.
        """
        _check_iterable("requests", requests, VideoRequest, "VideoRequest")
        items = [_check_request(f"requests[{i}]", r) for i, r in enumerate(requests)]
        require_positive_or_none("timeout", timeout)
        require_positive_or_none("task_timeout", task_timeout)
        every = require_finite_positive_or_none("progress_every", progress_every)
        self._engine.require_open()
        return BatchStream(self._engine, items, timeout=timeout, task_timeout=task_timeout,
                           progress_every=every)

    # `timeout` is in API seconds on the session's clock, so anyio.fail_after would not do.
    async def wait(
        self, task_id: str | Submission, *, timeout: float | None = None  # noqa: ASYNC109
    ) -> Task:
        """Poll until the task ends; return it when completed.

        Raises `TaskFailedError` when it fails or is cancelled, `TaskTimeoutError`
        after `timeout` API seconds (the task itself goes on; if its polls were failing
        then, the last poll's error is its ``__cause__``), or the error that made
        watching impossible: e.g. `NotFoundError`, or the last `ServerError`,
        `APIConnectionError` or `DecodeError` once polls have failed for the poll
        policy's `give_up_after`.
        """
        tid = _task_id(task_id)
        # Checked under its own name: `watch` would name its `task_timeout`.
        require_positive_or_none("timeout", timeout)
        async with self.watch([tid], task_timeout=timeout) as updates:
            async for update in updates:
                if not update.final:
                    continue
                if update.timed_out:
                    raise TaskTimeoutError(
                        tid, timeout=timeout or 0.0, task=update.task, poll_error=update.error
                    ) from update.error
                if update.error is not None:
                    raise update.error
                assert update.task is not None
                if update.completed:
                    return update.task
                raise TaskFailedError(update.task)
        raise RuntimeError(f"watch of {tid} ended without a final update")  # pragma: no cover

    async def download(
        self, task: Task | str | Submission, dest: str | PathLike[str], *,
        overwrite: bool = False,
    ) -> DownloadResult:
        """Download every output of a completed task (its videos and images) to `dest`
        (a file path, or a directory).

        The first output goes to `dest` itself; the others beside it, numbered:
        ``fox.mp4``, ``fox-2.mp4``, ``fox-3.png`` (see `Task.outputs`; an extension comes
        from the output's link, else ``.mp4`` for a video, ``.png`` for an image). The
        result describes the first file; `DownloadResult.paths` (and `.files`) lists all.
        The outputs are fetched one after another; if one fails, the error is raised and
        the files already saved stay (calling again fetches the rest: a file that holds
        the same bytes is kept as it is).

        The bytes stream into a hidden ``.NAME.part`` file beside `dest`; a cut
        connection resumes with a Range request (and starts over if the host ignores
        Range); the length is checked and the file renamed into place atomically, so
        `dest` is either absent or whole. Nothing of the API's (key, headers) is sent
        to the file host. An expired link triggers one fresh `get_task`, else
        `ResultExpiredError`. A task id is looked up first.

        A file already at `dest` holding other bytes is not replaced: `ValidationError`
        (field ``dest``), unless `overwrite` is True; the same video again is fine.

        The file host is distrusted (see `DownloadPolicy`): the link must be https (http
        to loopback), not a private or link-local address; the body must be a video or
        image container, of a provable length within ``max_bytes``; a ``.part`` left by
        another task or link is never resumed. Such failures raise `DownloadError`.

        Into a directory, the files are named after the task id you passed (a `Task`'s
        own id), never after the id in the server's answer, and must stay inside it:
        ``TASK_ID.mp4``, ``TASK_ID-2.mp4``...
        """
        self._engine.require_open()
        if isinstance(task, Task):
            asked = check_task_id(task.id)
        else:
            asked = check_task_id(task.task_id if isinstance(task, Submission) else task)
            task = await self.get_task(task)
        path = Path(dest)
        outputs = task.outputs or (TaskOutput(kind="video", url=""),)
        if await anyio.Path(path).is_dir():
            name = numbered_name(asked, 0, outputs[0])
            # One plain name, never a path: the file stays inside `dest`.
            if Path(name).name != name or "\\" in name:
                raise ValidationError("task_id", f"{asked!r} does not name a file in {dest}")
            path = path / name
        first = await self._engine.download(task, path, overwrite=overwrite)
        more = []
        for index in range(1, len(outputs)):
            beside = path.with_name(numbered_name(path.stem, index, outputs[index]))
            more.append(await self._engine.download(task, beside, overwrite=overwrite,
                                                    index=index))
        return attrs.evolve(first, more=tuple(more))

    async def run_batch(
        self,
        requests: Sequence[VideoRequest | BatchItem],
        *,
        out_dir: str | PathLike[str],
        journal: str | PathLike[str] | None = None,
        resubmit_ambiguous: bool = False,
        on_change: Callable[[ItemResult], None] | None = None,
        stop: anyio.Event | None = None,
        batch: str = "default",
        lease: float = 30.0,
        retry_failed: bool = False,
        max_spend: float | None = None,
        item_cost: float | None = None,
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

        Items that ended FAILED in an earlier run (the task failed, or the API refused
        the request) stay failed on a re-run; with `retry_failed` True they are
        submitted again as new tasks, under new Idempotency-Keys: each is billed again.

        Setting `stop` (e.g. from a signal handler) stops sending at once: submissions
        already on the wire land and are journaled, polling and downloads end, and the
        report comes back with `interrupted` set; a re-run resumes. Items are known by
        content, so a re-run with lines added, removed or reordered sends only the new
        requests. One run per journal: a second gets `JournalBusyError`. A journal
        write that fails mid-run stops sending at once and raises `JournalWriteError`;
        tasks created but not journaled are printed to stderr and appended to
        ``JOURNAL.recovered-task-ids``.

        `max_spend` caps what the batch spends, across all its runs on the journal
        (capped or not: every run that sends reads the balance before and after), in
        the balance's unit (see
        `Session.balance`): the balance is read before the first submission (a balance
        with nothing left refuses the run with `InsufficientBalanceError`, nothing
        sent), each item's estimated cost is reserved before it is sent (submissions at
        once count each other), and an item that could cross the cap is left pending
        in the journal: a re-run with a larger cap sends it. Tasks already submitted are
        still followed and downloaded. What was spent is in `BatchReport.spend`
        (a `BatchSpend`; `over_cap` when it was crossed); see the README's "Balance and
        spend caps" for how costs are learned. `item_cost` (with `max_spend`) is a known
        price per item: every item is counted at it (or at more, once the balance shows
        more) from the first, so the cap holds exactly, with no lone first item per
        group.


        A ``postgresql://`` URL as `journal` (needs ``apimart-async[postgres]``) shares
        batch `batch` with every other process running it (a fleet): items are enqueued
        by content identity, claimed one at a time, and this call works until the whole
        batch is done. `rps` (the session's) is then the key's rate for the whole fleet.
        A worker silent for longer than `lease` seconds is declared dead: what it was
        submitting becomes ambiguous, the rest is adopted; if it wakes, its writes are
        refused and it raises `WorkerFencedError`. `on_change` then follows the journal
        (twice a second), whichever worker moves an item.
        """
        # The batch modules (runner, journals, fleet) load on first use: a session
        # that never runs a batch does not carry them (#14).
        from ._batch.pg import is_pg_url
        from ._batch.runner import run_batch

        _check_iterable("requests", requests, (VideoRequest, BatchItem),
                        "VideoRequest or BatchItem")
        self._engine.require_open()
        where: Path | str | None = None
        if is_pg_url(journal):
            where = str(journal)
        elif journal is not None:
            where = Path(journal)
        return await run_batch(
            self._engine, requests, out_dir=Path(out_dir), journal=where,
            resubmit_ambiguous=resubmit_ambiguous, on_change=on_change, stop=stop,
            batch=batch, lease=lease,
            retry_failed=retry_failed,
            max_spend=max_spend, item_cost=item_cost,
        )

    async def run_worker(
        self,
        *,
        journal: str,
        batch: str = "default",
        out_dir: str | PathLike[str],
        lease: float = 30.0,
        resubmit_ambiguous: bool = False,
        stop: anyio.Event | None = None,
        max_spend: float | None = None,
        item_cost: float | None = None,
    ) -> WorkerOutcome:
        """Join batch `batch` of the PostgreSQL journal `journal` (a ``postgresql://``
        URL) as one more worker, without its input file; work until the whole batch is
        done, the fleet is stopped by an account failure, or `stop` is set.

        Videos this worker downloads go to `out_dir`. The session's `rps` is the key's
        rate shared by the whole fleet. Raises `WorkerFencedError` if the fleet declared
        this worker dead (it was silent for longer than `lease` seconds). A batch started
        with `max_spend` keeps its cap for every worker; `max_spend` here sets it anew,
        and `item_cost` (with `max_spend`, as in `run_batch`) the known price per item
        every worker then counts.
        """
        from ._batch.fleet import run_worker
        from ._batch.pg import PgJournal, is_pg_url
        from ._batch.runner import check_item_cost, check_max_spend

        self._engine.require_open()
        if not is_pg_url(journal):
            raise ValidationError(
                "journal", f"must be a postgresql:// URL (workers share a batch through "
                f"PostgreSQL), got {journal!r}")
        async with PgJournal(journal, batch, lease=lease) as jr:
            # Started together with the `batch` command that fills it: give that a moment.
            with anyio.move_on_after(min(lease, 10.0)):
                while not await jr.counts():  # noqa: ASYNC110 - another process fills it
                    await anyio.sleep(0.2)
            if not (await jr.counts()):
                raise ValidationError(
                    "batch", f"{batch!r} has no items on {jr.label}: start it with "
                    f"'apimart-async batch FILE --journal URL --batch {batch}'")
            return await run_worker(
                self._engine, jr, out_dir=Path(out_dir), rps=self._engine.limits.rate.given,
                resubmit_ambiguous=resubmit_ambiguous, stop=stop,
                max_spend=check_max_spend(max_spend),
                item_cost=check_item_cost(item_cost, max_spend),
            )


def _distinct(ids: list[str]) -> list[str]:
    """`ids` without repeats, first occurrence kept. A watch of 100,000 ids has none
    nearly always: a sorted copy (8 bytes an id) shows it, where the dict that drops
    repeats holds ~50 bytes an id, and those pages stayed in the process's RSS at the
    watch's start (#14)."""
    ordered = sorted(ids)
    if all(a != b for a, b in itertools.pairwise(ordered)):
        return ids
    return list(dict.fromkeys(ids))


def _task_id(task: object) -> str:
    return task.task_id if isinstance(task, Submission) else check_task_id(task)


def _check_iterable(field: str, value: object, single: type | tuple[type, ...],
                    what: str) -> None:
    """Refuse one item where an iterable of them goes (``[it]``), or no iterable."""
    if isinstance(value, single) or not isinstance(value, Iterable):
        raise ValidationError(
            field, f"must be an iterable of {what}, got one {type(value).__name__}"
            + (": pass [it]" if isinstance(value, single) else ""))


def _check_request(field: str, request: object) -> VideoRequest:
    if not isinstance(request, VideoRequest):
        raise ValidationError(field, f"must be a VideoRequest, got {type(request).__name__}")
    return request
