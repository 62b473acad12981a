"""`run_batch`: a whole batch, durable across crashes, from requests to files on disk.

Every step is journaled before and after it happens. A re-run with the same journal
never submits again an item that has a task id: it resumes polling and downloading.
Items are known by content (see `_journal.item_key`), so editing the input file
never rebills what is unchanged. An item is journaled "submitting" only once it holds
its request slot and rate token, right before its bytes go out; one a crash left
there is ambiguous (it may exist, and be billed): it is reported as such and
resubmitted only on request, with the same Idempotency-Key.

Files: a named item goes to NAME.mp4, an unnamed one to SLUG-DIGEST.mp4 (a readable
prefix of the prompt, and a digest of the whole request; the second of identical
unnamed requests to SLUG-DIGEST~2.mp4). Every output of the task is fetched: the first
to that name, output N (from 1: videos, then images) to NAME-N.EXT (EXT from its link:
NAME-2.mp4, NAME-3.png; see `_core.outputs`). A path is claimed in the journal before
its download starts; a path that exists on disk, or that the journal has given to
another item or output, is never written: the output takes its name on the stem
NAME~2, NAME~3, ... (NAME~2.mp4 for a first output whose NAME.mp4 is taken, NAME~2-2.mp4
for a second output whose NAME-2.mp4 is). So "-N" only ever numbers a task's outputs
and "~N" only ever tells apart items (or files in the way): `boat~2.mp4` is never read
as boat's second output. Later outputs follow the stem their item's first output got.
Paths already in a journal (earlier versions used -N for both) keep their names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from .._core.balance import Balance
from .._core.errors import (
    APIConnectionError,
    APIMartError,
    BadRequestError,
    DecodeError,
    InsufficientBalanceError,
    JournalWriteError,
    NotSubmittedError,
    RateLimitError,
    ServerError,
    TaskFailedError,
    ValidationError,
    error_from_record,
    error_record,
)
from .._core.events import BatchEvent, EventKind
from .._core.groups import ungrouped
from .._core.models import Submission, Task, TaskOutput, TaskStatus, VideoRequest
from .._core.outputs import numbered_name, variant_stem
from .._core.spend import SpendBudget, Verdict
from .._engine.engine import Engine
from .._engine.streams import BatchHooks, BatchStream, Watch
from .._engine.submit import UNENCODABLE, StreamClosed
from .._io.download import part_path
from .journal import Journal, JournalRow, item_key, request_digest, request_json
from .pg import is_pg_url
from .report import BatchItem, BatchReport, BatchSpend, ItemResult, ItemState
from .store import JournalStore

__all__ = [
    "BALANCE_READ_INTERVAL", "JOURNAL_NAME", "BatchItem", "BatchReport", "BatchSpend",
    "ItemResult", "ItemState", "run_batch",
]

log = logging.getLogger("apimart_async")
JOURNAL_NAME = ".apimart-journal.sqlite3"
# Errors that end a watch only once the poll policy gives up on them: they say nothing
# about the task, which a re-run polls again.
_TRANSIENT = (ServerError, RateLimitError, APIConnectionError, DecodeError)
#: A spend-capped run reads the balance at most once per this many API seconds while
#: items wait for room (plus once before the first submission and once at the end).
BALANCE_READ_INTERVAL = 1.0


def _probe_writable(folder: Path) -> None:
    """Create `folder` if needed, then write, flush and remove a probe file in it."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".apimart-probe-{os.getpid()}"
    try:
        with probe.open("wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        probe.unlink(missing_ok=True)


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


async def _file_size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        info = await anyio.Path(path).stat()
    except OSError:
        return None
    return info.st_size


def _slug(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)[:40].strip("-") or "video"


def _file_stem(name: str | None, body: str, occurrence: int) -> str:
    """NAME, or a readable slug plus a digest of the whole request: two different
    requests never share a stem however alike their prompts."""
    if name:
        return name
    prompt = json.loads(body).get("prompt", "")
    stem = f"{_slug(str(prompt))}-{request_digest(body)[:10]}"
    # "~N", never "-N": "-N" numbers a task's outputs (see the module docstring).
    return stem if occurrence == 1 else f"{stem}~{occurrence}"


class _Item:
    __slots__ = ("filename", "idem", "index", "key", "more", "name", "recheck", "request",
                 "result")

    def __init__(
        self, index: int, item: VideoRequest | BatchItem, occurrences: dict[str, int]
    ) -> None:
        if isinstance(item, VideoRequest):
            item = BatchItem(request=item)
        if not isinstance(item, BatchItem) or not isinstance(item.request, VideoRequest):
            raise ValidationError(
                f"requests[{index}]", f"must be a VideoRequest or BatchItem, got {item!r}"
            )
        self.index = index
        self.request = item.request
        self.name = item.name
        try:
            body = request_json(item.request.to_body())
        except UNENCODABLE as exc:
            # A request changed around its read-only `extra` (the journal's digest is
            # its first encoding): refused like a submission that cannot be encoded.
            raise ValidationError(f"requests[{index}].extra", f"cannot be encoded as JSON "
                                  f"({exc}); nothing was sent") from None
        occurrence = 1
        if not item.name:
            occurrence = occurrences[body] = occurrences.get(body, 0) + 1
        self.key = item_key(item.name, body, occurrence)
        self.filename = f"{_file_stem(item.name, body, occurrence)}.mp4"
        self.idem = ""
        # Outputs after the first, by index: (path, size, sha256); size None = claimed.
        self.more: dict[int, tuple[Path, int | None, str | None]] = {}
        # Downloaded by a version that fetched only the first output: look again.
        self.recheck = False
        self.result = ItemResult(
            index=index, key=self.key, name=item.name, request=item.request,
            state=ItemState.PENDING,
        )

    @classmethod
    def earlier(cls, index: int, row: JournalRow) -> _Item:
        """An item of an earlier run, known only from its journal row."""
        self = cls.__new__(cls)
        self.index, self.key, self.name, self.idem = index, row.key, row.name, row.idempotency_key
        self.request = _request_from_body(json.loads(row.request))
        occurrence = int(row.key.rsplit(":", 1)[1]) if row.key.startswith("req:") else 1
        self.filename = f"{_file_stem(row.name, row.request, occurrence)}.mp4"
        self.more, self.recheck = {}, False
        self.result = ItemResult(
            index=index, key=row.key, name=row.name, request=self.request, state=row.state,
            task_id=row.task_id, error=_error_of(row), reason=row.error,
        )
        return self

    def set(self, **changes: object) -> ItemResult:
        self.result = attrs.evolve(self.result, **changes)  # type: ignore[arg-type]
        if "files" not in changes:
            # Outputs whole on disk, in order: the first (the row's own), then the others.
            first = self.result.path if self.result.sha256 is not None else None
            files = [first] if first is not None else []
            files += [path for _, (path, size, _) in sorted(self.more.items())
                      if size is not None]
            self.result = attrs.evolve(self.result, files=tuple(files))
        return self.result


OnChange = Callable[[ItemResult], None]


def _request_from_body(body: dict[str, Any]) -> VideoRequest:
    """The request an earlier run journaled (its wire body), for the report. A body
    today's checks refuse still names its prompt: its task was paid for and is fetched."""
    rest = dict(body)
    fields = {name: rest.pop(name) for name in
              ("model", "duration", "aspect_ratio", "image_urls") if name in rest}
    prompt = rest.pop("prompt", None)
    try:
        return VideoRequest(prompt, **fields, extra=rest or None)
    except ValidationError:
        log.warning("journal: an earlier item's request no longer validates: %r", body)
        return VideoRequest(str(prompt or "(unknown prompt)").strip() or "(unknown prompt)")


def price_class(request: VideoRequest) -> str:
    """What decides an item's price, as a key: its request without the prompt (the
    model, duration, resolution...), image URLs counted, not named."""
    body = request.to_body()
    body.pop("prompt", None)
    if "image_urls" in body:
        body["image_urls"] = len(body["image_urls"])
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


class _Keep:
    """`_Run._move`'s default: leave the item's error and reason as they are."""


_KEEP = _Keep()


async def append_recovery(path: Path, record: dict[str, Any]) -> bool:
    """Append `record` (a created task the journal could not take) with the time as one
    JSON line to the recovery file `path`, synced to disk; False if it cannot be written
    (logged: the task id was printed to stderr already)."""
    line = json.dumps({**record, "time": time.time()}, sort_keys=True) + "\n"

    def append() -> None:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        await anyio.to_thread.run_sync(append)
    except OSError as exc:
        log.error("cannot write the recovery file %s: %s", path, exc)
        return False
    return True


def _error_of(row: JournalRow) -> APIMartError | None:
    if row.error_record:
        try:
            return error_from_record(json.loads(row.error_record))
        except ValueError:
            pass
    # Journals before version 3 kept only the text: an error of no particular type.
    return APIMartError(row.error) if row.error else None


def _refuse_changed_names(items: list[_Item], rows: dict[str, JournalRow], journal: str) -> None:
    """A named item whose request changed is refused, before anything is sent: its
    name is its file, and that file holds the video paid for under the old request."""
    for item in items:
        row = rows.get(item.key)
        if row is not None and row.request != request_json(item.request.to_body()):
            raise ValidationError(
                f"requests[{item.index}]",
                f"item {item.name or item.key!r} differs from the one the journal {journal} "
                "recorded (its video is kept); give the changed request a new name",
            )


class _Run:
    def __init__(
        self, engine: Engine, items: list[_Item], out_dir: Path, journal: JournalStore,
        on_change: OnChange | None,
    ) -> None:
        self.engine = engine
        self.items = items
        # Paid tasks of earlier runs whose lines are gone from the input.
        self.earlier: list[_Item] = []
        self.out_dir = out_dir
        self.journal = journal
        self.on_change = on_change
        self._tg: TaskGroup | None = None
        self.account_error: APIMartError | None = None
        # Paths the journal has given to an item (this run's or an earlier one's).
        self._claimed: set[str] = set()
        self._claiming = anyio.Lock()
        self._stream: BatchStream | None = None
        self.interrupted = False
        # The first journal write that failed: from then on nothing is sent and
        # nothing more is written there; task ids it could not record go to `recovery`.
        self.journal_error: OSError | sqlite3.Error | None = None
        self.lost: list[str] = []
        self.recovery: Path | None = (
            journal.sidecar(".recovered-task-ids") or out_dir / ".apimart-recovered-task-ids")
        self.budget: SpendBudget | None = None
        self.left_by_cap = 0
        self._budget_changed = anyio.Event()
        self._budget_seen = 0  # the budget's `version` the waiters were last woken for
        self._reading = anyio.Lock()
        self._last_read = -math.inf

    async def _move(
        self, item: _Item, state: ItemState, *, error: APIMartError | _Keep | None = _KEEP,
        reason: str | _Keep | None = _KEEP, **fields: object,
    ) -> None:
        """Journal first, then tell the caller. `error` and `reason` are set together:
        giving either replaces both (a reason without an error clears the error)."""
        # A path is journaled as a file name in the output folder (see `journal`).
        columns = {k: (v.name if isinstance(v, Path) else v) for k, v in fields.items()
                   if k in ("task_id", "path", "size", "sha256", "outputs")}
        if not isinstance(error, _Keep) or not isinstance(reason, _Keep):
            error = None if isinstance(error, _Keep) else error
            reason = None if isinstance(reason, _Keep) else reason
            columns["error"] = reason
            columns["error_record"] = (
                None if error is None else json.dumps(error_record(error), sort_keys=True)
            )
            fields.update(error=error, reason=reason)
        if self.journal_error is None:
            try:
                await self.journal.update(item.key, state, **columns)
            except (OSError, sqlite3.Error) as exc:
                self._journal_failed(exc)
        if self.journal_error is not None and state is ItemState.SUBMITTED \
                and "task_id" in columns:
            await self._recover(item, str(columns["task_id"]))
        fields.pop("outputs", None)
        self._notify(item.set(state=state, **fields))

    def _journal_failed(self, exc: OSError | sqlite3.Error) -> None:
        """The first failed journal write: stop sending at once (the gate closes before
        any other item goes out), then end the run; `run_batch` raises the error."""
        self.journal_error = exc
        log.error("journal %s: a write failed (%s): stopping", self.journal.label, exc)
        if self._stream is not None:
            self._stream.close_gate()  # see _submit's before()
        if self._tg is not None:
            self._tg.start_soon(self._halt)

    async def _halt(self) -> None:
        self.interrupted = True
        if self._stream is not None:
            # Submissions already on the wire land; each task id goes to `_recover`.
            await self._stream.stop_sending()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _recover(self, item: _Item, task_id: str) -> None:
        """A task was created but the journal cannot record it: print its id now and
        append it to the recovery file, so nothing paid is lost."""
        self.lost.append(task_id)
        print(f"apimart-async: journal write failed: task {task_id} was created (and may "
              f"be billed) but is not journaled: item {item.key}, idempotency key "
              f"{item.idem}", file=sys.stderr, flush=True)
        if self.recovery is None:
            return
        if not await append_recovery(self.recovery, {
            "task_id": task_id, "item_key": item.key, "idempotency_key": item.idem,
        }):
            self.recovery = None

    def _notify(self, result: ItemResult) -> None:
        if self.on_change is not None and result.index < len(self.items):
            self.on_change(result)

    # -- reconciling with what the journal remembers --------------------------------------

    async def _check_out_dir(self) -> None:
        """A journal's file names are in one output folder: refuse another one. A journal
        inside its folder moves with it, so only one kept elsewhere can be mismatched."""
        out = await anyio.to_thread.run_sync(self.out_dir.resolve)
        recorded = await self.journal.out_dir()
        folder = self.journal.folder
        beside = None if folder is None else await anyio.to_thread.run_sync(folder.resolve)
        if recorded is not None and recorded != str(out) and beside != out:
            raise ValidationError(
                "out_dir", f"{self.out_dir} is not the output folder of journal "
                f"{self.journal.label} ({recorded}): use --out {recorded}, or another journal",
            )
        if recorded != str(out):
            await self.journal.set_out_dir(str(out))

    async def _share_no_paths(self, rows: dict[str, JournalRow]) -> None:
        """Two rows naming one file (an older version's race): the file belongs to the
        row whose digest it has, if any; the others forget it and download again to a
        new name. The file itself is never touched."""
        by_path: dict[str, list[JournalRow]] = {}
        for row in rows.values():
            if row.path:
                by_path.setdefault(row.path.casefold(), []).append(row)
        for group in by_path.values():
            if len(group) < 2:
                continue
            digest = await anyio.to_thread.run_sync(_sha256, self.out_dir / str(group[0].path))
            for row in group:
                if row.sha256 is not None and row.sha256 == digest:
                    digest = None  # the first match owns it; any other is a copy
                    continue
                state = ItemState.COMPLETED if row.state is ItemState.DOWNLOADED else row.state
                log.warning("journal: items %s share %s; %s takes a new file",
                            ", ".join(r.key for r in group), row.path, row.key)
                await self.journal.release_path(row.key, state)
                rows[row.key] = attrs.evolve(row, state=state, path=None, size=None,
                                             sha256=None)
        await self.journal.enforce_unique_paths()

    async def reconcile(self, resubmit_ambiguous: bool, retry_failed: bool = False) -> None:
        await self._check_out_dir()
        rows = await self.journal.load()
        _refuse_changed_names(self.items, rows, self.journal.label)
        await self._share_no_paths(rows)
        more = await self.journal.load_files()
        # Case-folded: two names differing only in case are one file on macOS and Windows.
        self._claimed = {row.path.casefold() for row in rows.values() if row.path}
        self._claimed |= {f.path.casefold() for files in more.values() for f in files.values()}
        keys = {item.key for item in self.items}
        for old in rows.values():  # in input order (`Journal.load`)
            if (old.key not in keys and old.task_id
                    and old.state in (ItemState.SUBMITTED, ItemState.COMPLETED)):
                # Paid for, then its line was edited or removed: still fetch its video.
                earlier = _Item.earlier(len(self.items) + len(self.earlier), old)
                earlier.more = {i: (self.out_dir / f.path, f.size, f.sha256)
                                for i, f in more.get(old.key, {}).items()}
                if old.path:
                    earlier.set(path=self.out_dir / old.path, size=old.size,
                                sha256=old.sha256)
                self.earlier.append(earlier)
        fresh: list[tuple[int, JournalRow]] = []
        for item in self.items:
            body = request_json(item.request.to_body())
            row = rows.get(item.key)
            if row is None:
                item.idem = uuid.uuid4().hex
                fresh.append((item.index, JournalRow(
                    key=item.key, name=item.name, request=body,
                    idempotency_key=item.idem, state=ItemState.PENDING,
                )))
                continue
            item.idem = row.idempotency_key
            state = row.state
            path = self.out_dir / row.path if row.path else None
            item.more = {i: (self.out_dir / f.path, f.size, f.sha256)
                         for i, f in more.get(item.key, {}).items()}
            if state is ItemState.DOWNLOADED:
                size = await _file_size(path)
                if size is None:
                    state = ItemState.COMPLETED  # the file went missing: fetch it again
                elif size != row.size:
                    # Changed since (edited by its owner?): never replaced; the video is
                    # fetched again to a new name.
                    log.warning("%s changed since it was downloaded: kept; task %s is "
                                "downloaded again to a new file", path, row.task_id)
                    state, path = ItemState.COMPLETED, None
                    await self.journal.release_path(item.key, state)
                if not await self._more_intact(item):
                    state = ItemState.COMPLETED
                # A version before 5 fetched only the first output: look at the task again.
                item.recheck = state is ItemState.DOWNLOADED and row.outputs is None
            elif state is ItemState.SUBMITTING:
                state = ItemState.AMBIGUOUS  # a crash left it on the wire
            elif state is ItemState.FAILED and retry_failed:
                # A new task, billed again: under a new Idempotency-Key, or the server
                # would answer with the failed task once more.
                log.info("item %s: %s; submitting it again (retry_failed)",
                         item.name or item.index, f"task {row.task_id} failed"
                         if row.task_id else "its request was refused")
                item.idem = uuid.uuid4().hex
                await self.journal.update(item.key, ItemState.PENDING,
                                          idempotency_key=item.idem, task_id=None,
                                          error=None, error_record=None)
                item.set(state=ItemState.PENDING)
                continue
            if state is ItemState.AMBIGUOUS and resubmit_ambiguous:
                state = ItemState.PENDING
            if state is not row.state:
                await self.journal.update(item.key, state)
            item.set(
                state=state, task_id=row.task_id, error=_error_of(row), reason=row.error,
                path=path, size=row.size if path else None,
                sha256=row.sha256 if path else None,
            )
            if state is ItemState.AMBIGUOUS:
                item.set(reason=row.error or "a previous run stopped while submitting it: it "
                         "may exist and be billed; to send it again, re-run with "
                         "--resubmit-ambiguous (resubmit_ambiguous=True)")
        await self.journal.add(fresh)

    async def _more_intact(self, item: _Item) -> bool:
        """Whether the item's outputs after the first are all on disk as journaled; one
        missing is fetched again to its name, one changed (by its owner?) is kept and
        fetched again to a new name."""
        intact = True
        for index, (path, size, _) in list(item.more.items()):
            now = await _file_size(path)
            if size is not None and now == size:
                continue
            intact = False
            if now is not None and size is not None:
                log.warning("%s changed since it was downloaded: kept; output %d of task %s "
                            "is downloaded again to a new file", path, index + 1,
                            item.result.task_id)
                await self.journal.release_file(item.key, index)
                del item.more[index]
            else:
                item.more[index] = (path, None, None)
        return intact

    # -- running --------------------------------------------------------------------------

    async def execute(self, stop: anyio.Event | None) -> None:
        if stop is None:
            await self._work()
            return
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._stop_on, stop, outer)
            await self._work()
            outer.cancel_scope.cancel()  # all done: stop listening

    async def _stop_on(self, stop: anyio.Event, outer: TaskGroup) -> None:
        """On `stop`: send nothing more, let what is on the wire land and be journaled,
        then end polling and downloads (a re-run resumes them)."""
        await stop.wait()
        self.interrupted = True
        if self._stream is not None:
            await self._stream.stop_sending()
        for item in self.items:
            if item.result.state is ItemState.SUBMITTING:
                # Stopped between an ambiguous attempt and its retry (a policy that
                # retries those): it may exist.
                await self._move(item, ItemState.AMBIGUOUS, reason="may exist and be billed: "
                                 "interrupted between an unanswered attempt and its retry")
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        outer.cancel_scope.cancel()

    async def _work(self) -> None:
        by_state: dict[ItemState, list[_Item]] = {}
        for item in [*self.items, *self.earlier]:
            by_state.setdefault(item.result.state, []).append(item)
            self._notify(item.result)
        if self.interrupted or self.journal_error is not None:
            return
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for item in by_state.get(ItemState.COMPLETED, []):
                tg.start_soon(self._download, item, None)
            for item in by_state.get(ItemState.DOWNLOADED, []):
                if item.recheck:
                    tg.start_soon(self._recheck, item)
            if ItemState.SUBMITTED in by_state:
                tg.start_soon(self._watch, by_state[ItemState.SUBMITTED])
            if ItemState.PENDING in by_state:
                tg.start_soon(self._submit, by_state[ItemState.PENDING])
        self._tg = None

    async def _watch(self, items: list[_Item]) -> None:
        by_id = {item.result.task_id: item for item in items if item.result.task_id}
        async with Watch(self.engine, list(by_id), timeout=None, task_timeout=None) as updates:
            async for update in updates:
                item = by_id[update.task_id]
                if not update.final:
                    self._notify(item.set(progress=update.progress))
                elif update.error is not None:
                    await self._watch_failed(item, update.error)
                elif update.task is not None:
                    await self._ended(item, update.task)

    def explain_unsent(self) -> None:
        """Give every item left pending without a reason one: the summary and the report
        say why each unsent item was not sent (an interrupt, the account, the journal)."""
        if self.interrupted:
            why = "not sent: the run was interrupted; re-run to send it"
        elif self.account_error is not None:
            why = f"not sent: the account stopped the batch: {self.account_error}"
        elif self.journal_error is not None:
            why = "not sent: the journal could not be written"
        else:
            why = "not sent; re-run to send it"
        for item in self.items:
            if item.result.state is ItemState.PENDING and not item.result.reason:
                item.set(reason=why)

    # -- the spend cap -------------------------------------------------------------------

    async def read_balance(self) -> None:
        """Read the balance and tell the budget (at most once per
        `BALANCE_READ_INTERVAL` API seconds while items wait)."""
        assert self.budget is not None
        async with self._reading:
            if not self.budget.needs_reading:
                return  # another waiter read it meanwhile
            clock = self.engine.clock
            wait = self._last_read + BALANCE_READ_INTERVAL - clock.now()
            if wait > 0:
                await clock.sleep(wait)
            mark = self.budget.read_mark()
            balance = await self.engine.balance()
            self._last_read = clock.now()
            self.budget.observe(balance.used, mark)
            self._wake()
            await self._record_spent()

    async def _record_spent(self) -> None:
        """Keep the batch's spending in the journal, so a re-run's cap counts it."""
        if self.budget is None or self.journal_error is not None:
            return
        try:
            # Measured up to this read; the open mark lets a later run measure the rest
            # should this one never get to its last read.
            await self.journal.set_spent(self.budget.spent)
            await self.journal.set_meta(_OPEN, repr(self.budget.last_used))
        except (OSError, sqlite3.Error) as exc:
            self._journal_failed(exc)

    def _wake(self) -> None:
        """Wake every item waiting for room if the budget changed since they were last
        woken. Called after every budget call (`reserve` included: a refused probe
        reopens the gate for the items queued behind it)."""
        if self.budget is None or self.budget.version == self._budget_seen:
            return
        self._budget_seen = self.budget.version
        self._budget_changed.set()
        self._budget_changed = anyio.Event()

    async def _admit(self, items: list[_Item], j: int) -> bool:
        """Reserve item j's estimated cost under the cap (see `SpendBudget`): True to
        send it, False to leave it pending (it could cross the cap)."""
        budget = self.budget
        if budget is None:
            return True
        item = items[j]
        cls = price_class(item.request)
        try:
            while True:
                verdict = budget.reserve(cls, j)
                self._wake()
                if verdict is Verdict.GRANTED:
                    return True
                if verdict is Verdict.REFUSED:
                    break
                changed = self._budget_changed
                if budget.needs_reading and not self._reading.locked():
                    await self.read_balance()
                else:
                    await changed.wait()
        except BaseException:
            budget.release(j)
            self._wake()
            raise
        self.left_by_cap += 1
        await self._move(item, ItemState.PENDING, reason=(
            f"not sent: the spend cap {budget.cap:g} could be crossed (this batch spent "
            f"{budget.spent:g}); re-run with a larger --max-spend (max_spend=) to send it"))
        return False

    def _settle(self, j: int, charged: bool) -> None:
        if self.budget is not None:
            self.budget.settle(j, charged=charged)
            self._wake()

    async def _submit(self, items: list[_Item]) -> None:
        # Called at the gate, holding a request slot and a rate token: the row says
        # "submitting" before the bytes go out, and only then.
        async def before(j: int) -> None:
            await self._move(items[j], ItemState.SUBMITTING)
            if self.journal_error is not None:
                # Not journaled as "submitting": it must not go out.
                items[j].set(state=ItemState.PENDING)
                raise StreamClosed

        # Called as each submission ends, before anything else happens to it, so an
        # interrupt that waits for the submitter finds every outcome journaled.
        async def after(j: int, outcome: Submission | APIMartError | None) -> None:
            item = items[j]
            if isinstance(outcome, Submission):
                await self._move(item, ItemState.SUBMITTED, task_id=outcome.task_id)
            elif outcome is not None:
                await self._submit_failed(item, outcome)
            elif item.result.state is ItemState.SUBMITTING:
                # Not sent, or refused without creating anything: back in line.
                await self._move(item, ItemState.PENDING)

        if self.interrupted:
            return
        async def admit(j: int) -> bool:
            return await self._admit(items, j)

        hooks = BatchHooks(keys=[item.idem for item in items], before_submit=before,
                           after_submit=after, task_group=self._tg,
                           admit=admit if self.budget is not None else None,
                           settle=self._settle if self.budget is not None else None)
        stream = BatchStream(self.engine, [item.request for item in items], timeout=None,
                             task_timeout=None, hooks=hooks)
        self._stream = stream
        async with stream as events:
            async for event in events:
                await self._on_event(items[event.index], event)

    async def _on_event(self, item: _Item, event: BatchEvent) -> None:
        if event.kind is EventKind.PROGRESS and event.task is not None:
            self._notify(item.set(progress=event.task.progress))
        elif (event.kind is EventKind.FAILED and event.error is not None
              and not isinstance(event.error, TaskFailedError)):
            # Watching stopped (a 401, a 404, an outage past the poll policy's give-up),
            # whatever the task's last state was: not the task's own end.
            await self._watch_failed(item, event.error)
        elif event.kind in (EventKind.COMPLETED, EventKind.FAILED) and event.task is not None:
            await self._ended(item, event.task)
        elif event.kind is EventKind.SUBMIT_FAILED and event.error is not None:
            await self._submit_failed(item, event.error)

    async def _submit_failed(self, item: _Item, error: APIMartError) -> None:
        if error.submission_ambiguous:
            await self._move(item, ItemState.AMBIGUOUS, error=error,
                             reason=f"may exist and be billed: {error}")
        elif self._account_failure(error):
            text = str(error) if isinstance(error, NotSubmittedError) else f"not submitted: {error}"
            await self._move(item, ItemState.PENDING, error=error, reason=text)
        elif isinstance(error, (BadRequestError, ValidationError)):
            await self._move(item, ItemState.FAILED, error=error, reason=f"rejected: {error}")
        else:
            # Refused before processing (no balance, bad key, 429s, no connection):
            # nothing was created, so a re-run submits it again.
            await self._move(item, ItemState.PENDING, error=error,
                             reason=f"not submitted: {error}")

    def _account_failure(self, error: APIMartError) -> bool:
        """Whether `error` is (or follows) a 401/402/403; the first one heads the report."""
        if isinstance(error, NotSubmittedError):
            error = error.reason
        if not error.fatal:
            return False
        if self.account_error is None:
            self.account_error = error
        return True

    async def _watch_failed(self, item: _Item, error: APIMartError) -> None:
        if self._account_failure(error):
            # The task exists (and may be billed): keep it SUBMITTED so a re-run, after the
            # account is fixed, polls and downloads it instead of losing it.
            await self._move(item, ItemState.SUBMITTED, error=error,
                             reason=f"not followed: {error}")
        elif isinstance(error, _TRANSIENT):
            # Polls kept failing (an outage) until the poll policy gave up: the task was
            # paid for and may well complete; a re-run polls it again.
            await self._move(item, ItemState.SUBMITTED, error=error,
                             reason=f"not followed: its polls kept failing: {error}")
        else:
            await self._move(item, ItemState.FAILED, error=error, reason=str(error))

    async def _ended(self, item: _Item, task: Task) -> None:
        if task.status is TaskStatus.COMPLETED:
            await self._move(item, ItemState.COMPLETED, progress=100)
            assert self._tg is not None
            self._tg.start_soon(self._download, item, task)
        else:
            message = task.error.message if task.error else task.status.value
            await self._move(item, ItemState.FAILED, error=TaskFailedError(task),
                             reason=f"task {task.status.value}: {message}")

    async def _claim_path(self, item: _Item, index: int, output: TaskOutput) -> Path:
        """Where output `index` of the item's task goes: the path the journal gave it,
        else the first of its name (see the module docstring) and that name on the stem
        STEM~2, STEM~3, ... that no file (whole or partial) and no other journaled item
        or output has; claimed in the journal before any byte is written."""
        known = item.result.path if index == 0 else item.more.get(index, (None,))[0]
        if known is not None:
            return known
        # One claim at a time: between looking at a name and taking it, another
        # download (awaiting the disk) could take the same name.
        async with self._claiming:
            base = Path(item.filename).stem
            if index > 0 and item.result.path is not None:
                # An item's files share one stem: the first output's, "~N" and all.
                base = item.result.path.stem
            n = 1
            while True:
                stem = variant_stem(base, n)
                path = self.out_dir / numbered_name(stem, index, output)
                if (path.name.casefold() not in self._claimed
                        and not await anyio.Path(path).exists()
                        and not await anyio.Path(part_path(path)).exists()):
                    break
                n += 1
            self._claimed.add(path.name.casefold())
            if index == 0:
                await self._move(item, item.result.state, path=path)
            else:
                await self._journal_file(item, index, path)
        return path

    async def _journal_file(
        self, item: _Item, index: int, path: Path, size: int | None = None,
        sha256: str | None = None,
    ) -> None:
        """Record output `index` (from 1) of the item: claimed, or whole with its hash."""
        if self.journal_error is None:
            try:
                await self.journal.set_file(item.key, index, path.name, size=size,
                                            sha256=sha256)
            except (OSError, sqlite3.Error) as exc:
                self._journal_failed(exc)
        item.more[index] = (path, size, sha256)
        self._notify(item.set())

    async def _forget_file(self, item: _Item, index: int) -> None:
        """Output `index`'s file is not the item's (someone else's file is there)."""
        if index == 0:
            await self.journal.release_path(item.key, item.result.state)
            item.set(path=None, size=None, sha256=None)
        else:
            await self.journal.release_file(item.key, index)
            item.more.pop(index, None)

    async def _on_disk(self, item: _Item, index: int) -> bool:
        """Whether output `index` is whole on disk already (journaled with its hash, and
        the file has its size); a journaled file that changed since is kept as it is,
        and the output takes a new name."""
        if index == 0:
            path, size, digest = item.result.path, item.result.size, item.result.sha256
        else:
            path, size, digest = item.more.get(index, (None, None, None))
        if path is None or size is None or digest is None:
            return False
        now = await _file_size(path)
        if now == size:
            return True
        if now is not None:
            log.warning("%s changed since it was downloaded: kept; output %d of task %s is "
                        "downloaded again to a new file", path, index + 1, item.result.task_id)
            await self._forget_file(item, index)
        return False

    async def _download(self, item: _Item, task: Task | None) -> None:
        """Fetch every output of the item's task, each journaled (claimed, then whole
        with its hash) before the next: a re-run fetches only what is missing."""
        try:
            if task is None:
                assert item.result.task_id is not None
                task = await self.engine.get_task(item.result.task_id)
            outputs = task.outputs or (TaskOutput(kind="video", url=""),)
            for index, output in enumerate(outputs):
                if await self._on_disk(item, index):
                    continue
                while True:
                    path = await self._claim_path(item, index, output)
                    try:
                        result = await self.engine.download(task, path, index=index)
                        break
                    except ValidationError as exc:
                        if exc.field != "dest":
                            raise
                        # Somebody put a file at the claimed path meanwhile: it stays;
                        # the output takes the next free name.
                        log.warning("%s appeared meanwhile: kept; task %s takes a new name",
                                    path, task.id)
                        await self._forget_file(item, index)
                if index == 0:
                    await self._move(item, item.result.state, path=result.path,
                                     size=result.size, sha256=result.sha256)
                else:
                    await self._journal_file(item, index, result.path, result.size,
                                             result.sha256)
        except APIMartError as exc:
            self._account_failure(exc)
            # Stays "completed" in the journal: a re-run fetches what is missing.
            await self._move(item, ItemState.COMPLETED, error=exc,
                             reason=f"download failed: {exc}")
            return
        await self._move(item, ItemState.DOWNLOADED, outputs=len(task.outputs) or 1,
                         error=None, reason=None)

    async def _recheck(self, item: _Item) -> None:
        """An item a version before 5 downloaded (its first output only): fetch the
        task's other outputs, if it has any. If the task cannot be read now, the item
        stays downloaded (its first file is there) and a later run looks again."""
        assert item.result.task_id is not None
        try:
            task = await self.engine.get_task(item.result.task_id)
        except APIMartError as exc:
            log.warning("task %s: could not check for outputs after its first (%s); a "
                        "later run looks again", item.result.task_id, exc)
            return
        if len(task.outputs) > 1:
            await self._move(item, ItemState.COMPLETED)
            await self._download(item, task)
        else:
            await self._move(item, ItemState.DOWNLOADED, outputs=len(task.outputs) or 1)


