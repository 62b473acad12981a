"""Every output of a task: parsed (videos, images, extra), downloaded by `download` and
`run_batch` completely, journaled (schema 5, migrated from 4), resumed after a cut."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from apimart_async import ItemResult, ItemState, Task, TaskStatus, VideoRequest
from apimart_async._batch.journal import Journal, request_json
from apimart_async._core.wire import parse_task
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, TaskPlan

from .conftest import KEY, MakeServer, session_for

JOURNAL = ".apimart-journal.sqlite3"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answer(data: dict[str, Any]) -> bytes:
    return json.dumps({"code": 200, "data": data}).encode()


def test_videos_and_images_are_outputs_in_order() -> None:
    task = parse_task(200, answer({
        "id": "task_1", "status": "completed", "progress": 100,
        "result": {
            "videos": [{"url": ["https://f/a.mp4", "https://f/b.mp4"], "expires_at": 200},
                       {"url": "https://f/c.mov", "expires_at": 100}],
            "images": [{"url": "https://f/d.png", "expires_at": 300}],
        },
    }))
    assert [(o.kind, o.url, o.expires_at) for o in task.outputs] == [
        ("video", "https://f/a.mp4", 200), ("video", "https://f/b.mp4", 200),
        ("video", "https://f/c.mov", 100), ("image", "https://f/d.png", 300)]
    assert task.video_urls == ("https://f/a.mp4", "https://f/b.mp4", "https://f/c.mov")
    assert task.image_urls == ("https://f/d.png",)
    assert task.expires_at == 100


def test_an_image_task_has_image_outputs_only() -> None:
    task = parse_task(200, answer({"id": "task_1", "status": "completed",
                                   "result": {"images": [{"url": ["https://f/i.webp"]}]}}))
    assert task.video_urls == () and task.image_urls == ("https://f/i.webp",)


def test_unknown_fields_are_kept_in_extra_scrubbed_and_shared_when_none() -> None:
    task = parse_task(200, answer({
        "id": "task_1", "status": "completed", "object": "video.generation.task",
        "type": "video", "usage": {"cost": 0.4, "note": f"key {KEY}"}, "task_info": [KEY],
    }), secret=KEY)
    assert dict(task.extra) == {"usage": {"cost": 0.4, "note": "key [redacted]"},
                                "task_info": ["[redacted]"]}
    with pytest.raises(TypeError):
        task.extra["usage"] = 1  # type: ignore[index]
    plain = [parse_task(200, answer({"id": f"task_{i}", "status": "pending",
                                     "object": "video.generation.task", "type": "video"}))
             for i in range(2)]
    assert plain[0].extra == {} and plain[0].extra is plain[1].extra
    odd = parse_task(200, answer({"id": "task_1", "status": "pending", "type": "image"}))
    assert dict(odd.extra) == {"type": "image"}


def test_a_task_built_from_links_has_video_outputs() -> None:
    task = Task(id="t", status=TaskStatus.COMPLETED, video_urls=("https://f/a.mp4",),
                expires_at=5)
    assert [(o.kind, o.url, o.expires_at) for o in task.outputs] == [
        ("video", "https://f/a.mp4", 5)]


def planned(**fields: Any) -> EmulatorConfig:
    return EmulatorConfig(planner=lambda body, index: TaskPlan(duration=2, **fields))


def served(server: EmulatorServer, task_id: str, name: str) -> bytes:
    record = server.emulator.record(task_id)
    assert record is not None
    return server.emulator.output(record, name)


@pytest.mark.anyio
async def test_download_saves_every_video_and_image(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=2, images=2))
    async with session_for(server) as s:
        task = await s.wait(await s.submit(VideoRequest("a fox")))
        result = await s.download(task, tmp_path / "fox.mp4")
        again = await s.download(task.id, tmp_path)
    tid = task.id
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "fox.mp4", "fox-2.mp4", "fox-3.png", "fox-4.png",
        f"{tid}.mp4", f"{tid}-2.mp4", f"{tid}-3.png", f"{tid}-4.png"])
    names = [f"{tid}.mp4", f"{tid}-2.mp4", f"{tid}-image-1.png", f"{tid}-image-2.png"]
    for path, name in zip(result.paths, names, strict=True):
        assert path.read_bytes() == served(server, tid, name)
    assert result.path == tmp_path / "fox.mp4" and len(result.more) == 3
    assert [f.kind for f in result.files] == ["video", "video", "image", "image"]
    assert [f.index for f in result.files] == [0, 1, 2, 3]
    assert [f.sha256 for f in result.files] == [sha(p.read_bytes()) for p in result.paths]
    assert again.paths[2] == tmp_path / f"{tid}-3.png"
    assert (tmp_path / "fox-2.mp4").read_bytes() != (tmp_path / "fox.mp4").read_bytes()


@pytest.mark.anyio
async def test_an_image_only_task_downloads_with_its_own_extension(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=0, images=1))
    async with session_for(server) as s:
        task = await s.wait(await s.submit(VideoRequest("a fox")))
        result = await s.download(task, tmp_path)
    assert result.paths == (tmp_path / f"{task.id}.png",) and result.kind == "image"
    assert result.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.anyio
async def test_run_batch_downloads_and_journals_every_output(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=2, images=1))
    async with session_for(server) as s:
        report = await s.run_batch([VideoRequest("a fox"), VideoRequest("an owl")],
                                   out_dir=tmp_path)
    assert report.ok
    for item in report.items:
        stem = item.path.stem if item.path else ""
        assert [p.name for p in item.files] == [f"{stem}.mp4", f"{stem}-2.mp4", f"{stem}-3.png"]
    async with Journal(tmp_path / JOURNAL) as journal:
        rows, files = await journal.load(), await journal.load_files()
    for item in report.items:
        row = rows[item.key]
        assert row.outputs == 3 and row.sha256 == sha(item.files[0].read_bytes())
        assert {i: (f.path, f.sha256) for i, f in files[item.key].items()} == {
            i: (p.name, sha(p.read_bytes())) for i, p in enumerate(item.files) if i}
    # A re-run has nothing to fetch.
    before = server.stats.downloads
    async with session_for(server) as s:
        again = await s.run_batch([VideoRequest("a fox"), VideoRequest("an owl")],
                                  out_dir=tmp_path)
    assert again.ok and server.stats.downloads == before and server.stats.submissions == 2


@pytest.mark.anyio
async def test_a_batch_cut_in_its_second_output_resumes_that_output_only(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=2, size=64 * 1024))
    cut: list[ItemResult] = []

    def on_change(result: ItemResult) -> None:
        # Once the first file is journaled: the second is cut half-way, then refused.
        if len(result.files) == 1 and not cut:
            cut.append(result)
            server.emulator.inject("download", Fault.cut(0.5), Fault.http(404))

    async with session_for(server) as s:
        first = await s.run_batch([VideoRequest("a fox")], out_dir=tmp_path,
                                  on_change=on_change)
    item = first.items[0]
    assert item.state is ItemState.COMPLETED and "404" in str(item.reason)
    assert item.path is not None and len(item.files) == 1
    second = item.path.with_name(item.path.stem + "-2.mp4")
    part = second.with_name(f".{second.name}.part")
    assert not second.exists() and part.stat().st_size == 32 * 1024
    downloads, ranges = server.stats.downloads, server.stats.range_requests
    async with session_for(server) as s:
        report = await s.run_batch([VideoRequest("a fox")], out_dir=tmp_path)
    assert report.ok and report.items[0].files == (item.path, second)
    # Only the second output was fetched again, resuming from the cut.
    assert server.stats.downloads == downloads + 1
    assert server.stats.range_requests == ranges + 1
    assert second.read_bytes() == served(server, item.task_id or "",
                                         f"{item.task_id}-2.mp4")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted([
        item.path.name, second.name])


@pytest.mark.anyio
async def test_a_file_in_the_way_of_a_second_output_is_never_overwritten(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=2))
    request = VideoRequest("a fox")
    from apimart_async._batch.runner import _file_stem

    stem = _file_stem(None, request_json(request.to_body()), 1)
    mine = tmp_path / f"{stem}-2.mp4"
    mine.write_bytes(b"mine")
    async with session_for(server) as s:
        report = await s.run_batch([request], out_dir=tmp_path)
    assert report.ok and mine.read_bytes() == b"mine"
    assert [p.name for p in report.items[0].files] == [f"{stem}.mp4", f"{stem}~2-2.mp4"]


@pytest.mark.anyio
async def test_identical_unnamed_requests_get_names_never_read_as_each_others_outputs(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=2, images=1))
    from apimart_async._batch.runner import _file_stem

    request = VideoRequest("boat")
    stem = _file_stem(None, request_json(request.to_body()), 1)
    async with session_for(server) as s:
        report = await s.run_batch([request, request], out_dir=tmp_path)
    assert report.ok
    first, second = ([p.name for p in item.files] for item in report.items)
    # "-N" numbers one task's outputs, "~N" tells items apart: no crossing.
    assert first == [f"{stem}.mp4", f"{stem}-2.mp4", f"{stem}-3.png"]
    assert second == [f"{stem}~2.mp4", f"{stem}~2-2.mp4", f"{stem}~2-3.png"]


@pytest.mark.anyio
async def test_an_item_whose_first_name_is_taken_keeps_its_outputs_on_one_stem(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=2, images=1))
    (tmp_path / "fox.mp4").write_bytes(b"mine")
    async with session_for(server) as s:
        report = await s.run_batch([_named(VideoRequest("a fox"), "fox")], out_dir=tmp_path)
    assert report.ok and (tmp_path / "fox.mp4").read_bytes() == b"mine"
    assert [p.name for p in report.items[0].files] == ["fox~2.mp4", "fox~2-2.mp4",
                                                       "fox~2-3.png"]


def v4_journal(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """A journal as version 4 wrote it: no `files` table, no `outputs` column."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE items (key TEXT PRIMARY KEY, position INTEGER NOT NULL, name TEXT,"
            " request TEXT NOT NULL, idempotency_key TEXT NOT NULL, state TEXT NOT NULL,"
            " task_id TEXT, error TEXT, path TEXT, size INTEGER, sha256 TEXT,"
            " updated REAL NOT NULL, error_record TEXT)")
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '4')")
        conn.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


