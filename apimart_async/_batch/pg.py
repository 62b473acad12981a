"""The PostgreSQL journal: one batch shared by a fleet of workers (#13).

The same rows and states as the SQLite journal (`JournalRow`, `ItemState`), kept in
tables on a server, one batch per name. What makes a fleet safe is said in SQL, each
statement one transaction (autocommit), so PgBouncer in transaction mode is fine and no
server-side prepared statement is needed (asyncpg's statement cache is off):

- Workers register (`apimart_workers`); the row id is the worker's fencing token. Every
  write a worker makes checks, in the same statement, that its row is alive and its
  heartbeat younger than the lease on the database's clock (``FOR SHARE``, so a worker
  declared dead concurrently is either seen dead or waited for), and that it owns the item.
  A write refused that way raises `WorkerFencedError`.
- A live worker declares dead any worker whose heartbeat is older than the lease: that
  worker's `submitting` items become `ambiguous` (never pending: they may be billed),
  its `submitted` and `completed` ones lose their owner, for any live worker to adopt.
- Items are claimed ``FOR UPDATE SKIP LOCKED``; ``pending -> submitting`` commits
  before the POST. Nothing here moves `submitting` or `ambiguous` back to `pending`,
  except `resubmit_ambiguous`, asked for explicitly.
- The key's rate: one row per key fingerprint (a hash, never the key) holding a GCRA
  theoretical arrival time, advanced by one ``UPDATE ... RETURNING`` per request.
- A 401/402/403 is recorded on the batch (`stopped`): every worker stops claiming.

Schema version 1 is recorded in `apimart_meta`; a newer one is refused in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import attrs

from .._core.errors import JournalUnavailableError, ValidationError, WorkerFencedError
from .._core.spend import SpendBudget
from .journal import ItemState, JournalRow

__all__ = [
    "PG_SCHEMA_VERSION", "Claimed", "PgJournal", "Reserve", "fleet_status", "is_pg_url",
    "url_label",
]

PG_SCHEMA_VERSION = 1
T = TypeVar("T")
# Held while creating or migrating the tables, so workers starting together do not race.
_MIGRATION_LOCK = 0x61706D61  # "apma"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS apimart_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS apimart_batches (
    name text PRIMARY KEY,
    out_dir text,
    stopped text,
    stopped_record text,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS apimart_workers (
    id bigserial PRIMARY KEY,
    batch text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    started timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now(),
    lease double precision NOT NULL,
    dead boolean NOT NULL DEFAULT false,
    dead_reason text
);
CREATE TABLE IF NOT EXISTS apimart_items (
    batch text NOT NULL,
    key text NOT NULL,
    position integer NOT NULL,
    name text,
    request text NOT NULL,
    idempotency_key text NOT NULL,
    state text NOT NULL,
    task_id text,
    error text,
    error_record text,
    path text,
    size bigint,
    sha256 text,
    folder text,
    outputs text,
    worker bigint,
    updated timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch, key)
);
CREATE INDEX IF NOT EXISTS apimart_items_by_state ON apimart_items (batch, state, position);
CREATE INDEX IF NOT EXISTS apimart_items_by_worker ON apimart_items (worker);
-- Task ids a fenced worker received too late to journal (append-only, unfenced): the
-- item, ambiguous by then, is adopted as submitted with its task (`adopt_late`).
CREATE TABLE IF NOT EXISTS apimart_late_task_ids (
    batch text NOT NULL,
    key text NOT NULL,
    task_id text NOT NULL,
    worker bigint,
    recorded timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch, key, task_id)
);
CREATE TABLE IF NOT EXISTS apimart_budgets (
    batch text PRIMARY KEY,
    state text NOT NULL
);
CREATE TABLE IF NOT EXISTS apimart_rates (
    fingerprint text PRIMARY KEY,
    base_interval_s double precision NOT NULL,
    interval_s double precision NOT NULL,
    tat timestamptz NOT NULL DEFAULT clock_timestamp(),
    slot timestamptz NOT NULL DEFAULT clock_timestamp(),
    decreased timestamptz NOT NULL DEFAULT '-infinity'
);
"""

_COLUMNS = ("key", "name", "request", "idempotency_key", "state", "task_id",
            "error", "error_record", "path", "size", "sha256")
# `folder`: the resolved output folder of the worker that downloaded the video (a
# fleet's workers may each have their own).
# `outputs`: a task's outputs after the first, JSON ([{index, path, size, sha256}]).
_WRITABLE = frozenset(_COLUMNS) - {"key"} | {"folder", "outputs"}

