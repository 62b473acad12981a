"""The batch journal: one SQLite row per item, written before and after every step.

WAL mode, one connection used from worker threads under a lock, so the event loop
never waits on the disk. It holds request bodies, task ids and outcomes; never an
API key or any header.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import attrs

__all__ = ["ItemState", "Journal", "JournalRow"]

SCHEMA_VERSION = 1


class ItemState(str, enum.Enum):
    """Where a batch item stands, as the journal records it."""

    PENDING = "pending"  # not sent (yet, or refused before sending: nothing billed)
    SUBMITTING = "submitting"  # on the wire; a crash here leaves it ambiguous
    SUBMITTED = "submitted"  # the task exists: task_id is set
    COMPLETED = "completed"  # the task completed; the video is not on disk yet
    FAILED = "failed"  # the task failed, or the API rejected the request
    DOWNLOADED = "downloaded"  # the video is on disk: path, size, sha256
    AMBIGUOUS = "ambiguous"  # may or may not have been created (and billed)


_COLUMNS = ("key", "position", "name", "request", "idempotency_key", "state", "task_id",
            "error", "path", "size", "sha256", "updated")


@attrs.frozen(kw_only=True)
class JournalRow:
    """One item as recorded."""

    key: str
    position: int
    name: str | None
    request: str
    idempotency_key: str
    state: ItemState
    task_id: str | None = None
    error: str | None = None
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    updated: float = 0.0


class Journal:
    """An SQLite file recording a batch's items; ``async with Journal(path) as j``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    async def __aenter__(self) -> Journal:
        await anyio.to_thread.run_sync(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self._close)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
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
                " updated REAL NOT NULL)"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("the journal is not open")
            return self._conn.execute(sql, tuple(params)).fetchall()

    async def load(self) -> dict[str, JournalRow]:
        """Every recorded item, by key."""
        rows = await anyio.to_thread.run_sync(
            self._run, f"SELECT {', '.join(_COLUMNS)} FROM items"  # noqa: S608 - fixed columns
        )
        out = {}
        for row in rows:
            data = dict(zip(_COLUMNS, row, strict=True))
            data["state"] = ItemState(data["state"])
            out[data["key"]] = JournalRow(**data)
        return out

    async def add(self, rows: Iterable[JournalRow]) -> None:
        """Record new items (in one transaction)."""
        values = [
            (r.key, r.position, r.name, r.request, r.idempotency_key, r.state.value, r.task_id,
             r.error, r.path, r.size, r.sha256, time.time())
            for r in rows
        ]

        def insert() -> None:
            with self._lock:
                assert self._conn is not None
                self._conn.execute("BEGIN")
                self._conn.executemany(
                    f"INSERT INTO items ({', '.join(_COLUMNS)}) VALUES "  # noqa: S608
                    f"({', '.join('?' * len(_COLUMNS))})",
                    values,
                )
                self._conn.execute("COMMIT")

        if values:
            await anyio.to_thread.run_sync(insert)

    async def update(self, key: str, state: ItemState, **fields: Any) -> None:
        """Move item `key` to `state`, setting the given columns too."""
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown journal columns: {sorted(unknown)}")
        assignments = ["state = ?", "updated = ?", *(f"{name} = ?" for name in fields)]
        params = [state.value, time.time(), *fields.values(), key]
        sql = f"UPDATE items SET {', '.join(assignments)} WHERE key = ?"  # noqa: S608
        await anyio.to_thread.run_sync(self._run, sql, params)


def request_json(body: Mapping[str, Any]) -> str:
    """The canonical JSON of a request body, as stored and compared."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
