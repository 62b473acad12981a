"""A journal write that fails after a task was created (#12 item 4): submission stops
at once, and the task id is printed and saved to a recovery file next to the journal.

The failure is real, not patched in: another writer takes the journal's SQLite write
lock (``BEGIN IMMEDIATE`` on its own connection) from `on_change` as the first item is
journaled "submitting", i.e. before its POST goes out. The task is created; its
"submitted" write then fails with "database is locked" after the journal's 5-s busy
timeout. Deterministic: the lock is taken at a known point of the run, no timing race.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
import pytest

from apimart_async import ItemResult, ItemState, JournalWriteError, VideoRequest
from apimart_async._cli.main import explain
from apimart_async.testing import EmulatorServer

from .conftest import session_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(40)]


async def test_a_failed_journal_write_after_paying_stops_and_saves_the_task_id(
    server: EmulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "batch.journal"
    other: list[sqlite3.Connection] = []

    def on_change(result: ItemResult) -> None:
        if result.state is ItemState.SUBMITTING and not other:
            conn = sqlite3.connect(journal, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")  # held until the run ends
            other.append(conn)

    requests = [VideoRequest(f"video {i}") for i in range(3)]
    try:
        # One request at a time: items 2 and 3 wait at the gate when the write fails.
        async with session_for(server, max_concurrency=1) as s:
            with anyio.fail_after(30), pytest.raises(JournalWriteError) as caught:
                await s.run_batch(requests, out_dir=tmp_path / "out", journal=journal,
                                  on_change=on_change)
    finally:
        for conn in other:
            conn.close()
    assert other, "the lock was never taken"
    # Stopped at once: the one task created is the only one paid for.
    assert server.stats.submissions == 1
    (task,) = server.emulator.tasks.values()
    error = caught.value
    assert error.task_ids == (task.id,)
    recovery = tmp_path / "batch.journal.recovered-task-ids"
    assert error.recovery_file == str(recovery)
    assert isinstance(error.__cause__, sqlite3.OperationalError)
    (line,) = recovery.read_text().splitlines()
    record = json.loads(line)
    assert record["task_id"] == task.id
    assert record["idempotency_key"] == task.idempotency_key
    assert record["item_key"].startswith("req:") and record["time"] > 0
    err = capsys.readouterr().err
    printed = [ln for ln in err.splitlines() if task.id in ln]
    assert len(printed) == 1 and task.idempotency_key in printed[0], err
    status, message = explain(error)
    assert status == 1 and str(recovery) in message and "submission stopped" in message