async def run_batch(
    engine: Engine,
    requests: Sequence[VideoRequest | BatchItem],
    *,
    out_dir: Path | str,
    journal: Path | str | None = None,
    resubmit_ambiguous: bool = False,
    on_change: OnChange | None = None,
    stop: anyio.Event | None = None,
    batch: str = "default",
    lease: float = 30.0,
    retry_failed: bool = False,
    max_spend: float | None = None,
    item_cost: float | None = None,
) -> BatchReport:
    """See `Session.run_batch`."""
    cap = check_max_spend(max_spend)
    cost = check_item_cost(item_cost, cap)
    occurrences: dict[str, int] = {}
    items = [_Item(index, item, occurrences) for index, item in enumerate(requests)]
    names = [item.name for item in items if item.name]
    if len(names) != len(set(names)):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValidationError("name", f"{dup!r} is used by more than one item")
    out = Path(out_dir)
    if await anyio.Path(out).exists() and not await anyio.Path(out).is_dir():
        raise ValidationError("out_dir", f"{out} is a file, not a folder")
    if is_pg_url(journal):
        from .fleet import run_fleet_batch

        assert isinstance(journal, str)
        await anyio.to_thread.run_sync(_probe_writable, out)
        return await run_fleet_batch(
            engine, items, out_dir=out, url=journal, batch=batch, lease=lease,
            resubmit_ambiguous=resubmit_ambiguous, stop=stop, retry_failed=retry_failed,
            on_change=on_change, max_spend=cap, item_cost=cost,
        )
    path = Path(journal) if journal is not None else out / JOURNAL_NAME
    before = attrs.evolve(engine.stats)
    # Before anything is paid for: a folder the videos cannot be written to fails now
    # (OSError, as itself), not after every task was created. The journal proves
    # itself writable by recording the items, also before the first POST.
    await anyio.to_thread.run_sync(_probe_writable, out)
    async with Journal(path) as jr:
        run = _Run(engine, items, out, jr, on_change)
        await run.reconcile(resubmit_ambiguous, retry_failed)
        sending = {item.key for item in items if item.result.state is ItemState.PENDING}
        start: Balance | None = None
        if cap is not None:
            start = await _start_budget(run, cap, cost)
        elif sending:
            start = await _open_ledger(run)
        try:
            with ungrouped():  # a failing on_change (or journal) comes out as itself
                await run.execute(stop)
        except (OSError, sqlite3.Error):
            if run.journal_error is None:
                raise
            # Another write (a download's) met the broken journal first: same fault.
        run.explain_unsent()
        spend = None
        if cap is not None:
            assert start is not None
            spend = await _spend_report(run, start)
        elif sending:
            await _close_ledger(run, start, sending)
        if run.journal_error is not None:
            raise JournalWriteError(
                str(path), task_ids=tuple(run.lost),
                recovery_file=str(run.recovery) if run.lost and run.recovery else None,
                reason=str(run.journal_error) or type(run.journal_error).__name__,
            ) from run.journal_error
    stats = engine.stats
    return BatchReport(
        items=tuple(item.result for item in items),
        earlier=tuple(item.result for item in run.earlier),
        journal=path,
        interrupted=run.interrupted,
        bytes_downloaded=stats.bytes_downloaded - before.bytes_downloaded,
        retries=stats.retries - before.retries,
        rate_limited=stats.rate_limited - before.rate_limited,
        account_error=run.account_error,
        spend=spend,
    )