# The caller is alive: its row, not declared dead, heartbeat within its lease on the
# server's clock. FOR SHARE: a concurrent "declare dead" waits for this statement, or
# this statement sees it.
_ALIVE = ("SELECT 1 FROM apimart_workers WHERE id = $1 AND NOT dead "
          "AND heartbeat > clock_timestamp() - make_interval(secs => lease) FOR SHARE")


# A rate halved by 429s comes back by this factor on its interval per slot taken (1 %):
# from half the rate to the whole in ~70 slots.
_RECOVERY = 0.99
# The slowest a shared rate goes on 429s: one request every 10 s.
_SLOWEST = 10.0

# The next pending item, locked, skipping those other workers are claiming; none while
# the caller is not alive (`me`) or the fleet is stopped.
_NEXT = ("SELECT key FROM apimart_items WHERE batch = $2 AND state = 'pending' "
         "AND EXISTS (SELECT 1 FROM me) AND EXISTS (SELECT 1 FROM apimart_batches "
         "WHERE name = $2 AND stopped IS NULL) "
         "ORDER BY position, key LIMIT 1 FOR UPDATE SKIP LOCKED")

#: `PgJournal.claim`'s hook: (connection, item) -> whether to claim it; runs inside the
#: claiming transaction.
Reserve = Callable[[Any, JournalRow], Awaitable[bool]]


def is_pg_url(journal: object) -> bool:
    """Whether `journal` names a PostgreSQL journal (a postgres:// URL), not a file."""
    return isinstance(journal, str) and journal.startswith(("postgresql://", "postgres://"))


#: How long opening a connection to the database may take (seconds): a host that takes
#: the connection and never answers is refused by name after this, not after asyncpg's
#: default of 60 s of silence.
CONNECT_TIMEOUT = 10.0


def _no_answer(url: str) -> JournalUnavailableError:
    # Unreachable, like a database lost mid-run (exit 1), not bad input (exit 2).
    return JournalUnavailableError(
        url_label(url), f"no answer within {CONNECT_TIMEOUT:g} s: is it a PostgreSQL server, "
        "and reachable?")


