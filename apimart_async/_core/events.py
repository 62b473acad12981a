"""What the event streams yield: `TaskUpdate` (`Session.watch`) and `BatchEvent`
(`Session.stream`), and the pure mapping from one to the other."""

from __future__ import annotations

import enum

import attrs

from .errors import APIMartError, TaskFailedError
from .models import Submission, Task, TaskStatus, VideoRequest

__all__ = ["BatchEvent", "EventKind", "TaskUpdate", "event_for_update"]


@attrs.frozen(kw_only=True)
class TaskUpdate:
    """A change seen by `Session.watch`: a new status or progress, or the task's end.

    Each task gets exactly one final update (`final` is True): its terminal state, or
    `timed_out`, or an `error` that stopped watching it (e.g. `NotFoundError`, or the
    last `ServerError` / `APIConnectionError` / `DecodeError` once its polls failed
    for the poll policy's `give_up_after`). A `timed_out` update whose polls were
    failing at the deadline carries the last poll's error too.
    `task` is the `Task` read by the poll that made this update (None if the task was
    never read, and on an update that repeats a state already handed out: the current
    state given to a watch that joins a task already watched, and the final update of
    a watch ended by an error; `status` and `progress` are then the last ones read).
    """

    task_id: str
    status: TaskStatus
    progress: int = 0
    task: Task | None = None
    error: APIMartError | None = None
    timed_out: bool = False

    @property
    def final(self) -> bool:
        """True for the last update of this task."""
        return self.status.is_terminal or self.timed_out or self.error is not None

    @property
    def completed(self) -> bool:
        """True when the task completed (its videos are ready)."""
        return self.status is TaskStatus.COMPLETED


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
      watching it hit an error that will not pass (e.g. `NotFoundError`), or its polls
      failed for the poll policy's `give_up_after` (`error` is the last one).
    - SUBMIT_FAILED: the submission was refused or never sent (`error` says why;
      ``error.submission_ambiguous`` means it may exist anyway).
    - TIMED_OUT: a deadline passed; `task_id` is set if the task exists and goes on
      (`error` is the last poll's error if its polls were failing then).
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