def check_max_spend(value: object) -> float | None:
    """`value` as a spend cap (a finite number > 0), or None; else `ValidationError`."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValidationError(
            "max_spend", f"must be a finite number > 0 (in the balance's unit), got {value!r}")
    return float(value)


def check_item_cost(value: object, cap: float | None) -> float | None:
    """`value` as a known per-item cost (a finite number > 0) for a capped run, or None;
    else `ValidationError`."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValidationError(
            "item_cost", f"must be a finite number > 0 (in the balance's unit), got {value!r}")
    if cap is None:
        raise ValidationError("item_cost", "is a price hint for max_spend: give max_spend too")
    return float(value)


async def _start_budget(run: _Run, cap: float, item_cost: float | None = None) -> Balance:
    """Read the balance before the first submission; refuse to start with nothing left
    for even one item. Sets `run.budget`."""
    balance = await run.engine.balance()
    sending = any(item.result.state is ItemState.PENDING for item in run.items)
    if sending and not balance.covers(1e-9):
        raise InsufficientBalanceError(
            f"the balance has {balance.remain:g} left, not enough for one item; nothing "
            "was sent", status=402)
    before, unpriced = await _ledger_start(run, balance)
    run.budget = SpendBudget(cap, start_used=balance.used, spent_before=before,
                             unpriced=unpriced, item_cost=item_cost)
    run._last_read = run.engine.clock.now()
    return balance


