"""`Session`: the async context manager users hold; a thin facade over the parts."""

from __future__ import annotations

import logging
import uuid
from types import TracebackType
from typing import TYPE_CHECKING

from ._clock import Clock
from ._config import DEFAULT_BASE_URL, ApiKey, Timeout, check_base_url
from ._errors import TaskFailedError, TaskTimeoutError, ValidationError
from ._http import Http
from ._limits import Limits
from ._models import Submission, Task, VideoRequest, finite_positive
from ._polling import PollPolicy, PollState, next_delay, observe
from ._retry import RetryPolicy
from ._transport import SessionStats, Transport
from ._wire import build_get_task, build_submit, check_task_id, parse_submit, parse_task

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Session"]

log = logging.getLogger("apimart_async")


def _check_concurrency(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError("max_concurrency", f"must be a whole number >= 1, got {value!r}")
    return value


class Session:
    """A connection to the APIMart API; use it as ``async with Session() as s:``.

    - `api_key`: defaults to the ``APIMART_API_KEY`` environment variable.
    - `base_url`: https, or plain http to a loopback host (the emulator).
    - `max_concurrency`: requests in flight to the API host at any moment, all
      coroutines of this session together.
    - `rps`: an optional ceiling on requests per second to the API host; the session
      also slows down by itself when the server answers 429.
    - `timeout`, `retry`, `poll`: see `Timeout`, `RetryPolicy` and `PollPolicy`.
    - `http_session`: an `aiohttp.ClientSession` of yours to send on; it is not
      closed. Without one the session owns and closes its own.
    - `clock`: API time; only tests with a compressed emulator clock change it.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        max_concurrency: int = 16,
        rps: float | None = None,
        timeout: Timeout | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        http_session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._key = ApiKey.resolve(api_key)
        self.base_url = check_base_url(base_url)
        self.max_concurrency = _check_concurrency(max_concurrency)
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
        self._open = False

    def __repr__(self) -> str:
        return (
            f"Session(base_url={self.base_url!r}, max_concurrency={self.max_concurrency}, "
            f"open={self._open})"
        )

    async def __aenter__(self) -> Session:
        await self._http.open()
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        await self._http.close()

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError("the session is not open: use 'async with Session(...) as s'")

    # -- single requests --------------------------------------------------------------

    async def submit(
        self, request: VideoRequest, *, idempotency_key: str | None = None
    ) -> Submission:
        """Submit one generation; returns its `Submission` (the task id).

        Retried only when the server surely did not create the task. After an
        ambiguous failure the error has ``submission_ambiguous`` set: the task may
        exist and be billed, so look before submitting again.
        """
        if not isinstance(request, VideoRequest):
            raise ValidationError(
                "request", f"must be a VideoRequest, got {type(request).__name__}"
            )
        self._require_open()
        key = idempotency_key or uuid.uuid4().hex
        task_id: str = await self._transport.call(
            build_submit(request, idempotency_key=key), parse_submit
        )
        self.stats.submissions += 1
        log.info("submitted task %s", task_id)
        return Submission(task_id=task_id, request=request, idempotency_key=key)

    async def get_task(self, task_id: str | Submission) -> Task:
        """The task's current state (``GET /v1/tasks/{id}``), retried on transient errors."""
        tid = task_id.task_id if isinstance(task_id, Submission) else check_task_id(task_id)
        self._require_open()
        task: Task = await self._transport.call(build_get_task(tid), parse_task)
        self.stats.polls += 1
        return task

    async def wait(self, task_id: str | Submission, *, timeout: float | None = None) -> Task:
        """Poll until the task ends; return it when completed.

        Raises `TaskFailedError` when it fails or is cancelled and `TaskTimeoutError`
        after `timeout` API seconds (the task itself goes on).
        """
        tid = task_id.task_id if isinstance(task_id, Submission) else check_task_id(task_id)
        finite_positive("timeout", timeout)
        self._require_open()
        state = PollState(started_at=self.clock.now())
        deadline = None if timeout is None else state.started_at + timeout
        last: Task | None = None
        while True:
            delay = next_delay(self.poll, state, self.clock.now())
            if deadline is not None and self.clock.now() + delay > deadline:
                await self.clock.sleep(deadline - self.clock.now())
                raise TaskTimeoutError(tid, timeout=timeout or 0.0, task=last)
            await self.clock.sleep(delay)
            last = await self.get_task(tid)
            observe(state, self.clock.now(), last)
            if last.is_terminal:
                if last.status.value == "completed":
                    return last
                raise TaskFailedError(last)

