"""Showing a batch as it runs: a live rich display on a terminal, plain lines otherwise."""

from __future__ import annotations

from collections import Counter
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from .._batch.journal import ItemState
from .._batch.runner import BatchReport, ItemResult
from .._core.errors import account_problem
from .text import shown

__all__ = ["BatchDisplay", "summary_lines"]

# The states worth a line of their own when not on a terminal.
_LOGGED = {ItemState.SUBMITTED, ItemState.DOWNLOADED, ItemState.FAILED, ItemState.AMBIGUOUS}
_FINISHED = (ItemState.DOWNLOADED, ItemState.FAILED, ItemState.AMBIGUOUS)


def _label(result: ItemResult) -> str:
    return result.name or f"#{result.index + 1}"


class BatchDisplay:
    """Feed it each `ItemResult` as it changes (it is `run_batch`'s `on_change`)."""

    def __init__(self, total: int, *, stream: TextIO, live: bool | None = None) -> None:
        self.total = total
        self._console = Console(file=stream, highlight=False)
        self.live = self._console.is_terminal if live is None else live
        self._stream = stream
        self._states: dict[int, ItemState] = {}
        # Kept up to date on each change, not recounted: a batch may have thousands.
        self._counts: Counter[ItemState] = Counter()
        self._progress: Progress | None = None
        self._bar: TaskID | None = None

    def __enter__(self) -> BatchDisplay:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                console=self._console, transient=False,
            )
            self._progress.__enter__()
            self._bar = self._progress.add_task("videos", total=self.total, counts="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    def __call__(self, result: ItemResult) -> None:
        before = self._states.get(result.index)
        self._states[result.index] = result.state
        counts = self._counts
        if before is not None:
            counts[before] -= 1
        counts[result.state] += 1
        finished = sum(counts[state] for state in _FINISHED)
        if self._progress is not None and self._bar is not None:
            text = "  ".join(
                f"{state.value} {counts[state]}" for state in ItemState if counts[state]
            )
            self._progress.update(self._bar, completed=finished, counts=text)
            return
        if result.state is before or result.state not in _LOGGED:
            return
        detail = ""
        if result.state is ItemState.SUBMITTED:
            detail = f"task {result.task_id}"
        elif result.state is ItemState.DOWNLOADED:
            detail = f"{result.path} ({result.size:,} bytes)"
            if len(result.files) > 1:
                detail += f" and {len(result.files) - 1} more: " + ", ".join(
                    path.name for path in result.files[1:])
        elif result.reason:
            detail = shown(result.reason)
        print(f"[{finished:>{len(str(self.total))}}/{self.total}] {result.state.value:<10} "
              f"{_label(result)}  {detail}", file=self._stream, flush=True)


def summary_lines(report: BatchReport) -> list[str]:
    """A human summary: totals, then every item that did not end on disk, and why."""
    mb = report.bytes_downloaded / 1e6
    left = "".join(f", {n} {what}" for n, what in (
        (report.pending, "not sent"), (report.unfinished, "unfinished")) if n)
    lines = [
        f"{len(report.items)} items: {report.completed} downloaded, {report.failed} failed, "
        f"{report.ambiguous} ambiguous{left}; {mb:.1f} MB downloaded; "
        f"{report.retries} retries; {report.rate_limited} rate-limit answers (429) met",
        f"journal: {report.journal}",
    ]
    if report.earlier:
        done = sum(item.ok for item in report.earlier)
        lines.append(f"{len(report.earlier)} paid tasks of earlier runs, no longer in the "
                     f"input: {done} downloaded")
        for item in report.earlier:
            if item.ok:
                continue
            out = (item.path.parent if item.path
                   else getattr(report.journal, "parent", "DIR"))
            why = item.error or _why(item)
            lines.append(f"  {item.state.value:<10} task {item.task_id}: {why} "
                         f"(re-run, or: apimart-async download {item.task_id} --out {out})")
    if report.spend is not None:
        spend = report.spend
        estimate = "" if spend.end is not None else " (estimated: the last balance read failed)"
        earlier = (f" ({spend.total:g} in all runs of this batch)"
                   if spend.spent_before else "")
        line = f"spent {spend.spent:g}{earlier} of the {spend.cap:g} cap{estimate}"
        if spend.over_cap and spend.spent_before > spend.cap + 1e-9:
            line += (f"; OVER THE CAP by {spend.total - spend.cap:g}: earlier runs of this "
                     "batch had already spent more than this cap")
        elif spend.over_cap:
            line += (f"; OVER THE CAP by {spend.total - spend.cap:g}: a first item of a "
                     "kind not priced yet cost more than the room left (or another client "
                     "spent on the key); --item-cost makes the cap hold from the first item")
        if spend.stopped_at_cap:
            line += (f"; {spend.left_pending} items left pending because of the cap: re-run "
                     "with a larger --max-spend to send them")
        lines.insert(0, line)
    if report.interrupted:
        unsent = sum(item.state is ItemState.PENDING for item in report.items)
        going = sum(item.state in (ItemState.SUBMITTED, ItemState.COMPLETED)
                    for item in report.items)
        lines.insert(0, f"interrupted: {unsent} items not sent, {going} tasks not finished or "
                        "not downloaded; re-run the same command to resume")
    if report.account_error is not None:
        # The headline: no item can get further until the account is fixed.
        problem = shown(account_problem(report.account_error) or str(report.account_error))
        unfinished = len(report.items) - report.completed
        lines.insert(0, f"{problem}; then re-run the same command to resume the {unfinished} "
                        "unfinished items (nothing already submitted is submitted again)")
    if report.ambiguous:
        lines.append(f"{report.ambiguous} ambiguous items may exist and be billed: look them "
                     "up first; to send them again (same Idempotency-Key), re-run with "
                     "--resubmit-ambiguous")
    for item in report.items:
        if not item.ok:
            task = f" (task {item.task_id})" if item.task_id else ""
            why = shown(item.reason) if item.reason else _why(item)
            lines.append(f"  {item.state.value:<10} {_label(item)}{task}: {why}")
    return lines


# Why an item without a recorded reason is where it is: a run stopped (Ctrl-C, --timeout)
# before its next step, which a re-run takes.
_UNFINISHED = {
    ItemState.PENDING: "not sent",
    ItemState.SUBMITTED: "task not finished",
    ItemState.COMPLETED: "download not finished",
}


def _why(item: ItemResult) -> str:
    what = _UNFINISHED.get(item.state)
    return f"{what}; re-run to resume" if what else ""