# The spend ledger, in the journal's ``meta`` table (see README "Balance and spend caps"):
# 'spent' is what runs of the batch spent as measured by balance reads; _OPEN the
# ``used_balance`` of the last read of a run that has not closed its account (a crash, a
# failed last read): the next run's first read closes it, counting everything the key
# spent meanwhile (the safe side); _UNPRICED the items sent while no read could measure
# them ({price class: count}), counted at estimates by capped runs; _LEDGER marks a
# journal kept by this ledger (an older journal's paid items are taken as unpriced).
_OPEN, _UNPRICED, _LEDGER = "spend_open", "spend_unpriced", "spend_ledger"


def _billed(item: _Item) -> bool:
    """The item was (maybe) created, so maybe billed."""
    return item.result.task_id is not None or item.result.state in (
        ItemState.AMBIGUOUS, ItemState.SUBMITTING)


async def _unpriced(run: _Run) -> dict[str, int]:
    text = await run.journal.meta(_UNPRICED)
    try:
        loaded = json.loads(text) if text else {}
    except ValueError:
        loaded = {}
    if not isinstance(loaded, dict):
        return {}
    return {str(c): int(n) for c, n in loaded.items()
            if isinstance(n, int) and not isinstance(n, bool) and n > 0}


async def _add_unpriced(run: _Run, items: Iterable[_Item]) -> None:
    unpriced = await _unpriced(run)
    for item in items:
        cls = price_class(item.request)
        unpriced[cls] = unpriced.get(cls, 0) + 1
    await run.journal.set_meta(_UNPRICED, json.dumps(unpriced, sort_keys=True))


