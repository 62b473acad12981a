"""Batch items are known by their content: edits to the input never rebill or overwrite.

An unnamed item's identity is its request plus its occurrence among identical
requests; its file name carries a digest of the request; a file the journal does not
own is never overwritten; an old journal migrates; one run per journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from apimart_async import JournalBusyError, RetryPolicy, ValidationError, VideoRequest
from apimart_async._batch.journal import ItemState, Journal, request_json
from apimart_async._batch.runner import BatchItem, ItemResult
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, TaskPlan, video_bytes

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio
JOURNAL = ".apimart-journal.sqlite3"


LONG = "a slow cinematic pan across a misty forest at dawn, variation "


def prompts(*texts: str) -> list[VideoRequest]:
    return [VideoRequest(t, duration=5) for t in texts]


def videos(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.glob("*.mp4")}


async def test_inserting_reordering_and_removing_lines_submits_only_new_requests(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        first = await s.run_batch(prompts("a", "b", "c"), out_dir=tmp_path)
        assert first.ok and server.stats.submissions == 3
        inserted = await s.run_batch(prompts("z", "a", "b", "c"), out_dir=tmp_path)
        assert inserted.ok
        assert server.stats.submissions == 4  # only "z" is new: 4, not 7
        shuffled = await s.run_batch(prompts("c", "a"), out_dir=tmp_path)
        assert shuffled.ok and server.stats.submissions == 4
        assert [i.path for i in shuffled.items] == [inserted.items[3].path, inserted.items[1].path]
        # The same request twice is two items: the second occurrence is new.
        twice = await s.run_batch(prompts("a", "b", "a"), out_dir=tmp_path)
        assert twice.ok and server.stats.submissions == 5
        assert twice.items[0].path != twice.items[2].path
    assert server.stats.duplicate_submissions == 0
    assert len(videos(tmp_path)) == 5


async def test_a_changed_line_is_a_new_item_and_the_old_video_stays(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        first = await s.run_batch(prompts("a", LONG + "1"), out_dir=tmp_path)
        before = videos(tmp_path)
        edited = await s.run_batch(prompts("a", LONG + "1, at night"), out_dir=tmp_path)
    assert first.ok and edited.ok and server.stats.submissions == 3
    after = videos(tmp_path)
    assert len(after) == 3
    assert all(after[name] == data for name, data in before.items())  # nothing overwritten
    assert edited.items[1].path != first.items[1].path


async def test_similar_long_prompts_get_different_files_across_runs(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        paths = set()
        for n in range(11, 20):
            report = await s.run_batch(prompts(LONG + str(n)), out_dir=tmp_path)
            assert report.ok
            paths.add(report.items[0].path)
        together = await s.run_batch(prompts(*(LONG + str(n) for n in range(11, 20))),
                                     out_dir=tmp_path / "together")
    assert len(paths) == 9 and len(videos(tmp_path)) == 9
    assert len({i.path for i in together.items}) == 9
    assert server.stats.submissions == 18
    # Still readable: the slug of the prompt, then a short digest of the request.
    assert all(p is not None and p.name.startswith("a-slow-cinematic") for p in paths)


async def test_a_file_the_journal_does_not_own_is_never_overwritten(
    server: EmulatorServer, tmp_path: Path
) -> None:
    items = [*prompts("a fox"), BatchItem(request=VideoRequest("a hare"), name="hare")]
    async with session_for(server) as s:
        probe = await s.run_batch(items, out_dir=tmp_path / "probe")
        out = tmp_path / "out"
        out.mkdir()
        for item in probe.items:
            assert item.path is not None
            (out / item.path.name).write_bytes(b"somebody else's file")
        report = await s.run_batch(items, out_dir=out)
    assert report.ok
    for old, new in zip(probe.items, report.items, strict=True):
        assert old.path is not None and new.path is not None
        assert (out / old.path.name).read_bytes() == b"somebody else's file"
        assert new.path.parent == out and new.path.name != old.path.name
        assert new.path.read_bytes() == video_bytes(new.task_id or "", 64 * 1024)
    # A re-run finds the videos where it put them: nothing fetched twice.
    async with session_for(server) as s:
        again = await s.run_batch(items, out_dir=out)
    assert [i.path for i in again.items] == [i.path for i in report.items]
    assert server.stats.downloads == 4


async def test_a_named_item_whose_request_changed_is_refused_before_sending(
    server: EmulatorServer, tmp_path: Path
) -> None:
    item = BatchItem(request=VideoRequest("a"), name="intro")
    async with session_for(server) as s:
        await s.run_batch([item], out_dir=tmp_path)
        paid = (tmp_path / "intro.mp4").read_bytes()
        changed = BatchItem(request=VideoRequest("a, but blue"), name="intro")
        with pytest.raises(ValidationError, match="intro") as info:
            await s.run_batch([*prompts("new"), changed], out_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert server.stats.submissions == 1 and (tmp_path / "intro.mp4").read_bytes() == paid


async def test_journal_written_before_the_bytes_go_out(
    make_server: MakeServer, tmp_path: Path
) -> None:
    seen: list[str] = []

    def planner(body: Mapping[str, Any], index: int) -> TaskPlan:
        # Runs inside the emulator as the submission arrives: the client must already
        # have recorded it as on the wire.
        with sqlite3.connect(f"file:{tmp_path / JOURNAL}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT request, state FROM items").fetchall()
        seen.extend(state for request, state in rows if json.loads(request) == dict(body))
        return TaskPlan(outcome="completed")

    server = await make_server(EmulatorConfig(planner=planner))
    async with session_for(server, max_concurrency=2) as s:
        report = await s.run_batch(prompts(*"abcdef"), out_dir=tmp_path)
    assert report.ok and seen == ["submitting"] * 6


def old_journal(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """A journal as version 1 wrote it: items keyed by input position."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE items (key TEXT PRIMARY KEY, position INTEGER NOT NULL, name TEXT,"
            " request TEXT NOT NULL, idempotency_key TEXT NOT NULL, state TEXT NOT NULL,"
            " task_id TEXT, error TEXT, path TEXT, size INTEGER, sha256 TEXT,"
            " updated REAL NOT NULL)")
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def v1_row(index: int, request: VideoRequest, state: str, **extra: Any) -> tuple[Any, ...]:
    body = request_json(request.to_body())
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return (f"#{index}:{digest}", index, None, body, f"idem{index}", state,
            extra.get("task_id"), None, extra.get("path"), extra.get("size"),
            extra.get("sha256"), time.time())