@pytest.mark.anyio
async def test_a_v4_journal_migrates_and_its_downloaded_items_get_their_other_outputs(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=2))
    request = VideoRequest("a fox")
    async with session_for(server) as s:
        task = await s.wait(await s.submit(request))
        one = await s.download(task, tmp_path / "fox.mp4")
    for extra in one.more:  # what version 4 left: the first output only
        extra.path.unlink()
    body = request_json(request.to_body())
    v4_journal(tmp_path / JOURNAL, [(
        "name:fox", 0, "fox", body, "idem", "downloaded", task.id, None, "fox.mp4",
        one.size, one.sha256, time.time(), None)])
    async with session_for(server) as s:
        report = await s.run_batch([_named(request, "fox")], out_dir=tmp_path)
    assert server.stats.submissions == 1  # nothing billed again
    assert report.ok and [p.name for p in report.items[0].files] == ["fox.mp4", "fox-2.mp4"]
    assert (tmp_path / "fox.mp4").read_bytes() == served(server, task.id, f"{task.id}.mp4")
    with sqlite3.connect(tmp_path / JOURNAL) as conn:
        (version,) = conn.execute(
            "SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        outputs = conn.execute("SELECT outputs FROM items").fetchall()
        files = conn.execute("SELECT key, idx, path, sha256 FROM files").fetchall()
    assert int(version) == 5 and outputs == [(2,)]
    assert files == [("name:fox", 1, "fox-2.mp4", sha((tmp_path / "fox-2.mp4").read_bytes()))]


def _named(request: VideoRequest, name: str) -> Any:
    from apimart_async import BatchItem

    return BatchItem(request=request, name=name)




@pytest.mark.anyio
@pytest.mark.usefixtures("cli_env")
async def test_cli_generate_batch_and_download_fetch_every_output(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .conftest import cli

    server = await make_server(planned(videos=2, images=1))
    url = server.base_url
    status, out, err = await cli(capsys, "generate", "a fox", "--out", str(tmp_path / "g"),
                                 "--base-url", url, "--json")
    assert status == 0, err
    (item,) = json.loads(out)["results"]
    files = [Path(p) for p in item["files"]]
    stem = Path(item["path"]).stem
    assert [p.name for p in files] == [f"{stem}.mp4", f"{stem}-2.mp4", f"{stem}-3.png"]
    assert all(p.exists() for p in files)

    (tmp_path / "in.jsonl").write_text('{"prompt": "an owl", "name": "owl"}\n')
    status, out, err = await cli(capsys, "batch", str(tmp_path / "in.jsonl"),
                                 "--out", str(tmp_path / "b"), "--base-url", url)
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "b").glob("owl*")) == [
        "owl-2.mp4", "owl-3.png", "owl.mp4"]
    assert "and 2 more: owl-2.mp4, owl-3.png" in out + err

    tid = item["task_id"]
    status, out, err = await cli(capsys, "download", tid, "--out", str(tmp_path / "d"),
                                 "--base-url", url)
    assert status == 0, err
    names = [f"{tid}.mp4", f"{tid}-2.mp4", f"{tid}-3.png"]
    assert [line.split(" ")[0] for line in out.splitlines()] == [
        str(tmp_path / "d" / n) for n in names]
    for name, original in zip(names, files, strict=True):
        assert (tmp_path / "d" / name).read_bytes() == original.read_bytes()


