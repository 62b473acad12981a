"""A fleet worker: one process of many sharing a batch in a PostgreSQL journal (#13).

Each worker registers (its id is its fencing token), then runs, until every item of
the batch is final (downloaded, failed or ambiguous) or the fleet is stopped:

- a ticker that renews its heartbeat, declares dead the workers whose lease ran out,
  adopts the submitted and completed items nobody follows, and watches for the end;
- `max_concurrency` submitters, each taking the key's next shared send slot, then
  claiming the next pending item (``pending -> submitting`` committed), then sending
  it in that slot;
- one follower per item it holds: it polls the task, downloads the video into this
  worker's own folder (``OUT/.fleet-wID/``) and only then moves it into ``OUT``, so a
  zombie's partial file can never become another worker's.

Every write is fenced (`PgJournal.write`): once the fleet has declared this worker
dead, its next write raises `WorkerFencedError` and the worker stops at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from .._core.balance import Balance
from .._core.errors import (
    APIMartError,
    BadRequestError,
    JournalUnavailableError,
    NotSubmittedError,
    TaskFailedError,
    ValidationError,
    WorkerFencedError,
    error_record,
)
from .._core.models import Task, TaskOutput, TaskStatus
from .._core.outputs import numbered_name, output_suffix, variant_stem
from .._core.spend import SpendBudget, Verdict
from .._engine.engine import Engine
from .._engine.streams import Watch
from .._engine.submit import StreamClosed
from .._io.download import part_path
from .journal import JournalRow, request_json
from .pg import Claimed, PgJournal
from .report import ItemState, WorkerOutcome
from .runner import (
    BatchReport,
    BatchSpend,
    ItemResult,
    _error_of,
    _Item,
    _refuse_changed_names,
    _request_from_body,
    append_recovery,
    price_class,
)

__all__ = ["WorkerOutcome", "run_fleet_batch", "run_worker"]

#: In `--out`: task ids created but not journaled (the lease lost, the database gone).
RECOVERY_NAME = ".apimart-recovered-task-ids"

log = logging.getLogger("apimart_async")
# A slot this worker reaches later than its time by more than this fraction of the
# rate's interval (a paused worker, a busy loop) is dropped for a fresh one: requests
# sent late would bunch with those sent on time, above the key's rate in some second.
_STALE_SLOT = 0.5
# What stops a worker at once: the fleet declared it dead, or its database is gone.
_STOPS = (WorkerFencedError, JournalUnavailableError)


class _Worker:
    def __init__(
        self, engine: Engine, journal: PgJournal, out_dir: Path, *, tick: float,
    ) -> None:
        self.engine = engine
        self.journal = journal
        self.out_dir = out_dir
        self.tick = tick
        self.halted = False
        self.interrupted = False
        self.maybe_pending = True
        self.sending = 0
        self.followers = 0
        self.following: set[str] = set()
        self.submitted = 0
        self.downloaded = 0
        self.adopted = 0
        self.declared_dead: list[int] = []
        self.fenced: WorkerFencedError | JournalUnavailableError | None = None
        self.account_error: APIMartError | None = None
        self.stopped: str | None = None
        self._tg: TaskGroup | None = None
        self._done = anyio.Event()
        self._push_back = 0.0
        self.tmp: Path = out_dir
        self.interval = 0.0
        self.folder = str(out_dir)
        # The batch's spend cap, kept in the journal (`PgJournal.with_budget`).
        self.capped = False
        self.stopped_at_cap = False
        self._verdict: Verdict | None = None
        self._needs_reading = False
        self._reading = anyio.Lock()
        self._last_read = -1e9

    # -- the key's shared rate -------------------------------------------------------------

    async def _slot(self) -> float:
        """Wait for the key's next shared slot; return when it was due (monotonic). A
        slot reached late (SIGSTOP, a long pause, a busy loop) is dropped for a fresh one."""
        fingerprint = self.engine.key_fingerprint
        while True:
            if self._push_back:
                push, self._push_back = self._push_back, 0.0
                await self._guard(self.journal.push_back(fingerprint, push))
            asked = time.monotonic()
            wait: float = await self._guard(self.journal.take_slot(fingerprint))
            # Measured from before asking: the server's clock read falls in between.
            due = asked + float(wait)
            if due > time.monotonic():
                await anyio.sleep(due - time.monotonic())
            if time.monotonic() - due <= _STALE_SLOT * self.interval:
                return due

    async def _pace(self) -> None:
        await self._slot()

    def _throttled(self, retry_after: float | None) -> None:
        # Applied by the next slot taken: every worker waits, not only this one.
        self._push_back = max(self._push_back, retry_after or 1.0)

    async def _guard(self, coro: Any) -> Any:
        """Await a journal operation; a refused write stops this worker at once."""
        try:
            return await coro
        except _STOPS as exc:
            self._fence(exc)
            raise

    def _fence(self, exc: WorkerFencedError | JournalUnavailableError) -> None:
        if self.fenced is None:
            self.fenced = exc
            log.error("%s", exc)
        self.halted = True
        if self._tg is not None:
            if self.sending:
                # POSTs on the wire may answer with task ids (paid): let them land, so
                # `_late` keeps them, then stop (the gate sends nothing new).
                self._tg.start_soon(self._cancel_when_sent)
            else:
                self._tg.cancel_scope.cancel()

    async def _cancel_when_sent(self) -> None:
        while self.sending:  # noqa: ASYNC110 - a count, polled briefly once, at the end
            await anyio.sleep(0.01)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _late(self, row: JournalRow, task_id: str, why: Exception) -> None:
        """A task created after this worker lost its lease: its journal write is refused,
        but the task id must not be lost. Recorded for the fleet (`record_late_task_id`:
        the item, ambiguous, is adopted as submitted), printed, and appended to the
        recovery file, as the SQLite runner does."""
        lost = ("lost its lease" if isinstance(why, WorkerFencedError)
                else "cannot reach its journal")
        print(f"apimart-async: worker {self.journal.worker} {lost}: task {task_id} "
              f"was created (and may be billed) for item {row.key} (idempotency key "
              f"{row.idempotency_key})", file=sys.stderr, flush=True)
        try:
            await self.journal.record_late_task_id(row.key, task_id)
        except Exception as exc:  # the database may be what cut this worker off
            log.error("could not record task %s in the journal: %s", task_id, exc)
        await append_recovery(self.out_dir / RECOVERY_NAME, {
            "task_id": task_id, "item_key": row.key,
            "idempotency_key": row.idempotency_key, "batch": self.journal.batch,
        })

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: anyio.Event | None) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._ticker)
            for _ in range(self.engine.max_concurrency):
                tg.start_soon(self._submitter)
            if stop is not None:
                tg.start_soon(self._stop_on, stop)
            await self._done.wait()
            tg.cancel_scope.cancel()
        self._tg = None

    async def _stop_on(self, stop: anyio.Event) -> None:
        await stop.wait()
        self.interrupted = True
        self.halted = True
        # Let what is on the wire land and be journaled; followers end with the run
        # (their items lose their owner on leaving: another worker adopts them).
        while self.sending:  # noqa: ASYNC110 - a count, polled briefly once, at the end
            await anyio.sleep(0.01)
        self._done.set()

    async def _ticker(self) -> None:
        journal = self.journal
        try:
            while True:
                await journal.heartbeat()
                dead = await journal.reap()
                if dead:
                    self.declared_dead.extend(dead)
                    for key in journal.lost_keys:
                        # Its reservation may have been billed: counted as spent, and
                        # no longer held as in flight for ever.
                        await self._settle(key, charged=True)
                    log.warning("worker %s: declared dead workers %s (lease %gs passed)",
                                journal.worker, dead, journal.lease)
                if not self.halted:
                    await journal.adopt_late()
                    for row in await journal.adopt():
                        self.adopted += 1
                        self._follow(row)
                stopped = await journal.stopped()
                if stopped is not None:
                    self.stopped = stopped[0]
                    self.halted = True
                pending, active = await journal.progress()
                if pending and not self.halted:
                    self.maybe_pending = True
                if ((pending == 0 or self.halted) and active == 0 and not self.sending
                        and not self.followers):
                    self._done.set()
                    return
                await anyio.sleep(self.tick)
        except _STOPS as exc:
            self._fence(exc)

    async def _submitter(self) -> None:
        try:
            while not self.halted:
                if not self.maybe_pending:
                    await anyio.sleep(self.tick / 2)
                    continue
                due = None
                if self.engine.limits.shared is not None:
                    due = await self._slot()
                if self.halted:
                    return
                self._verdict = None
                claimed = await self._guard(
                    self.journal.claim(self._reserve if self.capped else None))
                if claimed is None:
                    if self._verdict is Verdict.WAIT:
                        await self._await_room()
                    elif self._verdict is Verdict.REFUSED:
                        # The first pending item cannot fit under the cap: this worker
                        # stops claiming (every other one meets the same item).
                        self.stopped_at_cap = True
                        self.halted = True
                    else:
                        self.maybe_pending = False
                    continue
                self.sending += 1
                try:
                    await self._send(claimed, due)
                finally:
                    self.sending -= 1
        except _STOPS as exc:
            self._fence(exc)

    # -- the spend cap -----------------------------------------------------------------

    async def _reserve(self, conn: Any, row: JournalRow) -> bool:
        """Inside the claiming transaction: reserve the item's estimated cost in the
        batch's budget (its row locked), so no two workers take the same room."""
        cls = price_class(_request_from_body(json.loads(row.request)))

        def reserve(budget: SpendBudget) -> tuple[Verdict, bool]:
            return budget.reserve(cls, row.key), budget.needs_reading

        self._verdict, self._needs_reading = await self.journal.with_budget(reserve, conn)
        return self._verdict is Verdict.GRANTED

    async def _settle(self, key: str, *, charged: bool) -> None:
        if self.capped:
            await self.journal.with_budget(lambda b: b.settle(key, charged=charged))

    async def _await_room(self) -> None:
        """WAIT: room may appear once the balance is read (items sent since the last
        read have a price to learn) or once reservations settle."""
        if self._needs_reading and not self._reading.locked():
            async with self._reading:
                # At most twice a second per worker: items waiting for room do not
                # each read the balance.
                await anyio.sleep(max(0.0, self._last_read + 0.5 - time.monotonic()))
                mark = await self.journal.with_budget(lambda b: b.read_mark())
                balance = await self.engine.balance()
                self._last_read = time.monotonic()
                await self.journal.with_budget(lambda b: b.observe(balance.used, mark))
        else:
            await anyio.sleep(0.05)

    def _gate(self) -> None:
        if self.halted:
            raise StreamClosed

    async def _send(self, claimed: Claimed, due: float | None) -> None:
        row = claimed.row
        request = _request_from_body(json.loads(row.request))
        limits = self.engine.limits
        try:
            if due is not None:
                with limits.prepaid(due):
                    submission = await self.engine.submit(
                        request, key=row.idempotency_key, gate=self._gate)
            else:
                submission = await self.engine.submit(
                    request, key=row.idempotency_key, gate=self._gate)
        except StreamClosed:
            # Stopped before its bytes went out: never sent, back in line.
            await self._settle(row.key, charged=False)
            await self._guard(self.journal.write(row.key, ItemState.PENDING))
            return
        except APIMartError as exc:
            await self._settle(row.key, charged=exc.submission_ambiguous)
            await self._submit_failed(row, exc)
            return
        try:
            await self._settle(row.key, charged=True)
            await self._guard(self.journal.write(row.key, ItemState.SUBMITTED,
                                                 task_id=submission.task_id))
        except _STOPS as exc:
            with anyio.CancelScope(shield=True):
                await self._late(row, submission.task_id, exc)
            raise
        self.submitted += 1
        self._follow(attrs.evolve(row, state=ItemState.SUBMITTED, task_id=submission.task_id))

    async def _write_error(self, key: str, state: ItemState, error: APIMartError,
                           reason: str) -> None:
        await self._guard(self.journal.write(
            key, state, error=reason,
            error_record=json.dumps(error_record(error), sort_keys=True)))

    async def _submit_failed(self, row: JournalRow, error: APIMartError) -> None:
        if error.submission_ambiguous:
            await self._write_error(row.key, ItemState.AMBIGUOUS, error,
                                    f"may exist and be billed: {error}")
        elif await self._account_failure(error):
            await self._write_error(row.key, ItemState.PENDING, error,
                                    f"not submitted: {error}")
        elif isinstance(error, (BadRequestError, ValidationError)):
            await self._write_error(row.key, ItemState.FAILED, error, f"rejected: {error}")
        else:
            # Refused before anything was created (429s, no connection): back in line.
            await self._write_error(row.key, ItemState.PENDING, error,
                                    f"not submitted: {error}")

    async def _account_failure(self, error: APIMartError) -> bool:
        """A 401/402/403 (or an item stopped by one): recorded on the batch, so every
        worker of the fleet stops claiming."""
        cause = error.reason if isinstance(error, NotSubmittedError) else error
        if not cause.fatal:
            return False
        if self.account_error is None:
            self.account_error = cause
        self.halted = True
        await self._guard(self.journal.stop_fleet(
            str(cause), json.dumps(error_record(cause), sort_keys=True)))
        return True

    # -- following an item to its file -----------------------------------------------------

    def _follow(self, row: JournalRow) -> None:
        if row.key in self.following or self._tg is None:
            return
        self.following.add(row.key)
        self.followers += 1
        self._tg.start_soon(self._follower, row)

    async def _follower(self, row: JournalRow) -> None:
        try:
            await self._follow_one(row)
        except _STOPS as exc:
            self._fence(exc)
        finally:
            self.followers -= 1
            self.following.discard(row.key)

    async def _follow_one(self, row: JournalRow) -> None:
        assert row.task_id is not None
        task: Task | None = None
        if row.state is ItemState.SUBMITTED:
            async with Watch(self.engine, [row.task_id], timeout=None,
                             task_timeout=None) as updates:
                async for update in updates:
                    if not update.final:
                        continue
                    if update.error is not None:
                        await self._watch_failed(row, update.error)
                        return
                    task = update.task
                    break
            if task is None:
                return
            if task.status is not TaskStatus.COMPLETED:
                message = task.error.message if task.error else task.status.value
                await self._write_error(row.key, ItemState.FAILED, TaskFailedError(task),
                                        f"task {task.status.value}: {message}")
                return
            await self._guard(self.journal.write(row.key, ItemState.COMPLETED))
        try:
            if task is None:
                task = await self.engine.get_task(row.task_id)
            await self._download(row, task)
        except APIMartError as exc:
            await self._account_failure(exc)
            # Left completed, without an owner: a later worker (or run) tries again.
            await self._guard(self.journal.write(
                row.key, ItemState.COMPLETED, error=f"download failed: {exc}",
                error_record=json.dumps(error_record(exc), sort_keys=True)))
            await self._guard(self.journal.release(row.key))

    async def _watch_failed(self, row: JournalRow, error: APIMartError) -> None:
        if await self._account_failure(error):
            await self._write_error(row.key, ItemState.SUBMITTED, error,
                                    f"not followed: {error}")
            await self._guard(self.journal.release(row.key))
        elif error.fatal or isinstance(error, (TaskFailedError, BadRequestError)):
            await self._write_error(row.key, ItemState.FAILED, error, str(error))
        else:
            # The poll policy gave up (an outage): the task exists; hand it back.
            await self._write_error(row.key, ItemState.SUBMITTED, error,
                                    f"not followed: its polls kept failing: {error}")
            await self._guard(self.journal.release(row.key))

    async def _download(self, row: JournalRow, task: Task) -> None:
        """Every output of the task (its videos, then its images), each named like the
        SQLite runner names them (`numbered_name`): staged, then moved in."""
        stem = Path(row.path or row.key.replace(":", "-")).stem
        outputs = task.outputs or (TaskOutput(kind="video", url=""),)
        # Into this worker's own folder first: a zombie's partial file is its own.
        await anyio.Path(self.tmp).mkdir(parents=True, exist_ok=True)
        staged = []
        for index, output in enumerate(outputs):
            name = numbered_name(stem, index, output)
            result = await self.engine.download(task, self.tmp / name, overwrite=True,
                                                index=index)
            staged.append((name, result))
        # Still this worker's item? Checked right before the files appear.
        await self._guard(self.journal.write(row.key, ItemState.COMPLETED))
        placed = []
        base = stem
        for index, (_, result) in enumerate(staged):
            output = outputs[index]
            final = await anyio.to_thread.run_sync(
                _place, result.path, self.out_dir, base, index, output)
            if index == 0:
                # An item's files share one stem: the first output's, "~N" and all.
                base = final.name[: -len(output_suffix(output))]
            placed.append({"index": index, "path": final.name, "size": result.size,
                           "sha256": result.sha256})
        first = placed[0]
        await self._guard(self.journal.write(
            row.key, ItemState.DOWNLOADED, path=first["path"], size=first["size"],
            sha256=first["sha256"], error=None, error_record=None, folder=self.folder,
            outputs=json.dumps(placed[1:]) if len(placed) > 1 else None))
        self.downloaded += 1


