"""Command-line defects found by an attack review: each test reproduces one.

`main()` runs in-process on a worker thread (its own event loop), against the emulator
on the test's loop, as in test_cli_errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from apimart_async import ValidationError, VideoRequest
from apimart_async._cli.main import main
from apimart_async.testing import EmulatorConfig, EmulatorServer, TaskPlan, video_bytes

from .conftest import MakeServer, cli, session_for

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _key(cli_env: None) -> None:
    """The CLI reads the canary key from the environment, no base URL."""


async def test_download_never_replaces_a_different_file(
    server: EmulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with session_for(server) as s:
        task = await s.wait(await s.submit(VideoRequest("a")))
        mine = tmp_path / "mine.mp4"
        mine.write_bytes(b"my own film")
        with pytest.raises(ValidationError, match=r"dest: .*mine\.mp4 exists"):
            await s.download(task, mine)
        assert mine.read_bytes() == b"my own film"
        assert not list(tmp_path.glob(".*.part"))
        # The same video again is harmless; overwrite=True replaces.
        video = video_bytes(task.id, 64 * 1024)
        same = tmp_path / "same.mp4"
        await s.download(task, same)
        again = await s.download(task, same)
        assert same.read_bytes() == video and again.size == len(video)
        await s.download(task, mine, overwrite=True)
        assert mine.read_bytes() == video
    out = tmp_path / "d"
    out.mkdir()
    (out / f"{task.id}.mp4").write_bytes(b"my own film")
    status, _, err = await cli(capsys, "download", task.id, "--out", str(out),
                               "--base-url", server.base_url)
    assert status == 2 and f"{task.id}.mp4 exists" in err and "--overwrite" in err
    assert (out / f"{task.id}.mp4").read_bytes() == b"my own film"
    status, _, err = await cli(capsys, "download", task.id, "--out", str(out), "--overwrite",
                               "--base-url", server.base_url)
    assert status == 0, err
    assert (out / f"{task.id}.mp4").read_bytes() == video


async def test_downloading_a_failed_task_does_not_promise_a_resume(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def planner(body: Mapping[str, Any], index: int) -> TaskPlan:
        return TaskPlan(outcome="failed")

    server = await make_server(EmulatorConfig(planner=planner))
    async with session_for(server) as s:
        submission = await s.submit(VideoRequest("doomed"))
        async with s.watch([submission.task_id]) as updates:
            async for update in updates:
                if update.final:
                    break
    status, _, err = await cli(capsys, "download", submission.task_id, "--out", str(tmp_path),
                               "--base-url", server.base_url)
    assert status == 1
    assert "failed" in err and "no video" in err and "resume" not in err, err


async def batch(capsys: pytest.CaptureFixture[str], server: EmulatorServer, file: Path,
                out: Path, *extra: str) -> tuple[int, str, str]:
    return await cli(capsys, "batch", str(file), "--out", str(out), "--base-url",
                     server.base_url, *extra)


async def test_items_never_sent_are_not_counted_failed(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = await make_server(EmulatorConfig(balance=1))
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    status, out, _ = await batch(capsys, server, tmp_path / "p.txt", tmp_path / "o",
                                 "--concurrency", "1")
    assert status == 3
    assert "3 items: 1 downloaded, 0 failed, 0 ambiguous, 2 not sent;" in out, out
    assert "not submitted: not submitted" not in out, out


async def test_an_ambiguous_item_names_the_flag_that_resends_it(
    server: EmulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from apimart_async.testing import Fault

    server.emulator.inject("submit", Fault.lost_answer())
    (tmp_path / "p.txt").write_text("one\n")
    status, out, _ = await batch(capsys, server, tmp_path / "p.txt", tmp_path / "o")
    assert status == 1 and "1 ambiguous" in out and "--resubmit-ambiguous" in out, out


async def test_a_changed_named_item_is_reported_by_file_and_line(
    server: EmulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "b.jsonl"
    file.write_text('{"prompt": "a", "name": "intro"}\n\n{"prompt": "b", "name": "outro"}\n')
    status, _, err = await batch(capsys, server, file, tmp_path / "o")
    assert status == 0, err
    file.write_text('{"prompt": "a", "name": "intro"}\n\n{"prompt": "c", "name": "outro"}\n')
    status, _, err = await batch(capsys, server, file, tmp_path / "o")
    assert status == 2 and f"{file}:3: " in err and "requests[" not in err, err
    assert "outro" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["batch", "download"])
async def test_out_naming_a_file_is_a_usage_error(
    server: EmulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    (tmp_path / "p.txt").write_text("one\n")
    (tmp_path / "afile").write_text("not a folder")
    first = str(tmp_path / "p.txt") if command == "batch" else "task_x"
    status, _, err = await cli(capsys, command, first, "--out", str(tmp_path / "afile"),
                               "--base-url", server.base_url)
    assert status == 2 and "--out" in err and "not a folder" in err, err
    assert server.stats.submissions == 0


def test_an_unknown_flag_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--bogus"])
    assert caught.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_a_paid_earlier_task_left_unfinished_fails_the_run() -> None:
    from apimart_async._batch.journal import ItemState
    from apimart_async._batch.runner import BatchReport, ItemResult
    from apimart_async._cli.main import report_exit_status, report_json

    def result(index: int, state: ItemState) -> ItemResult:
        return ItemResult(index=index, key=f"k{index}", name=None, request=VideoRequest("a"),
                          state=state, task_id=f"task_{index}")

    done = BatchReport(items=(result(0, ItemState.DOWNLOADED),), journal=Path("j"),
                       bytes_downloaded=0, retries=0, rate_limited=0)
    stuck = BatchReport(items=done.items, earlier=(result(1, ItemState.COMPLETED),),
                        journal=Path("j"), bytes_downloaded=0, retries=0, rate_limited=0)
    assert report_exit_status(done) == 0 and report_exit_status(stuck) == 1
    data = report_json(stuck)
    assert data["earlier"][0]["task_id"] == "task_1" and data["pending"] == 0
