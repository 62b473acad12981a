"""`JournalStore`: what the batch runner needs from a journal, whatever keeps it.

The SQLite file (`journal.Journal`, the embedded default) provides it. The PostgreSQL
journal (`pg.PgJournal`) records the same rows (`JournalRow`) moving through the same
states (`ItemState`) and provides the item part (label to enforce_unique_paths), but a
fleet is driven by `fleet.run_worker`, not by the runner: claims, fenced writes and
adoption have no place in a single run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from .journal import FileRow, ItemState, JournalRow

__all__ = ["JournalStore"]


class JournalStore(Protocol):
    """A batch's durable record: one row per item, written before and after each step."""

    @property
    def label(self) -> str:
        """How messages name this journal (a path; a URL without its password)."""

    @property
    def folder(self) -> Path | None:
        """The folder a journal file sits in (it moves with its output folder), else None."""

    def sidecar(self, suffix: str) -> Path | None:
        """A file beside the journal (``JOURNAL + suffix``), or None for a server."""

    async def out_dir(self) -> str | None:
        """The resolved output folder the journal's file names are in, if recorded."""

    async def set_out_dir(self, folder: str) -> None:
        """Record the resolved output folder."""

    async def load(self) -> dict[str, JournalRow]:
        """Every recorded item, by key, in input order."""

    async def add(self, rows: Iterable[tuple[int, JournalRow]]) -> None:
        """Record new items, each with its input position."""

    async def update(self, key: str, state: ItemState, **fields: Any) -> None:
        """Move item `key` to `state`, setting the given columns too."""

    async def release_path(self, key: str, state: ItemState) -> None:
        """Forget item `key`'s file: it takes a new one."""

    async def enforce_unique_paths(self) -> None:
        """Once shared paths are resolved, refuse two rows with one file."""

    async def spent(self) -> float:
        """What runs of this batch spent so far, as recorded (0 if never recorded)."""

    async def set_spent(self, amount: float) -> None:
        """Record what runs of this batch spent so far."""

    async def load_files(self) -> dict[str, dict[int, FileRow]]:
        """Every recorded output after the first, by item key, then output index."""

    async def set_file(
        self, key: str, index: int, path: str, *, size: int | None = None,
        sha256: str | None = None,
    ) -> None:
        """Record output `index` (from 1) of item `key`: claimed, or whole on disk."""

    async def release_file(self, key: str, index: int) -> None:
        """Forget output `index` of item `key`'s file (it takes a new one)."""

    async def meta(self, name: str) -> str | None:
        """A bookkeeping value (the spend ledger's), None if absent."""

    async def set_meta(self, name: str, value: str | None) -> None:
        """Set (None: delete) a bookkeeping value."""