def _place(staged: Path, out_dir: Path, base: str, index: int, output: TaskOutput) -> Path:
    """Move a staged output into `out_dir` under the first name the SQLite runner's rules
    give it (`variant_stem`: ``STEM~N`` past a file in the way) that is free, taken
    atomically: a hard link fails if the name exists, so two workers (or a zombie) never
    both take it and no file there is ever overwritten."""
    n = 1
    while True:
        final = out_dir / numbered_name(variant_stem(base, n), index, output)
        n += 1
        if os.path.lexists(part_path(final)):
            continue  # a download in progress (a single run's) holds that name
        try:
            os.link(staged, final)
        except FileExistsError:
            continue
        except OSError:
            # No hard links here (some network or FUSE file systems): claim the name
            # with an exclusive create, then move the file over that placeholder.
            try:
                os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                continue
            os.replace(staged, final)
            return final
        os.unlink(staged)
        return final


async def _recovered(path: Path, batch: str) -> list[tuple[str, str]]:
    """(item key, task id) pairs of `batch` in the recovery file `path` (none if it is
    missing); lines that are not such records are skipped (the file is untrusted)."""
    try:
        text = await anyio.Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    found: list[tuple[str, str]] = []
    for line in text.splitlines()[-100_000:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("batch") != batch:
            continue
        key, task_id = record.get("item_key"), record.get("task_id")
        if (isinstance(key, str) and isinstance(task_id, str)
                and 0 < len(key) <= 512 and 0 < len(task_id) <= 256):
            found.append((key, task_id))
    return found


async def run_worker(
    engine: Engine,
    journal: PgJournal,
    *,
    out_dir: Path,
    rps: float | None = None,
    resubmit_ambiguous: bool = False,
    stop: anyio.Event | None = None,
    max_spend: float | None = None,
    item_cost: float | None = None,
) -> WorkerOutcome:
    """Join `journal`'s batch as a worker until the batch is done (or `stop` is set, or
    the fleet is stopped by an account failure). `rps` is the key's rate, shared by
    every worker of every batch on this server using this key. Raises
    `WorkerFencedError` when the fleet declared this worker dead."""
    await anyio.Path(out_dir).mkdir(parents=True, exist_ok=True)
    worker_id = await journal.register()
    if resubmit_ambiguous:
        await journal.resubmit_ambiguous()
    # A run started after fixing the account resumes the fleet.
    await journal.clear_stop()
    await journal.retry_downloads()
    # Task ids a worker received while the database was out of reach are only in the
    # folder's recovery file: hand them to the fleet before anything is resubmitted.
    for key, task_id in await _recovered(out_dir / RECOVERY_NAME, journal.batch):
        await journal.record_late_task_id(key, task_id)
    await journal.adopt_late()
    # Heartbeats well within the lease; at least once a second, so the end of the batch
    # is noticed soon.
    state = _Worker(engine, journal, out_dir, tick=max(0.02, min(1.0, journal.lease / 5)))
    state.tmp = out_dir / f".fleet-w{worker_id}"
    state.folder = str(await anyio.Path(out_dir).resolve())
    # A re-run notices a deleted (or changed) video, as the SQLite runner does: those
    # of this folder are downloaded again (the task is paid; nothing is sent).
    recorded = await journal.out_dir()
    if recorded is not None and recorded != state.folder:
        log.warning("worker %s: --out %s is not the batch's folder (%s): this worker's "
                    "videos go to %s; each item's folder is in the journal (journal "
                    "status --json)", worker_id, state.folder, recorded, state.folder)
    gone = await journal.refetch_missing(state.folder, out_dir)
    if gone:
        log.warning("worker %s: %d downloaded item(s) missing or changed in %s: "
                    "downloading again", worker_id, len(gone), out_dir)
    if max_spend is not None:
        await journal.start_budget(max_spend, (await engine.balance()).used, item_cost)
    # A batch started with a cap keeps it for every worker, flag or not.
    state.capped = await journal.budget() is not None
    limits = engine.limits
    if rps is not None:
        state.interval = 1.0 / rps
        await journal.set_rate(engine.key_fingerprint, rps)
        limits.shared = state._pace
        limits.on_shared_throttle = state._throttled
        limits.shared_tolerance = _STALE_SLOT * state.interval
    try:
        await state.run(stop)
    finally:
        limits.shared = None
        limits.on_shared_throttle = None
        if state.fenced is None:
            with anyio.CancelScope(shield=True):
                try:
                    await journal.leave("interrupted" if state.interrupted else "done")
                except Exception as exc:  # the outcome matters more than this
                    log.warning("worker %s: could not leave cleanly: %s", worker_id, exc)
    with contextlib.suppress(OSError):
        await anyio.Path(state.tmp).rmdir()  # only once empty: a partial file stays
    if state.fenced is not None:
        raise state.fenced
    counts = await journal.counts()
    stopped = await journal.stopped()
    return WorkerOutcome(
        worker=worker_id, submitted=state.submitted, downloaded=state.downloaded,
        adopted=state.adopted, declared_dead=tuple(state.declared_dead), counts=counts,
        interrupted=state.interrupted, stopped=None if stopped is None else stopped[0],
        account_error=state.account_error, stopped_at_cap=state.stopped_at_cap,
    )


def _result(item: _Item, row: JournalRow, folders: dict[str, str], out_dir: Path) -> ItemResult:
    return ItemResult(
        index=item.index, key=item.key, name=item.name, request=item.request,
        state=row.state, task_id=row.task_id,
        progress=100 if row.state in (ItemState.COMPLETED, ItemState.DOWNLOADED) else 0,
        path=(Path(folders.get(item.key, out_dir)) / row.path
              if row.path and row.state is ItemState.DOWNLOADED else None),
        size=row.size, sha256=row.sha256, error=_error_of(row), reason=row.error,
    )


async def _mirror(
    journal: PgJournal, items: list[_Item], out_dir: Path,
    on_change: Callable[[ItemResult], None], seen: dict[str, ItemState],
) -> None:
    """Tell `on_change` how this input's items move, whichever worker moves them: the
    journal is read twice a second (one query), the way the fleet sees it."""
    while True:
        try:
            rows = await journal.load()
        except JournalUnavailableError:
            return  # the worker says so (one error, not two)
        changed = [(item, rows[item.key]) for item in items
                   if item.key in rows and seen.get(item.key) is not rows[item.key].state]
        # A downloaded item's file is in the folder of the worker that fetched it.
        try:
            folders = (await journal.folders()
                       if any(row.state is ItemState.DOWNLOADED for _, row in changed)
                       else {})
        except JournalUnavailableError:
            return
        for item, row in changed:
            seen[item.key] = row.state
            on_change(_result(item, row, folders, out_dir))
        await anyio.sleep(0.5)


async def _spend_report(
    engine: Engine, journal: PgJournal, start: Balance, spent_before: float,
    items: list[_Item],
) -> BatchSpend:
    """What the batch spent, the fleet's way: the budget row counts every worker's
    spending; `spent` is what it grew by during this run (other workers' too)."""
    end: Balance | None
    try:
        end = await engine.balance()
        used = end.used

        def observe(budget: SpendBudget) -> float:
            budget.observe(used)
            return budget.spent

        total = await journal.with_budget(observe)
    except APIMartError as exc:
        log.warning("could not read the balance at the end of the run (%s): the spend "
                    "reported is an estimate", exc)
        end = None
        recorded = await journal.budget()
        total = recorded.committed if recorded is not None else spent_before
    rows = await journal.load()
    left = sum(1 for item in items if rows[item.key].state is ItemState.PENDING)
    recorded = await journal.budget()
    assert recorded is not None
    return BatchSpend(cap=recorded.cap, spent=max(0.0, total - spent_before),
                      spent_before=spent_before, start=start, end=end, left_pending=left)


async def run_fleet_batch(
    engine: Engine,
    items: list[_Item],
    *,
    out_dir: Path,
    url: str,
    batch: str,
    lease: float,
    resubmit_ambiguous: bool,
    stop: anyio.Event | None,
    retry_failed: bool = False,
    on_change: Callable[[ItemResult], None] | None = None,
    max_spend: float | None = None,
    item_cost: float | None = None,
) -> BatchReport:
    """`run_batch` on a PostgreSQL journal: enqueue the items (idempotently, by content
    identity), work on the batch with whatever other workers share it, then report on
    these items as the journal has them."""
    before = attrs.evolve(engine.stats)
    async with PgJournal(url, batch, lease=lease) as journal:
        rows = await journal.load()
        _refuse_changed_names(items, rows, journal.label)
        fresh = [
            (item.index, JournalRow(
                key=item.key, name=item.name, request=request_json(item.request.to_body()),
                idempotency_key=uuid.uuid4().hex, state=ItemState.PENDING,
                path=item.filename,
            ))
            for item in items if item.key not in rows
        ]
        await journal.add(fresh)
        if retry_failed:
            # New tasks, billed again: each under a new Idempotency-Key (see run_batch).
            for item in items:
                row = rows.get(item.key)
                if row is not None and row.state is ItemState.FAILED:
                    await journal.update(item.key, ItemState.PENDING,
                                         idempotency_key=uuid.uuid4().hex, task_id=None,
                                         error=None, error_record=None)
        if await journal.out_dir() is None:
            await journal.set_out_dir(str(await anyio.Path(out_dir).resolve()))
        seen: dict[str, ItemState] = {}
        start: Balance | None = None
        spent_before = 0.0
        if max_spend is not None:
            start = await engine.balance()
            recorded = await journal.budget()
            spent_before = recorded.spent if recorded is not None else 0.0
        async with anyio.create_task_group() as tg:
            if on_change is not None:
                tg.start_soon(_mirror, journal, items, out_dir, on_change, seen)
            outcome = await run_worker(
                engine, journal, out_dir=out_dir, rps=engine.limits.rate.given,
                resubmit_ambiguous=resubmit_ambiguous, stop=stop, max_spend=max_spend,
                item_cost=item_cost,
            )
            tg.cancel_scope.cancel()
        spend = None
        if max_spend is not None and start is not None:
            spend = await _spend_report(engine, journal, start, spent_before, items)
        rows = await journal.load()
        folders = await journal.folders()
        label = journal.label
    results = [_result(item, rows[item.key], folders, out_dir) for item in items]
    for result in results:
        if on_change is not None and seen.get(result.key) is not result.state:
            on_change(result)
    stats = engine.stats
    return BatchReport(
        items=tuple(results), journal=label, interrupted=outcome.interrupted,
        bytes_downloaded=stats.bytes_downloaded - before.bytes_downloaded,
        retries=stats.retries - before.retries,
        rate_limited=stats.rate_limited - before.rate_limited,
        account_error=outcome.account_error or (
            APIMartError(outcome.stopped) if outcome.stopped else None),
        spend=spend,
    )