def url_label(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _refuse_newer(url: str, text: object) -> None:
    """Refuse, in one line, tables written by a newer version (read or written alike)."""
    version = int(str(text)) if str(text).isdigit() else PG_SCHEMA_VERSION + 1
    if version > PG_SCHEMA_VERSION:
        raise ValidationError(
            "journal",
            f"{url_label(url)} was written by a newer apimart-async (journal version "
            f"{text}, this one reads up to {PG_SCHEMA_VERSION}); upgrade it",
        )


def _unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached (as opposed to a bad query)."""
    import asyncpg

    return isinstance(exc, (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                            asyncpg.InternalClientError,
                            asyncpg.exceptions.OperatorInterventionError))


def _check_batch(batch: object) -> None:
    if (not isinstance(batch, str) or not batch or len(batch) > 200
            or not batch.isprintable()):
        raise ValidationError(
            "batch", f"must be 1-200 printable characters (no control characters), "
            f"got {batch!r}")


@attrs.frozen(kw_only=True)
class Claimed:
    """An item a worker holds: its row as recorded."""

    row: JournalRow
    position: int


def _row(record: Any) -> JournalRow:
    data = {name: record[name] for name in _COLUMNS}
    data["state"] = ItemState(data["state"])
    return JournalRow(**data)


class PgJournal:
    """A batch in a PostgreSQL database; ``async with PgJournal(url, batch) as j``.

    Implements `JournalStore` (what a single run needs) and the fleet's operations:
    `register`, `heartbeat`, `reap`, `claim`, `adopt`, fenced `write`, `take_slot`.
    """

    def __init__(self, url: str, batch: str = "default", *, lease: float = 30.0) -> None:
        _check_batch(batch)
        if lease <= 0:
            raise ValidationError("lease", f"must be a positive number of seconds, got {lease!r}")
        self.url = url
        self.batch = batch
        self.lease = lease
        self.worker: int | None = None
        self._pool: Any = None
        #: The items the last `reap` turned ambiguous (a spend cap settles them).
        self.lost_keys: list[str] = []

    def __repr__(self) -> str:
        return f"PgJournal({self.label!r}, batch={self.batch!r})"

    # -- JournalStore ----------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The server's URL without its password, and the batch."""
        return f"{url_label(self.url)} (batch {self.batch})"

    @property
    def folder(self) -> Path | None:
        """None: a server is in no output folder."""
        return None

    def sidecar(self, suffix: str) -> Path | None:
        """None: a server has no files beside it."""
        return None

    async def __aenter__(self) -> PgJournal:
        try:
            import asyncpg
        except ImportError:
            raise ValidationError(
                "journal", "a postgresql:// journal needs asyncpg: "
                "pip install 'apimart-async[postgres]'") from None
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=10, statement_cache_size=0,
                server_settings={"application_name": "apimart-async"},
                timeout=CONNECT_TIMEOUT,
            )
        except (asyncio.TimeoutError, TimeoutError):  # (one class from Python 3.11)
            raise _no_answer(self.url) from None
        except (OSError, asyncpg.PostgresError) as exc:
            raise ValidationError(
                "journal", f"cannot open {url_label(self.url)}: {exc}") from None
        try:
            await self._migrate()
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(_SCHEMA)
            await conn.execute(
                "INSERT INTO apimart_meta VALUES ('schema_version', $1) "
                "ON CONFLICT (name) DO NOTHING", str(PG_SCHEMA_VERSION))
            text = await conn.fetchval(
                "SELECT value FROM apimart_meta WHERE name = 'schema_version'")
            _refuse_newer(self.url, text)
            # Version 1 is the first: later versions migrate here, then record theirs.
            await conn.execute(
                "INSERT INTO apimart_batches (name) VALUES ($1) ON CONFLICT DO NOTHING",
                self.batch)

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """The one place a lost database becomes one line naming it
        (`JournalUnavailableError`), not asyncpg's internals."""
        try:
            yield
        except JournalUnavailableError:
            raise
        except Exception as exc:
            if not _unreachable(exc):
                raise
            reason = str(exc) or type(exc).__name__
            raise JournalUnavailableError(self.label, reason) from None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        """A pooled connection in a transaction, a lost database translated."""
        if self._pool is None:
            raise RuntimeError("the journal is not open")
        with self._reaching():
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        if self._pool is None:
            raise RuntimeError("the journal is not open")
        with self._reaching():
            rows: list[Any] = await self._pool.fetch(sql, *args)
        return rows

    async def out_dir(self) -> str | None:
        """The output folder the batch's first run recorded (workers may use others)."""
        rows = await self._fetch("SELECT out_dir FROM apimart_batches WHERE name = $1",
                                 self.batch)
        return rows[0]["out_dir"] if rows else None

    async def set_out_dir(self, folder: str) -> None:
        """Record the output folder (informative: each worker downloads to its own)."""
        await self._fetch("UPDATE apimart_batches SET out_dir = $2 WHERE name = $1",
                          self.batch, folder)

    async def folders(self) -> dict[str, str]:
        """The folder each downloaded item's video is in, by key."""
        rows = await self._fetch(
            "SELECT key, folder FROM apimart_items WHERE batch = $1 AND folder IS NOT NULL",
            self.batch)
        return {row["key"]: row["folder"] for row in rows}

    async def load(self) -> dict[str, JournalRow]:
        """Every item of the batch, by key, in input order."""
        rows = await self._fetch(
            f"SELECT {', '.join(_COLUMNS)} FROM apimart_items "  # noqa: S608
            "WHERE batch = $1 ORDER BY position, key", self.batch)
        return {row["key"]: _row(row) for row in rows}

    async def add(self, rows: Iterable[tuple[int, JournalRow]]) -> None:
        """Enqueue items idempotently: a key already recorded is left as it is."""
        values = [(self.batch, r.key, position, r.name, r.request, r.idempotency_key,
                   r.state.value, r.path) for position, r in rows]
        if not values or self._pool is None:
            return
        with self._reaching():
            async with self._pool.acquire() as conn:
                await conn.executemany(
                    "INSERT INTO apimart_items (batch, key, position, name, request, "
                    "idempotency_key, state, path) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                    "ON CONFLICT (batch, key) DO NOTHING", values)

    async def update(self, key: str, state: ItemState, **fields: Any) -> None:
        """Move item `key` to `state` (unfenced: for a process that is no worker)."""
        await self._set(None, key, state, fields)

    async def release_path(self, key: str, state: ItemState) -> None:
        """Forget item `key`'s file."""
        await self.update(key, state, path=None, size=None, sha256=None)

    async def enforce_unique_paths(self) -> None:
        """Nothing to do: file names derive from unique keys."""

    # -- the fleet -------------------------------------------------------------------------

    def _me(self) -> int:
        if self.worker is None:
            raise RuntimeError("not registered as a worker")
        return self.worker

    def _fenced(self) -> WorkerFencedError:
        return WorkerFencedError(self._me(), self.label)

    async def register(self) -> int:
        """Join the batch as a worker; returns its id (its fencing token)."""
        rows = await self._fetch(
            "INSERT INTO apimart_workers (batch, host, pid, lease) VALUES ($1, $2, $3, $4) "
            "RETURNING id", self.batch, socket.gethostname(), os.getpid(), self.lease)
        self.worker = int(rows[0]["id"])
        return self.worker

    async def heartbeat(self) -> None:
        """Renew the lease, or raise `WorkerFencedError` if it has run out."""
        rows = await self._fetch(
            "UPDATE apimart_workers SET heartbeat = clock_timestamp() WHERE id = $1 "
            "AND NOT dead AND heartbeat > clock_timestamp() - make_interval(secs => lease) "
            "RETURNING id", self._me())
        if not rows:
            raise self._fenced()

    async def leave(self, reason: str) -> None:
        """Leave the fleet: items this worker follows lose their owner (adoptable); one
        it was still submitting (stopped at once) may exist: ambiguous, like a death."""
        me = self._me()
        await self._fetch(
            "WITH gone AS (UPDATE apimart_workers SET dead = true, dead_reason = $2 "
            "WHERE id = $1 AND NOT dead RETURNING id), "
            "lost AS (UPDATE apimart_items SET state = 'ambiguous', worker = NULL, "
            "updated = now(), error = 'may exist and be billed: worker ' || worker || "
            "' stopped while submitting it; to send it again, run with "
            "--resubmit-ambiguous', error_record = NULL "
            "WHERE worker IN (SELECT id FROM gone) AND state = 'submitting') "
            "UPDATE apimart_items SET worker = NULL, updated = now() "
            "WHERE worker IN (SELECT id FROM gone) AND state IN ('submitted', 'completed')",
            me, reason)

    async def reap(self) -> list[int]:
        """Declare dead every worker of the batch whose heartbeat is older than its lease:
        its submitting items become ambiguous, its submitted and completed items lose their
        owner. Returns the ids declared dead."""
        rows = await self._fetch(
            f"WITH me AS ({_ALIVE}), "  # noqa: S608
            "dead AS (UPDATE apimart_workers SET dead = true, dead_reason = "
            "'heartbeat older than its lease (declared dead by worker ' || $1 || ')' "
            "WHERE batch = $2 AND NOT dead AND id <> $1 AND EXISTS (SELECT 1 FROM me) "
            "AND heartbeat < clock_timestamp() - make_interval(secs => lease) RETURNING id), "
            "lost AS (UPDATE apimart_items SET state = 'ambiguous', worker = NULL, "
            "updated = now(), error = 'may exist and be billed: worker ' || worker || "
            "' died while submitting it; to send it again, run with --resubmit-ambiguous', "
            "error_record = NULL "
            "WHERE worker IN (SELECT id FROM dead) AND state = 'submitting' RETURNING key), "
            "freed AS (UPDATE apimart_items SET worker = NULL, updated = now() "
            "WHERE worker IN (SELECT id FROM dead) AND state <> 'submitting' RETURNING key) "
            "SELECT id, (SELECT array_agg(key) FROM lost) AS lost, (SELECT count(*) FROM "
            "freed) AS freed FROM dead", self._me(), self.batch)
        self.lost_keys = sorted({key for row in rows for key in (row["lost"] or ())})
        return [int(row["id"]) for row in rows]

    async def resubmit_ambiguous(self) -> int:
        """Put the batch's ambiguous items back in line (asked for explicitly only)."""
        rows = await self._fetch(
            "UPDATE apimart_items SET state = 'pending', worker = NULL, updated = now() "
            "WHERE batch = $1 AND state = 'ambiguous' RETURNING key", self.batch)
        return len(rows)

    async def claim(self, reserve: Reserve | None = None) -> Claimed | None:
        """Take the first pending item (skipping those other workers are taking) and mark
        it submitting, committed before the caller sends it. None when nothing is
        pending or the fleet is stopped; `WorkerFencedError` when this worker is dead.

        `reserve`, if given, runs inside the claiming transaction, holding the item's row
        lock, with the connection and the item: the place for a fleet-wide spend cap
        (#10's `SpendBudget`: lock its row ``FOR UPDATE``, `from_state`, `reserve`,
        write `to_state`). False leaves the item pending; an exception rolls it all back.
        """
        if reserve is None:
            rows = await self._fetch(
                f"WITH me AS ({_ALIVE}), "  # noqa: S608
                f"next AS ({_NEXT}) "
                "UPDATE apimart_items i SET state = 'submitting', worker = $1, "
                "updated = now(), error = NULL, error_record = NULL FROM next "
                "WHERE i.batch = $2 AND i.key = next.key "
                f"RETURNING i.position, {', '.join('i.' + c for c in _COLUMNS)}",
                self._me(), self.batch)
            if rows:
                return Claimed(row=_row(rows[0]), position=int(rows[0]["position"]))
            await self._check_alive()
            return None
        if self._pool is None:
            raise RuntimeError("the journal is not open")
        async with self._transaction() as conn:
            found = await conn.fetchrow(
                f"WITH me AS ({_ALIVE}) "  # noqa: S608
                f"SELECT position, {', '.join(_COLUMNS)} FROM apimart_items WHERE key = "
                f"(SELECT key FROM ({_NEXT}) AS next)  AND batch = $2",
                self._me(), self.batch)
            if found is not None:
                row = _row(found)
                if not await reserve(conn, row):
                    return None
                await conn.execute(
                    "UPDATE apimart_items SET state = 'submitting', worker = $1, "
                    "updated = now(), error = NULL, error_record = NULL "
                    "WHERE batch = $2 AND key = $3", self._me(), self.batch, row.key)
                return Claimed(row=attrs.evolve(row, state=ItemState.SUBMITTING,
                                                error=None, error_record=None),
                               position=int(found["position"]))
        await self._check_alive()
        return None

    async def adopt(self, limit: int = 100) -> list[JournalRow]:
        """Take up to `limit` submitted or completed items that nobody follows."""
        rows = await self._fetch(
            f"WITH me AS ({_ALIVE}), "  # noqa: S608
            "orphans AS (SELECT key FROM apimart_items WHERE batch = $2 AND worker IS NULL "
            "AND state IN ('submitted', 'completed') AND error IS NULL "
            "AND EXISTS (SELECT 1 FROM me) "
            "ORDER BY position LIMIT $3 FOR UPDATE SKIP LOCKED) "
            "UPDATE apimart_items i SET worker = $1, updated = now() FROM orphans "
            "WHERE i.batch = $2 AND i.key = orphans.key "
            f"RETURNING {', '.join('i.' + c for c in _COLUMNS)}",
            self._me(), self.batch, limit)
        if not rows:
            await self._check_alive()
        return [_row(row) for row in rows]

    async def release(self, key: str) -> None:
        """Fenced: stop following item `key` (kept with its error: not adopted again by
        this fleet; a later run retries it, see `retry_downloads`)."""
        rows = await self._fetch(
            f"WITH me AS ({_ALIVE}) "  # noqa: S608
            "UPDATE apimart_items SET worker = NULL, updated = now() WHERE batch = $2 "
            "AND key = $3 AND worker = $1 AND EXISTS (SELECT 1 FROM me) RETURNING key",
            self._me(), self.batch, key)
        if not rows:
            raise self._fenced()

    async def retry_downloads(self) -> None:
        """A new run: items a worker gave up following (polls failing, a download
        failing, an account failure) are adoptable again."""
        await self._fetch(
            "UPDATE apimart_items SET error = NULL, error_record = NULL, updated = now() "
            "WHERE batch = $1 AND worker IS NULL AND state IN ('submitted', 'completed') "
            "AND error IS NOT NULL", self.batch)

    async def progress(self) -> tuple[int, int]:
        """(pending items, items some worker still has to finish): the fleet is done
        when nothing is pending and nothing is active."""
        row = (await self._fetch(
            "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, "
            "count(*) FILTER (WHERE state = 'submitting' OR (state IN ('submitted', "
            "'completed') AND (worker IS NOT NULL OR error IS NULL))) AS active "
            "FROM apimart_items WHERE batch = $1", self.batch))[0]
        return int(row["pending"]), int(row["active"])

    async def _check_alive(self) -> None:
        rows = await self._fetch(
            "SELECT 1 FROM apimart_workers WHERE id = $1 AND NOT dead "
            "AND heartbeat > clock_timestamp() - make_interval(secs => lease)", self._me())
        if not rows:
            raise self._fenced()

    async def write(self, key: str, state: ItemState, **fields: Any) -> None:
        """Fenced: move an item this worker holds to `state`, setting `fields`; raises
        `WorkerFencedError` if this worker is dead or no longer holds it."""
        await self._set(self._me(), key, state, fields)

    async def _set(self, worker: int | None, key: str, state: ItemState,
                   fields: dict[str, Any]) -> None:
        unknown = set(fields) - _WRITABLE
        if unknown:
            raise ValueError(f"unknown journal columns: {sorted(unknown)}")
        names = list(fields)
        assignments = ["state = $3", "updated = now()",
                       *(f"{name} = ${i + 5}" for i, name in enumerate(names))]
        # A worker's item leaves it once it is final: nobody follows it any more.
        final = state in (ItemState.DOWNLOADED, ItemState.FAILED, ItemState.AMBIGUOUS,
                          ItemState.PENDING)
        if final:
            assignments.append("worker = NULL")
        if worker is None:
            sql = (f"UPDATE apimart_items SET {', '.join(assignments)} "  # noqa: S608
                   "WHERE batch = $1 AND key = $2 AND $4::bigint IS NULL RETURNING key")
        else:
            sql = (f"WITH me AS ({_ALIVE.replace('$1', '$4')}) "  # noqa: S608
                   f"UPDATE apimart_items SET {', '.join(assignments)} "
                   "WHERE batch = $1 AND key = $2 AND worker = $4 "
                   "AND EXISTS (SELECT 1 FROM me) RETURNING key")
        rows = await self._fetch(sql, self.batch, key, state.value, worker,
                                 *(fields[n] for n in names))
        if not rows and worker is not None:
            raise self._fenced()

    async def refetch_missing(self, folder: str, root: Path) -> list[str]:
        """Items downloaded into `folder` (resolved; it is `root`) whose file, or one of
        their other outputs' files, is missing or changed size: back to completed,
        ownerless, so a worker downloads them again (a changed file is kept: the new one
        takes the next free name). Returns their keys."""
        rows = await self._fetch(
            "SELECT key, path, size, outputs FROM apimart_items WHERE batch = $1 "
            "AND state = 'downloaded' AND folder = $2", self.batch, folder)

        def intact(row: Any) -> bool:
            files = [(row["path"], row["size"])]
            files += [(o["path"], o["size"]) for o in json.loads(row["outputs"] or "[]")]
            for name, size in files:
                try:
                    if not name or (root / name).stat().st_size != size:
                        return False
                except OSError:
                    return False
            return True

        gone = await anyio.to_thread.run_sync(
            lambda: [str(row["key"]) for row in rows if not intact(row)])
        if gone:
            await self._fetch(
                "UPDATE apimart_items SET state = 'completed', worker = NULL, error = NULL, "
                "error_record = NULL, updated = now() WHERE batch = $1 AND key = ANY($2) "
                "AND state = 'downloaded'", self.batch, gone)
        return gone

    async def record_late_task_id(self, key: str, task_id: str) -> None:
        """Unfenced, append-only: a task id this (fenced) worker received for item `key`
        after losing its lease. The item is ambiguous by then (nobody sends it again
        without `--resubmit-ambiguous`), and the task id proves it was created, so a live
        worker adopts it as submitted (`adopt_late`)."""
        await self._fetch(
            "INSERT INTO apimart_late_task_ids (batch, key, task_id, worker) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            self.batch, key, task_id, self.worker)

    async def adopt_late(self) -> list[str]:
        """Ambiguous items whose task id a fenced worker recorded late become submitted
        with that task (ownerless, for any live worker to adopt). Returns their keys."""
        rows = await self._fetch(
            "UPDATE apimart_items i SET state = 'submitted', task_id = l.task_id, "
            "worker = NULL, error = NULL, error_record = NULL, updated = now() "
            "FROM (SELECT DISTINCT ON (key) key, task_id FROM apimart_late_task_ids "
            "WHERE batch = $1 ORDER BY key, recorded) AS l "
            "WHERE i.batch = $1 AND i.key = l.key AND i.state = 'ambiguous' RETURNING i.key",
            self.batch)
        return [str(row["key"]) for row in rows]

    async def stop_fleet(self, reason: str, record: str | None) -> None:
        """Record an account failure on the batch: every worker stops claiming."""
        await self._fetch(
            "UPDATE apimart_batches SET stopped = $2, stopped_record = $3 "
            "WHERE name = $1 AND stopped IS NULL", self.batch, reason, record)

    async def clear_stop(self) -> None:
        """A new run after fixing the account: claiming resumes."""
        await self._fetch(
            "UPDATE apimart_batches SET stopped = NULL, stopped_record = NULL WHERE name = $1",
            self.batch)

    async def stopped(self) -> tuple[str, str | None] | None:
        """The account failure that stopped the fleet (text, typed record), if any."""
        rows = await self._fetch(
            "SELECT stopped, stopped_record FROM apimart_batches WHERE name = $1", self.batch)
        if rows and rows[0]["stopped"] is not None:
            return str(rows[0]["stopped"]), rows[0]["stopped_record"]
        return None

    async def counts(self) -> dict[str, int]:
        """Items of the batch by state."""
        rows = await self._fetch(
            "SELECT state, count(*) AS n FROM apimart_items WHERE batch = $1 GROUP BY state",
            self.batch)
        return {row["state"]: int(row["n"]) for row in rows}

    # -- the fleet's spend cap -------------------------------------------------------------

    async def start_budget(
        self, cap: float, used: float, item_cost: float | None = None
    ) -> SpendBudget:
        """The batch's spend budget (one row, shared by every worker): created with
        `cap` and the balance's `used` now, else the recorded one with its cap set to
        `cap` (the latest run's cap holds for the whole batch), and its known price per
        item set to `item_cost` when given (likewise)."""
        if self._pool is None:
            raise RuntimeError("the journal is not open")
        async with self._transaction() as conn:
            text = await conn.fetchval(
                "SELECT state FROM apimart_budgets WHERE batch = $1 FOR UPDATE", self.batch)
            if text is None:
                budget = SpendBudget(cap, start_used=used, item_cost=item_cost)
            else:
                budget = SpendBudget.from_state(json.loads(text))
                budget.cap = float(cap)
                if item_cost is not None:
                    budget.item_cost = item_cost
            await conn.execute(
                "INSERT INTO apimart_budgets VALUES ($1, $2) ON CONFLICT (batch) DO UPDATE "
                "SET state = EXCLUDED.state", self.batch, json.dumps(budget.to_state()))
        return budget

    async def with_budget(self, change: Callable[[SpendBudget], T], conn: Any = None) -> T:
        """Apply `change` to the batch's budget under its row lock (in `conn`'s
        transaction when given: a claim's), and store it back."""
        if conn is None:
            if self._pool is None:
                raise RuntimeError("the journal is not open")
            async with self._transaction() as own:
                return await self.with_budget(change, own)
        text = await conn.fetchval(
            "SELECT state FROM apimart_budgets WHERE batch = $1 FOR UPDATE", self.batch)
        if text is None:
            raise RuntimeError("the batch has no spend budget (start_budget)")
        budget = SpendBudget.from_state(json.loads(text))
        result = change(budget)
        await conn.execute("UPDATE apimart_budgets SET state = $2 WHERE batch = $1",
                           self.batch, json.dumps(budget.to_state()))
        return result

    async def budget(self) -> SpendBudget | None:
        """The batch's spend budget as recorded, if it has one."""
        rows = await self._fetch("SELECT state FROM apimart_budgets WHERE batch = $1",
                                 self.batch)
        return SpendBudget.from_state(json.loads(rows[0]["state"])) if rows else None

    # -- the key's shared rate -------------------------------------------------------------

    async def set_rate(self, fingerprint: str, rps: float) -> None:
        """Record the key's rate (the latest worker's `--rps` wins)."""
        await self._fetch(
            "INSERT INTO apimart_rates (fingerprint, base_interval_s, interval_s) "
            "VALUES ($1, $2, $2) ON CONFLICT (fingerprint) DO UPDATE SET "
            "base_interval_s = EXCLUDED.base_interval_s, "
            "interval_s = GREATEST(apimart_rates.interval_s, EXCLUDED.base_interval_s)",
            fingerprint, 1.0 / rps)

    async def take_slot(self, fingerprint: str) -> float:
        """Take the key's next send slot (GCRA): the seconds until it is due. A slot in
        the past is never handed out: an idle key starts again from now, no burst. A
        rate lowered by 429s recovers by 1 % per slot, up to the one given."""
        rows = await self._fetch(
            "UPDATE apimart_rates SET slot = GREATEST(tat, clock_timestamp()), "  # noqa: S608
            "tat = GREATEST(tat, clock_timestamp()) + make_interval(secs => interval_s), "
            f"interval_s = GREATEST(base_interval_s, interval_s * {_RECOVERY}) "
            "WHERE fingerprint = $1 RETURNING "
            "EXTRACT(EPOCH FROM (slot - clock_timestamp()))::float8 AS wait", fingerprint)
        if not rows:
            raise RuntimeError("the key's rate is not recorded (set_rate)")
        return max(0.0, float(rows[0]["wait"]))

    async def push_back(self, fingerprint: str, seconds: float) -> None:
        """A 429 met by any worker: the key's next slot is at least `seconds` away, and
        its rate halves for every worker, once per `seconds` (the other 429s of the
        same burst are the same news)."""
        await self._fetch(
            "UPDATE apimart_rates SET tat = GREATEST(tat, clock_timestamp() "  # noqa: S608
            "+ make_interval(secs => $2)), "
            "interval_s = CASE WHEN decreased < clock_timestamp() - make_interval(secs => $2) "
            f"THEN LEAST(interval_s * 2, {_SLOWEST}) ELSE interval_s END, "
            "decreased = CASE WHEN decreased < clock_timestamp() - make_interval(secs => $2) "
            "THEN clock_timestamp() ELSE decreased END "
            "WHERE fingerprint = $1", fingerprint, seconds)

    async def rate(self, fingerprint: str) -> float | None:
        """The key's current shared rate (requests/s), if recorded."""
        rows = await self._fetch(
            "SELECT interval_s FROM apimart_rates WHERE fingerprint = $1", fingerprint)
        return 1.0 / float(rows[0]["interval_s"]) if rows else None


async def fleet_status(url: str, batch: str | None) -> dict[str, Any]:
    """What `apimart-async journal status` shows: per batch, counts by state, workers
    (alive or dead, heartbeat age on the server's clock), the ambiguous items."""
    import asyncpg

    if batch is not None:
        _check_batch(batch)
    try:
        conn = await asyncpg.connect(url, statement_cache_size=0, timeout=CONNECT_TIMEOUT)
    except (asyncio.TimeoutError, TimeoutError):
        raise _no_answer(url) from None
    try:
        tables = await conn.fetchval("SELECT to_regclass('apimart_items') IS NOT NULL")
        version = None
        if tables:
            version = await conn.fetchval(
                "SELECT value FROM apimart_meta WHERE name = 'schema_version'")
            _refuse_newer(url, version)
        known: Sequence[str] = [r["name"] for r in await conn.fetch(
            "SELECT name FROM apimart_batches ORDER BY created, name")] if tables else []
        names: Sequence[str]
        if batch is None:
            names = known
        elif batch in known:
            names = [batch]
        else:
            raise ValidationError(
                "batch", f"no batch {batch!r} in {url_label(url)} (batches: "
                f"{', '.join(map(repr, known)) or 'none'})")
        if not tables:
            return {"journal": url_label(url), "schema_version": None, "batches": []}
        out = []
        for name in names:
            info = await conn.fetchrow(
                "SELECT stopped, out_dir FROM apimart_batches WHERE name = $1", name)
            counts = {r["state"]: int(r["n"]) for r in await conn.fetch(
                "SELECT state, count(*) AS n FROM apimart_items WHERE batch = $1 "
                "GROUP BY state ORDER BY state", name)}
            workers = [
                {"id": int(r["id"]), "host": r["host"], "pid": int(r["pid"]),
                 "alive": bool(r["alive"]), "heartbeat_age_s": round(float(r["age"]), 3),
                 "lease_s": float(r["lease"]), "dead_reason": r["dead_reason"],
                 "items": int(r["items"])}
                for r in await conn.fetch(
                    "SELECT w.id, w.host, w.pid, w.lease, w.dead_reason, "
                    "NOT w.dead AND w.heartbeat > clock_timestamp() "
                    "- make_interval(secs => w.lease) AS alive, "
                    "EXTRACT(EPOCH FROM clock_timestamp() - w.heartbeat)::float8 AS age, "
                    "(SELECT count(*) FROM apimart_items i WHERE i.worker = w.id) AS items "
                    "FROM apimart_workers w WHERE w.batch = $1 ORDER BY w.id", name)
            ]
            ambiguous = [
                {"key": r["key"], "name": r["name"], "reason": r["error"]}
                for r in await conn.fetch(
                    "SELECT key, name, error FROM apimart_items WHERE batch = $1 "
                    "AND state = 'ambiguous' ORDER BY position", name)
            ]
            budget_text = await conn.fetchval(
                "SELECT state FROM apimart_budgets WHERE batch = $1", name)
            spend = None
            if budget_text is not None:
                budget = SpendBudget.from_state(json.loads(budget_text))
                spend = {"cap": budget.cap, "spent": budget.spent,
                         "reserved": budget.committed - budget.spent,
                         "in_flight": budget.in_flight}
            out.append({
                "batch": name, "exists": info is not None, "spend": spend,
                "stopped": None if info is None else info["stopped"],
                "counts": counts, "total": sum(counts.values()),
                "workers": workers, "ambiguous": ambiguous,
            })
        return {"journal": url_label(url), "schema_version": version, "batches": out,
                "time": time.time()}
    finally:
        await conn.close()