async def test_an_old_journal_migrates_without_rebilling(
    server: EmulatorServer, tmp_path: Path
) -> None:
    a, b = prompts("a", "b")
    video = tmp_path / "0001-a.mp4"
    video.write_bytes(b"paid for")
    old_journal(tmp_path / JOURNAL, [
        v1_row(0, a, "downloaded", task_id="task_old", path=str(video), size=8,
               sha256=hashlib.sha256(b"paid for").hexdigest()),
        v1_row(1, b, "submitting"),
    ])
    async with session_for(server) as s:
        report = await s.run_batch(prompts("z", "a", "b"), out_dir=tmp_path)
    # "a" is done, "b" may exist (a crash left it on the wire), only "z" is sent.
    assert server.stats.submissions == 1
    assert [i.state.value for i in report.items] == ["downloaded", "downloaded", "ambiguous"]
    assert report.items[1].path == video and video.read_bytes() == b"paid for"
    with sqlite3.connect(tmp_path / JOURNAL) as conn:
        (version,) = conn.execute(
            "SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    # v1 re-keyed, v2 paths made names, v3 gains typed errors, v4 every output.
    assert int(version) == 5


async def test_a_journal_from_a_newer_version_is_refused(
    server: EmulatorServer, tmp_path: Path
) -> None:
    old_journal(tmp_path / JOURNAL, [])
    with sqlite3.connect(tmp_path / JOURNAL) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    async with session_for(server) as s:
        with pytest.raises(ValidationError, match="newer") as info:
            await s.run_batch(prompts("a"), out_dir=tmp_path)
    assert "\n" not in str(info.value) and server.stats.submissions == 0


async def test_a_second_run_on_the_same_journal_is_refused_naming_the_first(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with Journal(tmp_path / JOURNAL), session_for(server) as s:
        with pytest.raises(JournalBusyError) as info:
            await s.run_batch(prompts("a"), out_dir=tmp_path)
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert "\n" not in message and server.stats.requests["submit"] == 0
    # Once the first is done, the journal is free again.
    async with session_for(server) as s:
        assert (await s.run_batch(prompts("a"), out_dir=tmp_path)).ok


async def test_stop_lets_the_request_on_the_wire_land_and_sends_nothing_more(
    server: EmulatorServer, tmp_path: Path
) -> None:
    stop = anyio.Event()

    def stop_once_on_the_wire(result: ItemResult) -> None:
        if result.state is ItemState.SUBMITTING:
            stop.set()

    async with session_for(server, max_concurrency=2) as s:
        report = await s.run_batch(prompts(*"abcdef"), out_dir=tmp_path,
                                   on_change=stop_once_on_the_wire, stop=stop)
    assert report.interrupted and not report.ok
    states = [i.state for i in report.items]
    # What went out landed and is journaled with its task id; nothing else was sent.
    assert server.stats.submissions == states.count(ItemState.SUBMITTED) >= 1
    assert states.count(ItemState.PENDING) == 6 - server.stats.submissions
    with sqlite3.connect(tmp_path / JOURNAL) as conn:
        journaled = sorted(state for (state,) in conn.execute("SELECT state FROM items"))
    assert journaled == sorted(state.value for state in states)


async def test_stop_between_retries_of_a_refused_submission_leaves_it_pending(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # The first attempt gets a 503 (surely not created); the stop lands before the retry.
    server.emulator.inject("submit", Fault.http(503))
    stop = anyio.Event()

    def stop_once_on_the_wire(result: ItemResult) -> None:
        if result.state is ItemState.SUBMITTING:
            stop.set()

    async with session_for(server, max_concurrency=1) as s:
        report = await s.run_batch(prompts("a", "b"), out_dir=tmp_path,
                                   on_change=stop_once_on_the_wire, stop=stop)
    assert report.interrupted and server.stats.requests["submit"] == 1
    assert server.stats.submissions == 0
    with sqlite3.connect(tmp_path / JOURNAL) as conn:
        assert [s for (s,) in conn.execute("SELECT state FROM items")] == ["pending"] * 2


async def test_stop_does_not_wait_for_rate_tokens(server: EmulatorServer, tmp_path: Path) -> None:
    # At 0.5 requests/s the second item waits 2 s for its token: a stop ends that wait.
    stop = anyio.Event()

    def stop_once_on_the_wire(result: ItemResult) -> None:
        if result.state is ItemState.SUBMITTING:
            stop.set()

    async with session_for(server, max_concurrency=2, rps=0.5) as s:
        with anyio.fail_after(1.5):
            report = await s.run_batch(prompts("a", "b", "c"), out_dir=tmp_path,
                                       on_change=stop_once_on_the_wire, stop=stop)
    assert report.interrupted and server.stats.submissions == 1


async def test_a_cancelled_run_frees_the_journal(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server) as s:
        with anyio.CancelScope() as scope:

            def cancel_on_the_wire(result: ItemResult) -> None:
                if result.state is ItemState.SUBMITTING:
                    scope.cancel()

            await s.run_batch(prompts("a"), out_dir=tmp_path, on_change=cancel_on_the_wire)
        assert scope.cancelled_caught
        # Cancelled with its request on the wire: the next run says so (and is allowed).
        again = await s.run_batch(prompts("a"), out_dir=tmp_path)
    assert again.ambiguous == 1


async def test_a_refused_attempt_puts_the_item_back_in_line(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # Between a 503 (nothing created) and its retry the item is pending again: a crash
    # there must not make it "ambiguous".
    server.emulator.inject("submit", Fault.http(503))
    seen: list[str] = []
    async with session_for(server) as s:
        report = await s.run_batch(prompts("a"), out_dir=tmp_path,
                                   on_change=lambda r: seen.append(r.state.value))
    assert report.ok and server.stats.submissions == 1
    assert seen[:5] == ["pending", "submitting", "pending", "submitting", "submitted"]


async def test_stop_after_an_unanswered_attempt_reports_it_ambiguous(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # A policy that retries unanswered submissions: stopped before the retry, the item
    # may exist (the lost answer did create it), so it is ambiguous, not pending.
    server.emulator.inject("submit", Fault.lost_answer())
    stop = anyio.Event()

    def stop_once_on_the_wire(result: ItemResult) -> None:
        if result.state is ItemState.SUBMITTING:
            stop.set()

    async with session_for(server, retry=RetryPolicy(retry_ambiguous_submissions=True)) as s:
        report = await s.run_batch(prompts("a"), out_dir=tmp_path,
                                   on_change=stop_once_on_the_wire, stop=stop)
    assert report.interrupted and server.stats.submissions == 1
    assert [i.state for i in report.items] == [ItemState.AMBIGUOUS]
    with sqlite3.connect(tmp_path / JOURNAL) as conn:
        assert [s for (s,) in conn.execute("SELECT state FROM items")] == ["ambiguous"]


@pytest.mark.parametrize("later", [Fault.http(503), Fault.http(429, retry_after="0")])
async def test_an_ambiguous_attempt_keeps_the_submission_ambiguous_whatever_follows(
    server: EmulatorServer, later: Fault
) -> None:
    # Review 11: an answer lost (the task made and billed), the retry refused (503 or
    # 429, nothing made): the error said "surely not sent" from its last attempt alone.
    from apimart_async import APIMartError

    server.emulator.inject("submit", Fault.lost_answer(), later, later)
    policy = RetryPolicy(max_attempts=3, retry_ambiguous_submissions=True)
    async with session_for(server, retry=policy) as s:
        with pytest.raises(APIMartError) as info:
            await s.submit(VideoRequest("a fox"))
    assert info.value.submission_ambiguous and len(server.emulator.tasks) == 1


async def test_a_batch_item_refused_after_an_ambiguous_attempt_is_not_sent_again(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # The batch put such an item back to pending ("not submitted"): its re-run paid
    # for it again. It is ambiguous: the re-run leaves it for the caller to look up.
    server.emulator.inject("submit", Fault.lost_answer(), *[Fault.http(503)] * 3)
    policy = RetryPolicy(max_attempts=3, retry_ambiguous_submissions=True)
    async with session_for(server, retry=policy) as s:
        first = await s.run_batch(prompts("a"), out_dir=tmp_path)
    assert [i.state for i in first.items] == [ItemState.AMBIGUOUS]
    async with session_for(server) as s:
        await s.run_batch(prompts("a"), out_dir=tmp_path)
    assert len(server.emulator.tasks) == 1 and server.stats.duplicate_submissions == 0
