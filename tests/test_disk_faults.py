"""Disk and journal faults never strand a paid task (#12 item 4), against the real CLI
and the emulator: a journal that is not ours is refused in one line before anything is
sent. What each case simulates is said where it is built (we run as root here, so
permission bits cannot make a file unreadable: those cases are not simulated).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from apimart_async.testing import EmulatorServer

from .conftest import cli

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30), pytest.mark.usefixtures("cli_env")]


def _corrupt(path: Path) -> None:
    # A torn or overwritten journal: the SQLite header, then garbage pages.
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)


def _text(path: Path) -> None:
    path.write_text("not a database\n" * 50)  # --journal pointed at the wrong file


def _foreign(path: Path) -> None:
    # Another program's database: we must not add our tables to it.
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    conn.close()


def _foreign_items(path: Path) -> None:
    # A table named like ours, with other columns.
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (a, b)")
    conn.close()


def _directory(path: Path) -> None:
    path.mkdir()


JOURNALS = {
    "corrupt": (_corrupt, "is not an SQLite database"),
    "text": (_text, "is not an SQLite database"),
    "foreign": (_foreign, "is not an apimart-async journal (its tables: users)"),
    "foreign_items": (_foreign_items, "is not an apimart-async journal (its tables: items)"),
    "directory": (_directory, "is a directory"),
}


@pytest.mark.parametrize("case", sorted(JOURNALS))
async def test_a_journal_that_is_not_ours_is_refused_in_one_line_before_sending(
    server: EmulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    make, expected = JOURNALS[case]
    journal = tmp_path / "j.sqlite3"
    make(journal)
    before = journal.read_bytes() if journal.is_file() else None
    batch = tmp_path / "b.txt"
    batch.write_text("a fox\n")
    status, _, err = await cli(capsys, "batch", str(batch), "--out", str(tmp_path / "out"),
                               "--journal", str(journal), "--base-url", server.base_url)
    assert status == 2, err
    assert expected in err and str(journal) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert server.stats.submissions == 0
    if before is not None:
        assert journal.read_bytes() == before  # left exactly as it was