@pytest.mark.anyio
async def test_a_missing_or_changed_later_output_is_fetched_again_and_keeps_its_name(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=3))
    fox = _named(VideoRequest("a fox"), "a")
    async with session_for(server) as s:
        assert (await s.run_batch([fox], out_dir=tmp_path)).ok
    (tmp_path / "a-2.mp4").unlink()  # lost
    (tmp_path / "a-3.mp4").write_bytes(b"edited")  # changed by its owner: kept
    # A new item whose own first name is the lost file's: that name is still item a's.
    owl = _named(VideoRequest("an owl"), "a-2")
    async with session_for(server) as s:
        report = await s.run_batch([fox, owl], out_dir=tmp_path)
    assert report.ok
    a, b = report.items
    assert [p.name for p in a.files] == ["a.mp4", "a-2.mp4", "a~2-3.mp4"]
    assert (tmp_path / "a-3.mp4").read_bytes() == b"edited"
    assert a.task_id is not None
    assert (tmp_path / "a-2.mp4").read_bytes() == served(server, a.task_id, f"{a.task_id}-2.mp4")
    assert b.files[0].name not in ("a-2.mp4", "a-3.mp4")


@pytest.mark.anyio
async def test_a_name_journaled_for_a_later_output_is_never_given_to_another_item(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(planned(videos=2))
    fox = _named(VideoRequest("a fox"), "a")
    async with session_for(server) as s:
        assert (await s.run_batch([fox], out_dir=tmp_path)).ok
    (tmp_path / "a-2.mp4").unlink()
    # Item a's second output fails this time (no byte written): its name stays its own.
    server.emulator.inject("download", Fault.http(404))
    owl = _named(VideoRequest("an owl"), "a-2")
    async with session_for(server) as s:
        report = await s.run_batch([fox, owl], out_dir=tmp_path)
    a, b = report.items
    assert a.state is ItemState.COMPLETED and "404" in str(a.reason)
    assert b.ok and [p.name for p in b.files] == ["a-2~2.mp4", "a-2~2-2.mp4"]
    async with session_for(server) as s:
        again = await s.run_batch([fox, owl], out_dir=tmp_path)
    assert again.ok and [p.name for p in again.items[0].files] == ["a.mp4", "a-2.mp4"]


@pytest.mark.anyio
@pytest.mark.usefixtures("cli_env")
async def test_cli_download_stopped_by_a_file_in_the_way_says_what_it_saved(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .conftest import cli

    server = await make_server(planned(videos=2, images=1))
    async with session_for(server) as s:
        task = await s.wait(await s.submit(VideoRequest("a fox")))
    out_dir = tmp_path / "d"
    out_dir.mkdir()
    (out_dir / f"{task.id}-3.png").write_bytes(b"mine")
    status, out, err = await cli(capsys, "download", task.id, "--out", str(out_dir),
                                 "--base-url", server.base_url)
    assert status == 2 and f"{task.id}-3.png" in err and "exists" in err
    assert (out_dir / f"{task.id}-3.png").read_bytes() == b"mine"
    assert [line.split(" ")[0] for line in out.splitlines()] == [
        str(out_dir / f"{task.id}.mp4"), str(out_dir / f"{task.id}-2.mp4")]
    assert "saved 2 file(s)" in err


@pytest.mark.anyio
async def test_stats_downloads_counts_every_file_saved_images_and_repeats_too(
    make_server: MakeServer, tmp_path: Path
) -> None:
    # As README's SessionStats table says: files (not videos), each time one is fetched.
    server = await make_server(planned(videos=2, images=1))
    async with session_for(server) as s:
        task = await s.wait(await s.submit(VideoRequest("a fox")))
        first = await s.download(task, tmp_path / "fox.mp4")
        assert s.stats.downloads == 3
        assert s.stats.bytes_downloaded == sum(f.size for f in first.files)
        await s.download(task, tmp_path / "fox.mp4")
        assert s.stats.downloads == 6
