"""Event hooks: what a session tells an observer (metrics, tracing) as it works.

The events are frozen attrs objects carrying what happened and never the API key (no
header, no credential field); error fields name the error's type, not its text.
`Hooks` only holds and checks the callables; the I/O shell calls them (`_io.hooks`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .errors import ValidationError
from .events import TaskUpdate

__all__ = [
    "DownloadEvent",
    "Hooks",
    "RateChangeEvent",
    "RequestEvent",
    "RetryEvent",
]


@attrs.frozen(kw_only=True)
class RequestEvent:
    """One attempt to the API host ended (an answer, or no answer at all).

    - `method`, `path`: e.g. ``"GET"``, ``"/v1/tasks/task_01"`` (no host, no query).
    - `attempt`: 1 for the first try, 2 for the first retry, ...
    - `status`: the HTTP status, or None when no answer came (connection failure).
    - `error`: the type name of the error it raised (e.g. ``"RateLimitError"``), or None.
    - `elapsed`: real seconds the attempt took, waiting for a slot excluded.
    """

    method: str
    path: str
    attempt: int
    status: int | None
    error: str | None
    elapsed: float


@attrs.frozen(kw_only=True)
class RetryEvent:
    """An attempt failed and another follows after `delay` (API seconds).

    `error` is the failed attempt's error type name, `status` its HTTP status (None
    without an answer), `attempt` the number of the attempt that failed.
    """

    method: str
    path: str
    attempt: int
    error: str
    status: int | None
    delay: float


@attrs.frozen(kw_only=True)
class RateChangeEvent:
    """The session's request rate changed (requests per second; None: no limit).

    `reason` is ``"throttled"`` (a 429 cut it) or ``"recovered"`` (successes raised it,
    reported when it moved by 10 % or more since the last report). `retry_after` is the
    server's hint on a 429, if it sent one.
    """

    rate: float | None
    previous: float | None
    reason: str
    retry_after: float | None = None


@attrs.frozen(kw_only=True)
class DownloadEvent:
    """A download ended: saved (`error` is None), or given up (`error` names the type).

    `size` is the file's size in bytes (0 when it failed), `elapsed` real seconds,
    `resumed` how many times a cut connection was resumed.
    """

    task_id: str
    path: Path
    size: int
    elapsed: float
    resumed: int = 0
    error: str | None = None


def _check_hook(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not callable(value):
        raise ValidationError(attribute.name, f"must be a callable or None, got {value!r}")
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
        getattr(value, "__call__", None)  # noqa: B004 - an object with an async __call__
    ):
        raise ValidationError(
            attribute.name, "must be a plain (sync) function: hooks run inline on the "
            "session's tasks and are not awaited; to do async work, hand the event to a "
            "queue or asyncio.get_running_loop().create_task(...) from a sync hook",
        )


@attrs.frozen(kw_only=True)
class Hooks:
    """Callables a `Session` calls as things happen: ``Session(hooks=Hooks(...))``.

    - `on_request(RequestEvent)`: each attempt to the API host, retries included.
    - `on_retry(RetryEvent)`: each retry decided, with its delay.
    - `on_rate_change(RateChangeEvent)`: the shared request rate moved.
    - `on_task_update(TaskUpdate)`: each change of a watched task (as `watch` yields
      them, once per change however many watchers), final updates included.
    - `on_download(DownloadEvent)`: each download saved or given up.

    Hooks are plain synchronous callables, called inline on the session's own tasks:
    keep them quick (count, record, put on a queue). A coroutine function is refused
    (`ValidationError`). A hook that raises is logged (with its traceback, at ERROR on
    the ``apimart_async`` logger) and otherwise ignored: it never breaks the session.
    """

    on_request: Callable[[RequestEvent], object] | None = attrs.field(
        default=None, validator=_check_hook)
    on_retry: Callable[[RetryEvent], object] | None = attrs.field(
        default=None, validator=_check_hook)
    on_rate_change: Callable[[RateChangeEvent], object] | None = attrs.field(
        default=None, validator=_check_hook)
    on_task_update: Callable[[TaskUpdate], object] | None = attrs.field(
        default=None, validator=_check_hook)
    on_download: Callable[[DownloadEvent], object] | None = attrs.field(
        default=None, validator=_check_hook)