async def _ledger_start(run: _Run, balance: Balance | None) -> tuple[float, dict[str, int]]:
    """Open this run's account in the journal's spend ledger before anything is sent:
    close an earlier run's open account with `balance`, and open this one at it.
    Returns (what earlier runs spent as measured, their unpriced items by class)."""
    journal = run.journal
    if await journal.meta(_LEDGER) is None:
        # A journal from before the ledger: what its runs sent is priced only when a
        # capped run recorded it ('spent'); otherwise every paid item is unpriced.
        if await journal.meta("spent") is None:
            await _add_unpriced(run, [i for i in (*run.items, *run.earlier) if _billed(i)])
        await journal.set_meta(_LEDGER, "1")
    spent = await journal.spent()
    if balance is not None:
        opened = await journal.meta(_OPEN)
        if opened is not None:
            with contextlib.suppress(ValueError):  # unreadable: nothing to add
                spent += max(0.0, balance.used - float(opened))
            await journal.set_spent(spent)
        await journal.set_meta(_OPEN, repr(balance.used))
    return spent, await _unpriced(run)


async def _open_ledger(run: _Run) -> Balance | None:
    """An uncapped run that will send: read the balance so its spend is measured (a
    capped run later on this journal counts it). A failed read does not stop the run:
    what it sends is recorded as unpriced instead."""
    try:
        balance: Balance | None = await run.engine.balance()
    except APIMartError as exc:
        log.info("could not read the balance (%s): this run's spend is recorded as "
                 "unpriced items", exc)
        balance = None
    await _ledger_start(run, balance)
    return balance


