"""Defects found by an attack review of the durable batch: each test reproduces one.

Two items never share a file; a journal's paths are relative to its output folder;
a paid task whose line was removed is still fetched; a file edited by the user is
never replaced.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from apimart_async import ValidationError, VideoRequest
from apimart_async._batch.journal import ItemState, Journal
from apimart_async._batch.runner import BatchItem
from apimart_async._cli.progress import summary_lines
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, video_bytes

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio
JOURNAL = ".apimart-journal.sqlite3"


def prompts(*texts: str) -> list[VideoRequest]:
    return [VideoRequest(t, duration=5) for t in texts]


async def test_two_items_never_get_one_file_when_the_first_name_is_taken(
    make_server: MakeServer, tmp_path: Path
) -> None:
    # Every task takes exactly as long: they end together, and so their downloads
    # claim their paths at the same moment.
    server = await make_server(EmulatorConfig(duration=(1.0, 1.0), queue_time=(0.0, 0.0),
                                              estimate_error=0.0))
    async with session_for(server) as s:
        probe = await s.run_batch(prompts("a fox"), out_dir=tmp_path / "probe")
        assert probe.items[0].path is not None
        out = tmp_path / "out"
        out.mkdir()
        (out / probe.items[0].path.name).write_bytes(b"old")
        named = [BatchItem(request=VideoRequest("x"), name="v"),
                 BatchItem(request=VideoRequest("y"), name="v-2")]
        (out / "v.mp4").write_bytes(b"old v")
        report = await s.run_batch([*prompts("a fox", "a fox"), *named], out_dir=out)
    assert report.ok, report
    paths = [item.path for item in report.items]
    assert len(set(paths)) == 4, paths
    for item in report.items:
        assert item.path is not None
        assert item.path.read_bytes() == video_bytes(item.task_id or "", 64 * 1024)
    assert (out / probe.items[0].path.name).read_bytes() == b"old"
    assert (out / "v.mp4").read_bytes() == b"old v"
    # The journal refuses two rows with one path.
    async with Journal(out / ".apimart-journal.sqlite3") as jr:
        rows = await jr.load()
        first, second = sorted(rows)[:2]
        path = rows[first].path
        assert path is not None
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            await jr.update(second, rows[second].state, path=path)


async def test_rows_an_older_version_gave_one_path_are_told_apart(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        first = await s.run_batch(prompts("a fox", "a fox"), out_dir=tmp_path)
    assert first.ok and first.items[0].path is not None
    kept = first.items[0].path.read_bytes()
    # What the race used to leave behind: both rows name the first item's file.
    with sqlite3.connect(tmp_path / JOURNAL) as conn:
        conn.execute("DROP INDEX items_path")
        conn.execute("UPDATE items SET path = ?", (first.items[0].path.name,))
    async with session_for(server) as s:
        again = await s.run_batch(prompts("a fox", "a fox"), out_dir=tmp_path)
    assert again.ok and server.stats.submissions == 2
    assert again.items[0].path == first.items[0].path and again.items[0].path is not None
    assert again.items[0].path.read_bytes() == kept  # the owner keeps its file untouched
    assert again.items[1].path not in (None, first.items[0].path)
    assert again.items[1].path.read_bytes() == video_bytes(again.items[1].task_id or "", 65536)


async def test_a_rerun_from_another_directory_uses_the_same_files(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with session_for(server) as s:
        first = await s.run_batch(prompts("a", "b"), out_dir="d26")
        assert first.ok
        elsewhere = tmp_path / "sub" / "d26"
        elsewhere.mkdir(parents=True)
        for item in first.items:
            assert item.path is not None
            (elsewhere / item.path.name).write_bytes(b"an unrelated user file")
        monkeypatch.chdir(tmp_path / "sub")
        again = await s.run_batch(prompts("a", "b"), out_dir="../d26")
        assert again.ok and server.stats.downloads == 2  # nothing fetched again
        assert [i.path and i.path.resolve() for i in again.items] == [
            i.path and (tmp_path / i.path).resolve() for i in first.items]
        # An absolute --out finds them too.
        absolute = await s.run_batch(prompts("a", "b"), out_dir=tmp_path / "d26")
        assert absolute.ok and server.stats.downloads == 2
    assert all(p.read_bytes() == b"an unrelated user file" for p in elsewhere.iterdir())


async def test_a_journal_belongs_to_its_output_folder_which_may_move(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        first = await s.run_batch(prompts("a"), out_dir=tmp_path / "o1")
        (tmp_path / "o1").rename(tmp_path / "moved")
        moved = await s.run_batch(prompts("a"), out_dir=tmp_path / "moved")
        assert first.ok and moved.ok and server.stats.downloads == 1
        assert moved.items[0].path == tmp_path / "moved" / first.items[0].path.name  # type: ignore[union-attr]
        # A journal kept outside its folder is refused with another folder.
        journal = tmp_path / "j.sqlite3"
        await s.run_batch(prompts("a"), out_dir=tmp_path / "x1", journal=journal)
        with pytest.raises(ValidationError, match=r"out_dir.*x1"):
            await s.run_batch(prompts("a"), out_dir=tmp_path / "x2", journal=journal)
    assert server.stats.submissions == 2
    assert not (tmp_path / "x2").exists() or not list((tmp_path / "x2").iterdir())


async def test_a_paid_task_whose_line_was_removed_is_still_downloaded(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        server.emulator.inject("download", Fault.http(404))
        first = await s.run_batch(prompts("b"), out_dir=tmp_path)
        assert not first.ok and first.items[0].state is ItemState.COMPLETED
        # The line is edited before the re-run: "b" is gone from the input.
        again = await s.run_batch(prompts("b, edited"), out_dir=tmp_path)
    assert again.ok and server.stats.submissions == 2
    (earlier,) = again.earlier
    assert earlier.task_id == first.items[0].task_id and earlier.ok
    assert earlier.path is not None
    assert earlier.path.read_bytes() == video_bytes(earlier.task_id or "", 65536)
    assert "b-" in earlier.path.name
    assert any("earlier" in line and "1 downloaded" in line for line in summary_lines(again))


async def test_a_downloaded_video_edited_by_its_owner_is_never_replaced(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        first = await s.run_batch(prompts("a"), out_dir=tmp_path)
        path = first.items[0].path
        assert path is not None
        path.write_bytes(b"trimmed by hand")
        again = await s.run_batch(prompts("a"), out_dir=tmp_path)
        assert again.ok and again.items[0].path not in (None, path)
        assert path.read_bytes() == b"trimmed by hand"
        # And the re-run after that finds both where they are.
        third = await s.run_batch(prompts("a"), out_dir=tmp_path)
    assert third.items[0].path == again.items[0].path and server.stats.downloads == 2
    assert path.read_bytes() == b"trimmed by hand"


async def test_a_version_2_journal_keeps_its_files(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with session_for(server) as s:
        first = await s.run_batch(prompts("a", "b"), out_dir="out")
    # As version 2 wrote it: paths relative to the working directory, no index.
    with sqlite3.connect(tmp_path / "out" / JOURNAL) as conn:
        conn.execute("DROP INDEX items_path")
        conn.execute("DELETE FROM meta WHERE name = 'out_dir'")
        conn.execute("UPDATE items SET path = 'out/' || path")
        conn.execute("UPDATE meta SET value = '2' WHERE name = 'schema_version'")
    async with session_for(server) as s:
        again = await s.run_batch(prompts("a", "b"), out_dir=tmp_path / "out")
    assert again.ok and server.stats.downloads == 2
    assert [i.path for i in again.items] == [tmp_path / str(i.path) for i in first.items]


async def test_a_file_put_at_a_claimed_path_is_kept(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        server.emulator.inject("download", Fault.http(404))
        first = await s.run_batch(prompts("a"), out_dir=tmp_path)
        claimed = first.items[0].path
        assert not first.ok and claimed is not None and not claimed.exists()
        claimed.write_bytes(b"a file of the user's, put there meanwhile")
        again = await s.run_batch(prompts("a"), out_dir=tmp_path)
    assert again.ok and again.items[0].path not in (None, claimed)
    assert claimed.read_bytes() == b"a file of the user's, put there meanwhile"
    assert again.items[0].path.read_bytes() == video_bytes(again.items[0].task_id or "", 65536)  # type: ignore[union-attr]


def test_the_summary_gives_a_reason_to_unfinished_items_without_one(tmp_path: Path) -> None:
    from apimart_async._batch.runner import BatchReport, ItemResult

    def item(index: int, state: ItemState, task_id: str | None) -> ItemResult:
        return ItemResult(index=index, key=f"k{index}", name=None, request=VideoRequest("x"),
                          state=state, task_id=task_id)

    report = BatchReport(
        items=(item(0, ItemState.COMPLETED, "task_a"), item(1, ItemState.SUBMITTED, "task_b"),
               item(2, ItemState.PENDING, None)),
        journal=tmp_path / "j", interrupted=True, bytes_downloaded=0, retries=0,
        rate_limited=0)
    lines = [line for line in summary_lines(report) if line.startswith("  ")]
    assert [line.rsplit(": ", 1)[1] for line in lines] == [
        "download not finished; re-run to resume", "task not finished; re-run to resume",
        "not sent; re-run to resume"]
