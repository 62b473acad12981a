"""What a batch takes and gives back: `BatchItem`, `ItemResult`, `BatchReport`,
`BatchSpend`, `ItemState` and a fleet worker's `WorkerOutcome`.

Kept apart from the runner, the journals and the fleet, which `Session.run_batch` and
`Session.run_worker` import only when called (#14): the session imports these few
types at once, so `typing.get_type_hints` (Sphinx autodoc, IDEs) resolves its
annotations after a plain ``import apimart_async``. Imports `_core` only.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

import attrs

from .._core.balance import Balance
from .._core.errors import APIMartError, ValidationError
from .._core.models import VideoRequest

__all__ = ["BatchItem", "BatchReport", "BatchSpend", "ItemResult", "ItemState", "WorkerOutcome"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ItemState(str, enum.Enum):
    """Where a batch item stands, as the journal records it."""

    PENDING = "pending"  # not sent (yet, or refused before sending: nothing billed)
    SUBMITTING = "submitting"  # on the wire; a crash here leaves it ambiguous
    SUBMITTED = "submitted"  # the task exists: task_id is set
    COMPLETED = "completed"  # the task completed; the video is not on disk yet
    FAILED = "failed"  # the task failed, or the API rejected the request
    DOWNLOADED = "downloaded"  # every output is on disk: path, size, sha256 (and `files`)
    AMBIGUOUS = "ambiguous"  # may or may not have been created (and billed)


def _check_name(_: object, __: object, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
        raise ValidationError(
            "name", f"must be 1-100 letters, digits, '.', '_' or '-' (a file name), got {value!r}"
        )


@attrs.frozen(kw_only=True)
class BatchItem:
    """A request with an optional `name`, used as its output file name and journal key."""

    request: VideoRequest
    name: str | None = attrs.field(default=None, validator=_check_name)


@attrs.frozen(kw_only=True)
class ItemResult:
    """Where one item ended up. `ok` means its video is on disk at `path`."""

    index: int
    key: str
    name: str | None
    request: VideoRequest
    state: ItemState
    task_id: str | None = None
    progress: int = 0
    path: Path | None = None
    size: int | None = None
    sha256: str | None = None
    #: Every output of the task that is on disk, in output order (`path` is the first):
    #: all of them once the item is downloaded.
    files: tuple[Path, ...] = ()
    #: The typed error that put the item where it is (`TaskFailedError`, a
    #: `RateLimitError` with its status, code and request id...), else None. Rebuilt from
    #: the journal on a re-run, as its own type.
    error: APIMartError | None = None
    #: Why the item is where it is, in words (what the CLI prints), else None.
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when every output of the task is downloaded."""
        return self.state is ItemState.DOWNLOADED


@attrs.frozen(kw_only=True)
class BatchSpend:
    """What a run with ``max_spend`` spent, in the account's unit.

    - `cap`: the ``max_spend`` given, for the whole batch: all runs on its journal
      together, capped or not. `spent_before`: what earlier runs spent (recorded in the
      journal, plus the estimated cost of paid items no balance read measured);
      `spent`: this run's spending, ``used_balance`` at the end minus at the start (the
      whole key's: another client spending on the same key meanwhile is counted too,
      and held against the cap). `total` is their sum.
    - `start`, `end`: the balance read before the first submission and after the last
      (`end` is None when that last read failed: `spent` is then the run's estimate).
    - `left_pending`: items not sent because sending them could have crossed the cap;
      they stay pending in the journal, and a re-run (with a larger cap) sends them.
    """

    cap: float
    spent: float
    spent_before: float = 0.0
    start: Balance
    end: Balance | None
    left_pending: int = 0

    @property
    def total(self) -> float:
        """What the batch spent in all its runs: `spent_before` + `spent`."""
        return self.spent_before + self.spent

    @property
    def stopped_at_cap(self) -> bool:
        """True when the cap left items unsent."""
        return self.left_pending > 0

    @property
    def over_cap(self) -> bool:
        """True when the batch spent more than the cap: a first item of a price group
        not priced yet cost more than all the room left (``item_cost=`` rules it out),
        or another client spent on the same key meanwhile."""
        return self.total > self.cap + 1e-9


@attrs.frozen(kw_only=True)
class BatchReport:
    """The outcome of `run_batch`: one `ItemResult` per item, in input order, and totals."""

    items: tuple[ItemResult, ...]
    #: The journal file; for a PostgreSQL journal, its URL (no password) and batch.
    journal: Path | str
    #: True when `run_batch`'s `stop` was set: unsent items are left pending.
    interrupted: bool = False
    bytes_downloaded: int
    retries: int
    rate_limited: int
    #: Items of earlier runs on this journal that are no longer in the input but were
    #: paid for (they have a task id): this run finished them too, to their old files.
    earlier: tuple[ItemResult, ...] = ()
    #: The 401/402/403 that stopped the batch (`AuthenticationError`,
    #: `InsufficientBalanceError` or `PermissionDeniedError`), else None. The items it
    #: stopped keep their place in the journal: a re-run after fixing the account resumes them.
    account_error: APIMartError | None = None
    #: With ``max_spend``: what this run spent and what the cap left unsent, else None.
    spend: BatchSpend | None = None

    def _count(self, *states: ItemState) -> int:
        return sum(item.state in states for item in self.items)

    @property
    def completed(self) -> int:
        """Items whose video is on disk."""
        return self._count(ItemState.DOWNLOADED)

    @property
    def ambiguous(self) -> int:
        """Items that may or may not exist on the server (see `ItemState.AMBIGUOUS`)."""
        return self._count(ItemState.AMBIGUOUS)

    @property
    def failed(self) -> int:
        """Items that failed: the task failed, or the API rejected the request."""
        return self._count(ItemState.FAILED)

    @property
    def pending(self) -> int:
        """Items not sent (interrupted, stopped by the account or the spend cap): a
        re-run sends them."""
        return self._count(ItemState.PENDING)

    @property
    def unfinished(self) -> int:
        """Items submitted whose video is not on disk yet: a re-run polls and fetches them."""
        return self._count(ItemState.SUBMITTING, ItemState.SUBMITTED, ItemState.COMPLETED)

    @property
    def ok(self) -> bool:
        """True when every item's video is on disk."""
        return self.completed == len(self.items)


@attrs.frozen(kw_only=True)
class WorkerOutcome:
    """What one worker did, and how the batch stands when it left."""

    worker: int
    submitted: int
    downloaded: int
    adopted: int
    declared_dead: tuple[int, ...]
    counts: dict[str, int]
    interrupted: bool
    #: The account failure (text) that stopped the fleet, if any.
    stopped: str | None
    account_error: APIMartError | None = None
    #: True when this worker stopped claiming because the next item could cross the
    #: batch's spend cap (`max_spend`).
    stopped_at_cap: bool = False
