"""A 401/402/403 in a batch is the headline: the items it stopped stay pending and resume."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from apimart_async import (
    AuthenticationError,
    InsufficientBalanceError,
    PermissionDeniedError,
    VideoRequest,
)
from apimart_async._batch.journal import ItemState
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio
JOURNAL = ".apimart-journal.sqlite3"


def reqs(n: int) -> list[VideoRequest]:
    return [VideoRequest(f"scene {i}", duration=5) for i in range(n)]


def journal_states(out: Path) -> list[str]:
    with sqlite3.connect(out / JOURNAL) as conn:
        return [row[0] for row in conn.execute("SELECT state FROM items ORDER BY position")]


async def test_balance_exhausted_mid_batch_leaves_the_rest_pending_and_resumes(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(balance=2))
    async with session_for(server, max_concurrency=1) as s:
        report = await s.run_batch(reqs(5), out_dir=tmp_path)
    assert isinstance(report.account_error, InsufficientBalanceError)
    assert report.account_error.status == 402
    assert report.completed == 2
    assert [i.state for i in report.items].count(ItemState.PENDING) == 3
    assert journal_states(tmp_path).count("pending") == 3
    assert server.stats.submissions == 2

    server.emulator.set_balance(10)  # topped up
    async with session_for(server, max_concurrency=1) as s:
        again = await s.run_batch(reqs(5), out_dir=tmp_path)
    assert again.ok and again.account_error is None
    assert server.stats.submissions == 5 and server.stats.duplicate_submissions == 0


async def test_permission_denied_is_an_account_failure_not_a_failed_item(
    server: EmulatorServer, tmp_path: Path
) -> None:
    server.emulator.inject("submit", Fault.http(403))
    async with session_for(server, max_concurrency=1) as s:
        report = await s.run_batch(reqs(3), out_dir=tmp_path)
    assert isinstance(report.account_error, PermissionDeniedError)
    # Nothing was created: a re-run with the permission granted submits them all.
    assert [i.state for i in report.items] == [ItemState.PENDING] * 3
    async with session_for(server, max_concurrency=1) as s:
        again = await s.run_batch(reqs(3), out_dir=tmp_path)
    assert again.ok and server.stats.submissions == 3


async def test_key_rejected_while_polling_keeps_the_paid_tasks_for_a_rerun(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(duration=(40, 60)))
    # Every poll of the first run is refused, as if the key were revoked after submitting.
    server.emulator.inject("task", *[Fault.http(401)] * 2)
    async with session_for(server) as s:
        report = await s.run_batch(reqs(2), out_dir=tmp_path)
    assert isinstance(report.account_error, AuthenticationError)
    assert [i.state for i in report.items] == [ItemState.SUBMITTED] * 2
    assert all(i.task_id for i in report.items)

    server.emulator.complete_all()
    async with session_for(server) as s:
        again = await s.run_batch(reqs(2), out_dir=tmp_path)
    assert again.ok
    assert server.stats.submissions == 2 and server.stats.duplicate_submissions == 0
