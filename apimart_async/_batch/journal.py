"""The batch journal: one SQLite row per item, written before and after every step.

WAL mode, one connection used from worker threads under a lock, so the event loop
never waits on the disk. It holds request bodies, task ids and outcomes; never an
API key or any header.

An item is keyed by what it asks for, not where it sits in the input: a named item
by its name, an unnamed one by its request's digest and its occurrence among
identical requests (`item_key`). A row's `path` is a file name in the output folder
(the journal normally lives in it, so the folder can move, and a run from another
working directory finds the same files); no two rows share one. Each row keeps its
item's typed error (`error_record`) beside the text. Older journals are migrated on
open; a journal from a newer version is refused. One run at a time: an
exclusive OS lock on ``JOURNAL.lock`` is held while the journal is open.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import attrs

from .._core.errors import JournalBusyError, ValidationError
from .._core.validation import is_text
from .report import ItemState

__all__ = ["FileRow", "ItemState", "Journal", "JournalRow", "item_key", "request_digest"]

#: 1: unnamed items keyed by input position. 2: keyed by content (`item_key`).
#: 3: `path` is a file name in the output folder (was relative to the working directory),
#: unique; the output folder is recorded in `meta`.
#: 4: the typed error of each item (`error_record`, JSON), beside its text (`error`).
#: 5: every output of a task (its videos and images): the first stays in `items`
#: (`path`, `size`, `sha256`), the others are rows of `files` (`key`, `idx` from 1,
#: `path`, `size`, `sha256`); `items.outputs` is how many outputs the task had once all
#: were on disk (NULL for rows a version before 5 downloaded: only their first output).
SCHEMA_VERSION = 5

if sys.platform == "win32":  # pragma: no cover - no Windows CI here
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


# What a row is read as; the table also has `position` (the input position an item
# had when first recorded; version 1's migration sorts by it) and `updated` (a
# timestamp), written for people inspecting the file and never read back.
_COLUMNS = ("key", "name", "request", "idempotency_key", "state", "task_id",
            "error", "error_record", "path", "size", "sha256", "outputs")
_WRITABLE = frozenset(_COLUMNS) - {"key"}


@attrs.frozen(kw_only=True)
class JournalRow:
    """One item as recorded. `error` is the text shown to people; `error_record` the
    typed error as JSON (`error_record` / `error_from_record` in `_core.errors`)."""

    key: str
    name: str | None
    request: str
    idempotency_key: str
    state: ItemState
    task_id: str | None = None
    error: str | None = None
    error_record: str | None = None
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    #: How many outputs the task had, once every one is on disk (None: not known yet).
    outputs: int | None = None


@attrs.frozen(kw_only=True)
class FileRow:
    """An output of an item's task after its first (`index` from 1): its file name in
    the output folder, and its size and sha256 once it is whole on disk."""

    key: str
    index: int
    path: str
    size: int | None = None
    sha256: str | None = None


class Journal:
    """An SQLite file recording a batch's items; ``async with Journal(path) as j``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    @property
    def label(self) -> str:
        """The journal's path, as messages name it."""
        return str(self.path)

    @property
    def folder(self) -> Path:
        """The folder the journal file is in."""
        return self.path.parent

    def sidecar(self, suffix: str) -> Path:
        """``JOURNAL + suffix``, beside the journal."""
        return self.path.with_name(self.path.name + suffix)

    async def __aenter__(self) -> Journal:
        try:
            await anyio.to_thread.run_sync(self._open)
        except BaseException:
            # Cancelled while opening: the thread finished, so close what it opened (and
            # the lock it took) here; quick enough to do on the loop.
            self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancelled run must still close, or its lock would outlive it.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._connect()
        except BaseException:
            self._release_lock()
            raise

    def _take_lock(self) -> None:
        """Hold ``JOURNAL.lock`` exclusively, or say who does.

        A separate file, because SQLite's own POSIX locks on the database would be
        dropped by any other descriptor on it closing; the OS frees this lock when the
        process dies, so a crash never leaves the journal locked. The file itself stays
        (removing it would let two runs lock two different files).
        """
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            try:
                holder = os.read(fd, 200).decode("utf-8", "replace").split()
            finally:
                os.close(fd)
            pid = int(holder[0]) if holder and holder[0].isdigit() else None
            host = holder[1] if len(holder) > 1 else None
            raise JournalBusyError(str(self.path), pid=pid, host=host)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def _refuse(self, problem: str) -> ValidationError:
        return ValidationError(
            "journal", f"{self.path} {problem}; use another --journal, or move it away"
        )

    def _connect(self) -> None:
        if self.path.is_dir():
            raise self._refuse("is a directory, not a journal file")
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            try:
                tables = {row[0] for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
            except sqlite3.DatabaseError:
                # Raised outside the handler: one line, no sqlite3 chain.
                tables = None
            if tables is None:
                raise self._refuse("is not an SQLite database (corrupt, or another kind of file)")
            if tables and not {"items", "meta"} <= tables:
                # Someone else's database: never add our tables to it.
                names = ", ".join(sorted(tables)[:5])
                raise self._refuse(f"is not an apimart-async journal (its tables: {names})")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; only power loss can lose
            # the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS items ("
                " key TEXT PRIMARY KEY, position INTEGER NOT NULL, name TEXT,"
                " request TEXT NOT NULL, idempotency_key TEXT NOT NULL, state TEXT NOT NULL,"
                " task_id TEXT, error TEXT, path TEXT, size INTEGER, sha256 TEXT,"
                " updated REAL NOT NULL, error_record TEXT, outputs INTEGER)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS files ("
                " key TEXT NOT NULL, idx INTEGER NOT NULL, path TEXT NOT NULL, size INTEGER,"
                " sha256 TEXT, updated REAL NOT NULL, PRIMARY KEY (key, idx))"
            )
            conn.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS files_path ON files (path COLLATE NOCASE)"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self._upgrade(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        (text,) = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        version = int(text) if str(text).isdigit() else SCHEMA_VERSION + 1
        if version > SCHEMA_VERSION:
            raise ValidationError(
                "journal",
                f"{self.path} was written by a newer apimart-async (journal version {text}, "
                f"this one reads up to {SCHEMA_VERSION}); upgrade it, or use a new journal",
            )
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if version == 1:
                    _migrate_v1(conn)
                if version <= 2:
                    _migrate_v2(conn)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(items)")}
                if "error_record" not in columns:
                    conn.execute("ALTER TABLE items ADD COLUMN error_record TEXT")
                if "outputs" not in columns:
                    # Left NULL: such a row's task may have had more outputs than the
                    # one file an older version fetched (the runner checks it).
                    conn.execute("ALTER TABLE items ADD COLUMN outputs INTEGER")
                conn.execute(
                    "UPDATE meta SET value = ? WHERE name = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        self._unique_paths(conn)

    def _unique_paths(self, conn: sqlite3.Connection) -> bool:
        """Refuse two rows with one file, from now on; False while some still share one
        (an older version's race could claim a name twice: see `release_path`)."""
        try:
            conn.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS items_path ON items (path COLLATE NOCASE)"
            )
        except sqlite3.IntegrityError:
            return False
        return True

    async def release_path(self, key: str, state: ItemState) -> None:
        """Forget item `key`'s file (it belongs to another row): it takes a new one."""
        await self.update(key, state, path=None, size=None, sha256=None)

    async def enforce_unique_paths(self) -> None:
        """Once shared paths are resolved: index them, so none can be shared again."""

        def index() -> None:
            with self._lock:
                assert self._conn is not None
                if not self._unique_paths(self._conn):
                    raise RuntimeError(f"{self.path}: two items still share one file")

        await anyio.to_thread.run_sync(index)

    async def out_dir(self) -> str | None:
        """The resolved output folder this journal's files are in, if recorded."""
        rows = await anyio.to_thread.run_sync(
            self._run, "SELECT value FROM meta WHERE name = 'out_dir'"
        )
        return str(rows[0][0]) if rows else None

    async def set_out_dir(self, folder: str) -> None:
        """Record the resolved output folder the journal's file names are in."""
        await anyio.to_thread.run_sync(
            self._run, "INSERT OR REPLACE INTO meta VALUES ('out_dir', ?)", (folder,)
        )

    async def spent(self) -> float:
        """What runs of this batch spent so far, as recorded (0 if never recorded).

        A ``meta`` row, not a column: journals of every schema version can hold it."""
        rows = await anyio.to_thread.run_sync(
            self._run, "SELECT value FROM meta WHERE name = 'spent'"
        )
        try:
            value = float(rows[0][0]) if rows else 0.0
        except (TypeError, ValueError):
            value = 0.0
        return value if value >= 0 and value != float("inf") else 0.0

    async def set_spent(self, amount: float) -> None:
        """Record what runs of this batch spent so far (see `spent`)."""
        await anyio.to_thread.run_sync(
            self._run, "INSERT OR REPLACE INTO meta VALUES ('spent', ?)", (repr(float(amount)),)
        )

    async def meta(self, name: str) -> str | None:
        """A ``meta`` row's value (the spend ledger's bookkeeping), None if absent."""
        rows = await anyio.to_thread.run_sync(
            self._run, "SELECT value FROM meta WHERE name = ?", (name,)
        )
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    async def set_meta(self, name: str, value: str | None) -> None:
        """Set (None: delete) a ``meta`` row."""
        if value is None:
            await anyio.to_thread.run_sync(
                self._run, "DELETE FROM meta WHERE name = ?", (name,))
        else:
            await anyio.to_thread.run_sync(
                self._run, "INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._release_lock()

    def _run(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("the journal is not open")
            return self._conn.execute(sql, tuple(map(_storable, params))).fetchall()

    async def load(self) -> dict[str, JournalRow]:
        """Every recorded item, by key, in input order."""
        rows = await anyio.to_thread.run_sync(
            self._run,
            f"SELECT {', '.join(_COLUMNS)} FROM items ORDER BY position",  # noqa: S608
        )
        out = {}
        for row in rows:
            data = dict(zip(_COLUMNS, row, strict=True))
            data["state"] = ItemState(data["state"])
            out[data["key"]] = JournalRow(**data)
        return out

    async def load_files(self) -> dict[str, dict[int, FileRow]]:
        """Every recorded output after the first, by item key, then output index."""
        rows = await anyio.to_thread.run_sync(
            self._run, "SELECT key, idx, path, size, sha256 FROM files ORDER BY key, idx")
        out: dict[str, dict[int, FileRow]] = {}
        for key, index, path, size, sha256 in rows:
            out.setdefault(key, {})[index] = FileRow(
                key=key, index=index, path=path, size=size, sha256=sha256)
        return out

    async def set_file(
        self, key: str, index: int, path: str, *, size: int | None = None,
        sha256: str | None = None,
    ) -> None:
        """Record output `index` (from 1) of item `key`: claimed (`path` alone) or whole
        on disk (with its `size` and `sha256`)."""
        if index < 1:
            raise ValueError("output 0 is recorded in the item's own row")
        await anyio.to_thread.run_sync(
            self._run, "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
            (key, index, path, size, sha256, time.time()))

    async def release_file(self, key: str, index: int) -> None:
        """Forget output `index` of item `key`'s file (it takes a new one)."""
        await anyio.to_thread.run_sync(
            self._run, "DELETE FROM files WHERE key = ? AND idx = ?", (key, index))

    async def add(self, rows: Iterable[tuple[int, JournalRow]]) -> None:
        """Record new items, each with its input position (in one transaction)."""
        now = time.time()
        values = [
            (r.key, position, r.name, r.request, r.idempotency_key, r.state.value, r.task_id,
             r.error, r.error_record, r.path, r.size, r.sha256, now)
            for position, r in rows
        ]
        columns = ("key", "position", "name", "request", "idempotency_key", "state", "task_id",
                   "error", "error_record", "path", "size", "sha256", "updated")

        def insert() -> None:
            with self._lock:
                assert self._conn is not None
                self._conn.execute("BEGIN")
                self._conn.executemany(
                    f"INSERT INTO items ({', '.join(columns)}) VALUES "  # noqa: S608
                    f"({', '.join('?' * len(columns))})",
                    values,
                )
                self._conn.execute("COMMIT")

        if values:
            await anyio.to_thread.run_sync(insert)

    async def update(self, key: str, state: ItemState, **fields: Any) -> None:
        """Move item `key` to `state`, setting the given columns too."""
        unknown = set(fields) - _WRITABLE
        if unknown:
            raise ValueError(f"unknown journal columns: {sorted(unknown)}")
        assignments = ["state = ?", "updated = ?", *(f"{name} = ?" for name in fields)]
        params = [state.value, time.time(), *fields.values(), key]
        sql = f"UPDATE items SET {', '.join(assignments)} WHERE key = ?"  # noqa: S608
        await anyio.to_thread.run_sync(self._run, sql, params)


def request_json(body: Mapping[str, Any]) -> str:
    """The canonical JSON of a request body, as stored and compared."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_digest(body_json: str) -> str:
    """The sha256 (hex) of a request's canonical JSON: its identity."""
    return hashlib.sha256(body_json.encode()).hexdigest()


def item_key(name: str | None, body_json: str, occurrence: int) -> str:
    """The journal key of an item: its name, else its request and its occurrence (from 1)
    among identical requests, so moving lines about never changes it."""
    if name:
        return f"name:{name}"
    return f"req:{request_digest(body_json)[:32]}:{occurrence}"


# States in which the server has (or may have) the task: such rows take the first
# occurrence numbers, so a re-run maps its items onto what was paid for first.
_PAID = ("submitting", "submitted", "completed", "failed", "downloaded", "ambiguous")


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Re-key version 1's positional rows ("#POSITION:DIGEST") by content."""
    rows = conn.execute(
        "SELECT key, request, state, position FROM items WHERE key LIKE '#%'"
    ).fetchall()
    rows.sort(key=lambda r: (r[1], r[2] not in _PAID, r[3]))
    seen: dict[str, int] = {}
    renames = []
    for key, request, _, _ in rows:
        seen[request] = seen.get(request, 0) + 1
        renames.append((item_key(None, request, seen[request]), key))
    # Via temporary keys: a new key never equals an old one, but stay safe regardless.
    conn.executemany("UPDATE items SET key = '~' || key WHERE key = ?", [(k,) for _, k in renames])
    conn.executemany("UPDATE items SET key = ? WHERE key = '~' || ?", renames)


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Version 2 stored OUT/NAME as given (relative to the working directory of the run
    that claimed it); every file was directly in the output folder, so keep NAME."""
    rows = conn.execute("SELECT key, path FROM items WHERE path IS NOT NULL").fetchall()
    conn.executemany(
        "UPDATE items SET path = ? WHERE key = ?", [(Path(p).name, k) for k, p in rows]
    )


def _storable(value: Any) -> Any:
    """`value`, with a string SQLite cannot store (one holding a lone surrogate, as
    server text quoted in an error can) written with escapes instead."""
    if type(value) is str and not is_text(value):
        return value.encode("utf-8", "backslashreplace").decode()
    return value
