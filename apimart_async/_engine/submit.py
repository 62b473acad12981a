"""Submitting many requests: a fixed pool of workers under the session's limits.

One item's failure never cancels the others; a fatal answer (bad key, no balance)
stops the items not yet sent, each marked with `NotSubmittedError`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence

import anyio
import attrs

from .._core.errors import APIMartError, NotSubmittedError, TaskFailedError
from .._core.groups import ungrouped
from .._core.models import Submission, Task, TaskStatus, TaskUpdate, VideoRequest

__all__ = ["BatchEvent", "EventKind", "Gate", "SubmitOutcome", "submit_each"]

SubmitOutcome = Submission | APIMartError
# submit_one(index, request, gate) -> Submission
SubmitOne = Callable[[int, VideoRequest, Callable[[], None]], Awaitable[Submission]]


class StreamClosed(Exception):
    """Internal: the consumer left, so items not yet sent are not sent."""


class Gate:
    """Checked right before each submission goes out on the wire."""

    def __init__(self) -> None:
        self.fatal: APIMartError | None = None
        self.closed = False

    def check(self) -> None:
        """Raise if the item about to be sent must not be."""
        if self.fatal is not None:
            raise NotSubmittedError(self.fatal)
        if self.closed:
            raise StreamClosed


async def submit_each(
    requests: Sequence[VideoRequest],
    submit_one: SubmitOne,
    on_done: Callable[[int, SubmitOutcome | None], None],
    *,
    workers: int,
    gate: Gate | None = None,
) -> None:
    """Submit every request; call `on_done(index, outcome)` as each one ends.

    The outcome is None for an item not sent because the gate was closed.
    """
    gate = gate or Gate()
    indices = iter(range(len(requests)))

    async def worker() -> None:
        # The shared iterator hands each index to exactly one worker.
        for index in indices:
            try:
                gate.check()
                outcome: SubmitOutcome = await submit_one(index, requests[index], gate.check)
            except StreamClosed:
                on_done(index, None)
                continue
            except APIMartError as exc:
                if exc.fatal and gate.fatal is None:
                    gate.fatal = exc
                outcome = exc
            on_done(index, outcome)

    with ungrouped():
        async with anyio.create_task_group() as tg:
            for _ in range(min(workers, len(requests))):
                tg.start_soon(worker)


class EventKind(str, enum.Enum):
    """What a `BatchEvent` reports. The last four end an item; each item gets one of them."""

    SUBMITTED = "submitted"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"
    SUBMIT_FAILED = "submit_failed"
    TIMED_OUT = "timed_out"


_FINAL = frozenset(
    {EventKind.COMPLETED, EventKind.FAILED, EventKind.SUBMIT_FAILED, EventKind.TIMED_OUT}
)


@attrs.frozen(kw_only=True)
class BatchEvent:
    """One event of `Session.stream`: item `index` (its position in the input) moved on.

    - SUBMITTED: `submission` is set. PROGRESS: `task` has the new status or progress.
    - COMPLETED: `task` has the video URLs.
    - FAILED: the task failed or was cancelled (`error` is a `TaskFailedError`), or
      watching it hit an error that will not pass (e.g. `NotFoundError`).
    - SUBMIT_FAILED: the submission was refused or never sent (`error` says why;
      ``error.submission_ambiguous`` means it may exist anyway).
    - TIMED_OUT: a deadline passed; `task_id` is set if the task exists and goes on.
    """

    kind: EventKind
    index: int
    request: VideoRequest
    submission: Submission | None = None
    task: Task | None = None
    error: APIMartError | None = None

    @property
    def task_id(self) -> str | None:
        """The task's id, once submitted."""
        return self.submission.task_id if self.submission else None

    @property
    def final(self) -> bool:
        """True for the item's last event."""
        return self.kind in _FINAL


def event_for_update(
    update: TaskUpdate, index: int, request: VideoRequest, submission: Submission
) -> BatchEvent:
    """The `BatchEvent` for a poller update of a submitted item."""
    if update.timed_out:
        kind, error = EventKind.TIMED_OUT, update.error
    elif update.error is not None:
        kind, error = EventKind.FAILED, update.error
    elif update.status is TaskStatus.COMPLETED:
        kind, error = EventKind.COMPLETED, None
    elif update.status.is_terminal and update.task is not None:
        kind, error = EventKind.FAILED, TaskFailedError(update.task)
    else:
        kind, error = EventKind.PROGRESS, None
    return BatchEvent(
        kind=kind, index=index, request=request, submission=submission,
        task=update.task, error=error,
    )