async def _close_ledger(run: _Run, start: Balance | None, sending: set[str]) -> None:
    """An uncapped run's end: record what it spent (one more balance read)."""
    if run.journal_error is not None:
        return
    try:
        if start is None:
            await _add_unpriced(run, [i for i in run.items if i.key in sending and _billed(i)])
            return
        try:
            end = await run.engine.balance()
        except APIMartError as exc:
            # The open account stays: the next run's first read closes it.
            log.info("could not read the balance at the end of the run (%s)", exc)
            return
        spent = await run.journal.spent() + max(0.0, end.used - start.used)
        await run.journal.set_spent(spent)
        await run.journal.set_meta(_OPEN, None)
    except (OSError, sqlite3.Error) as exc:
        run._journal_failed(exc)


async def _spend_report(run: _Run, start: Balance) -> BatchSpend:
    """The run's spending, from one last balance read (the budget's estimate if that
    read fails: the run's outcome is not lost over it)."""
    budget = run.budget
    assert budget is not None
    before = budget.spent_before
    end: Balance | None
    try:
        end = await run.engine.balance()
        budget.observe(end.used)
    except APIMartError as exc:
        log.warning("could not read the balance at the end of the run (%s): the spend "
                    "reported is an estimate", exc)
        end = None
    # Without the last read, what was sent is counted at its estimate (the journal keeps
    # what was measured, and its open account: the next run's first read measures the rest).
    debt = budget.debt
    total = budget.spent if end is not None else budget.committed - debt
    if run.journal_error is None:
        try:
            await run.journal.set_spent(budget.spent)
            await run.journal.set_meta(_OPEN, None if end is not None else repr(budget.last_used))
        except (OSError, sqlite3.Error) as exc:
            run._journal_failed(exc)
    return BatchSpend(cap=budget.cap, spent=max(0.0, total - before),
                      spent_before=before + debt, start=start, end=end,
                      left_pending=run.left_by_cap)
