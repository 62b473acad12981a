"""Disk and journal faults never strand a paid task (#12 item 4), against the real CLI
and the emulator: a journal that is not ours is refused in one line before anything is
sent. What each case simulates is said where it is built (we run as root here, so
permission bits cannot make a file unreadable: those cases are not simulated).
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import anyio
import pytest

from apimart_async.testing import EmulatorConfig, EmulatorServer

from .conftest import MakeServer, cli
from .test_cli_batch import env

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


# A full disk while a video is written. Simulated with RLIMIT_FSIZE in the child CLI
# process (writes past the limit fail with EFBIG, "File too large", once SIGXFSZ is
# ignored): the same code path as ENOSPC or EROFS on the .part file, without root
# tricks. The journal stays far below the limit; the 1 MiB video does not fit.
_LIMITED = (
    "import resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))\n"
    "from apimart_async._cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


async def test_a_full_disk_is_reported_as_such_never_retried_as_a_network_error(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(video_size=1 << 20, duration=(1, 1)))
    batch = tmp_path / "b.txt"
    batch.write_text("a fox\n")
    with anyio.fail_after(25):
        done = await anyio.run_process(
            [sys.executable, "-c", _LIMITED, "batch", str(batch), "--out", str(tmp_path / "out"),
             "--base-url", server.base_url],
            env=env(), check=False,
        )
    text = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 1, text
    assert "File too large (EFBIG)" in text and "connection failed" not in text, text
    assert "Traceback" not in text, text
    # One attempt: a disk error is not the network's, so it is not retried.
    assert server.stats.requests["download"] == 1, text
    assert server.stats.submissions == 1


async def test_an_output_folder_that_cannot_be_written_fails_before_anything_is_paid(
    server: EmulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Simulated with an --out below a regular file (ENOTDIR): portable, and unlike a
    # chmod it holds for root. The journal is elsewhere, and writable.
    (tmp_path / "a-file").write_text("x")
    batch = tmp_path / "b.txt"
    batch.write_text("a fox\n")
    status, _, err = await cli(capsys, "batch", str(batch), "--out",
                               str(tmp_path / "a-file" / "out"), "--journal",
                               str(tmp_path / "j.sqlite3"), "--base-url", server.base_url)
    assert status == 1, err
    assert "ENOTDIR" in err and err.count("\n") == 1
    assert server.stats.submissions == 0
