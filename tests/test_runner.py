"""run_batch and its journal: durable, resumable, never paying twice."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from apimart_async import Session, ValidationError, VideoRequest
from apimart_async._batch.journal import ItemState
from apimart_async._batch.runner import BatchItem, ItemResult
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, TaskPlan, video_bytes

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio


def reqs(n: int) -> list[VideoRequest]:
    return [VideoRequest(f"scene {i}", duration=5) for i in range(n)]


def journal_states(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, state FROM items").fetchall())


def assert_files_correct(report: Any) -> None:
    for item in report.items:
        assert item.ok, item
        data = item.path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == item.sha256
        assert data == video_bytes(item.task_id, len(data))


async def test_batch_through_faults_ends_with_every_file(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(seed=7))
    emu = server.emulator
    emu.inject("submit", Fault.http(429, retry_after="1"), Fault.http(503), Fault.http(429))
    emu.inject("task", Fault.http(500), Fault.reset(), Fault.html(200), Fault.http(502))
    emu.inject("download", Fault.cut(0.4), Fault.cut(0.2), Fault.ignore_range())
    async with session_for(server) as s:
        report = await s.run_batch(reqs(20), out_dir=tmp_path)
    assert report.ok and report.completed == 20 and report.failed == report.ambiguous == 0
    assert_files_correct(report)
    assert report.bytes_downloaded == 20 * 64 * 1024
    assert all(emu.pending_faults(route) == 0 for route in ("submit", "task", "download"))
    # 7 failed API answers; aiohttp itself repeats the GET whose connection was reset.
    assert report.rate_limited == 2 and report.retries >= 6
    assert server.stats.submissions == 20 and server.stats.duplicate_submissions == 0
    assert server.stats.credential_leaks == 0
    assert set(journal_states(report.journal).values()) == {"downloaded"}
    # Nothing but the videos and the journal in the output directory.
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == sorted(i.path.name for i in report.items if i.path)
    # The prompt's slug, then a digest of the request.
    assert [re.fullmatch(r"scene-(\d+)-[0-9a-f]{10}\.mp4", i.path.name) is not None
            for i in report.items if i.path] == [True] * 20


async def test_rerun_submits_nothing_again(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server) as s:
        first = await s.run_batch(reqs(8), out_dir=tmp_path)
        again = await s.run_batch(reqs(8), out_dir=tmp_path)
    assert first.ok and again.ok
    assert server.stats.submissions == 8 and server.stats.downloads == 8
    assert [i.path for i in again.items] == [i.path for i in first.items]


class Crash(Exception):
    pass


async def test_crash_after_submission_resumes_without_paying_twice(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(duration=(50, 60)))
    submitted: set[int] = set()

    def crash_when_all_submitted(result: ItemResult) -> None:
        if result.state is ItemState.SUBMITTED:
            submitted.add(result.index)
            if len(submitted) == 10:
                raise Crash

    async with session_for(server) as s:
        with pytest.raises(Crash):  # as itself, not in an ExceptionGroup
            await s.run_batch(reqs(10), out_dir=tmp_path, on_change=crash_when_all_submitted)
    assert set(journal_states(tmp_path / ".apimart-journal.sqlite3").values()) == {"submitted"}
    server.emulator.complete_all()
    async with session_for(server) as s:
        report = await s.run_batch(reqs(10), out_dir=tmp_path)
    assert report.ok
    assert_files_correct(report)
    assert server.stats.submissions == 10 and server.stats.duplicate_submissions == 0


async def test_ambiguous_submission_is_reported_and_resubmitted_only_on_request(
    server: EmulatorServer, tmp_path: Path
) -> None:
    server.emulator.inject("submit", Fault.lost_answer())
    async with session_for(server, max_concurrency=1) as s:
        report = await s.run_batch(reqs(4), out_dir=tmp_path)
        assert report.ambiguous == 1 and report.completed == 3 and not report.ok
        (lost,) = [i for i in report.items if i.state is ItemState.AMBIGUOUS]
        assert lost.reason and "billed" in lost.reason
        assert server.stats.submissions == 4  # the lost answer did create a task

        again = await s.run_batch(reqs(4), out_dir=tmp_path)
        assert again.ambiguous == 1 and server.stats.submissions == 4

        # Opting in resends with the same Idempotency-Key; a server that honours it
        # answers with the task it already made.
        server.emulator.honour_idempotency_key = True
        final = await s.run_batch(reqs(4), out_dir=tmp_path, resubmit_ambiguous=True)
    assert final.ok
    assert server.stats.submissions == 4 and server.stats.duplicate_submissions == 0
    keys = server.stats.idempotency_keys
    assert len(keys) == 5 and len(set(keys)) == 4


async def test_balance_running_out_leaves_the_rest_for_a_rerun(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(balance=3))
    async with session_for(server, max_concurrency=1) as s:
        report = await s.run_batch(reqs(6), out_dir=tmp_path)
        assert report.completed == 3 and report.failed == 0 and report.pending == 3
        left = [i for i in report.items if not i.ok]
        assert all(i.state is ItemState.PENDING for i in left)
        assert all("InsufficientBalanceError" in (i.reason or "") or "402" in (i.reason or "")
                   for i in left)
        server.emulator.set_balance(None)
        again = await s.run_batch(reqs(6), out_dir=tmp_path)
    assert again.ok and server.stats.submissions == 6


async def test_failed_tasks_and_rejected_requests_are_reported(
    make_server: MakeServer, tmp_path: Path
) -> None:
    def planner(body: Mapping[str, Any], index: int) -> TaskPlan:
        return TaskPlan(outcome="failed" if body["prompt"] == "doomed" else "completed")

    server = await make_server(EmulatorConfig(planner=planner))
    items = [VideoRequest("fine"), VideoRequest("doomed"), VideoRequest("too long", model="kling-9", duration=99)]
    async with session_for(server) as s:
        report = await s.run_batch(items, out_dir=tmp_path)
    states = [i.state for i in report.items]
    assert states == [ItemState.DOWNLOADED, ItemState.FAILED, ItemState.FAILED]
    assert "content moderation" in (report.items[1].reason or "")
    assert "rejected" in (report.items[2].reason or "")
    assert report.failed == 2 and not report.ok


async def test_named_items_and_changed_items(server: EmulatorServer, tmp_path: Path) -> None:
    items = [BatchItem(request=VideoRequest("a"), name="intro"),
             BatchItem(request=VideoRequest("b"), name="outro")]
    async with session_for(server) as s:
        report = await s.run_batch(items, out_dir=tmp_path)
        assert [i.path for i in report.items] == [tmp_path / "intro.mp4", tmp_path / "outro.mp4"]
        changed = [BatchItem(request=VideoRequest("a, but different"), name="intro")]
        with pytest.raises(ValidationError, match="differs from the one the journal"):
            await s.run_batch(changed, out_dir=tmp_path)
        with pytest.raises(ValidationError, match="more than one item"):
            await s.run_batch([items[0], items[0]], out_dir=tmp_path / "x")
    with pytest.raises(ValidationError, match="name"):
        BatchItem(request=VideoRequest("a"), name="../escape")


async def test_missing_file_is_fetched_again(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server) as s:
        first = await s.run_batch(reqs(2), out_dir=tmp_path)
        first.items[0].path.unlink()  # type: ignore[union-attr]
        again = await s.run_batch(reqs(2), out_dir=tmp_path)
    assert again.ok and first.items[0].path.exists()  # type: ignore[union-attr]
    assert server.stats.submissions == 2 and server.stats.downloads == 3


async def test_journal_never_holds_the_key(server: EmulatorServer, tmp_path: Path) -> None:
    server.emulator.inject("submit", Fault.lost_answer())
    async with session_for(server) as s:
        await s.run_batch(reqs(3), out_dir=tmp_path)
    for path in tmp_path.glob(".apimart-journal*"):
        assert KEY.encode() not in path.read_bytes()
    with sqlite3.connect(tmp_path / ".apimart-journal.sqlite3") as conn:
        rows = conn.execute("SELECT * FROM items").fetchall()
    assert rows and all(KEY not in str(row) for row in rows)


async def test_requests_are_validated_first(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server) as s:
        with pytest.raises(ValidationError, match=r"requests\[1\]"):
            await s.run_batch([VideoRequest("a"), "b"], out_dir=tmp_path)  # type: ignore[list-item]
    assert server.stats.requests["submit"] == 0


def test_session_must_be_open_to_run_a_batch(tmp_path: Path) -> None:
    import anyio

    async def go() -> None:
        await Session(KEY).run_batch(reqs(1), out_dir=tmp_path)

    with pytest.raises(RuntimeError, match="async with"):
        anyio.run(go)
