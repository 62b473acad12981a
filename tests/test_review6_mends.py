"""Defects found by the sixth README-only review, each pinned against the emulator."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from apimart_async import (
    DecodeError,
    ResultExpiredError,
    TaskStatus,
    VideoRequest,
)
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, TaskPlan

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio


async def test_a_success_answer_naming_a_task_and_an_error_follows_the_task(
    server: EmulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The task was created and billed; the answer also says "error". Taken for a
    # rejection, a batch would drop the paid task (and a re-run pay again).
    async with session_for(server) as s:
        server.emulator.inject("submit", Fault.created_with_error())
        sub = await s.submit(VideoRequest("a fox"))
        assert (await s.wait(sub)).status is TaskStatus.COMPLETED
        server.emulator.inject("submit", Fault.created_with_error())
        report = await s.run_batch([VideoRequest("a cat")], out_dir=tmp_path)
    assert report.completed == 1 and report.items[0].task_id
    assert server.stats.submissions == 2
    assert "beside an error" in caplog.text


async def test_an_answer_with_an_id_but_no_status_string_says_so(
    server: EmulatorServer,
) -> None:
    from apimart_async._core.wire import parse_submit

    with pytest.raises(DecodeError, match="not the documented shape") as shaped:
        parse_submit(200, b'{"code":200,"data":[{"task_id":"task_ok","status":null}]}')
    with pytest.raises(DecodeError, match="has no task_id"):
        parse_submit(200, b'{"code":200,"data":[{"status":"submitted"}]}')
    assert "task_ok" in shaped.value.snippet


async def test_the_emulator_takes_a_documented_size_image_as_a_data_uri(
    server: EmulatorServer,
) -> None:
    # 1.5 MB of PNG (the documented cap is 10 MB an image): past aiohttp's default
    # 1 MiB request body, which made the emulator answer 413 to a valid submission.
    import base64

    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * (1536 * 1024)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    async with session_for(server) as s:
        # Refused once before it is read (a safe retry): the retry sends it whole again
        # (the SDK streams a body this large, a fresh stream every attempt).
        server.emulator.inject("submit", Fault.http(503))
        sub = await s.submit(VideoRequest("a fox", image_urls=[uri]))
    assert server.emulator.task(sub.task_id).body["image_urls"] == (uri,)
    assert server.stats.requests["submit"] == 2


async def test_a_completed_answer_without_a_link_says_so(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("a fox"))
        for _ in range(2):  # (the answer downloaded, and its refresh)
            server.emulator.inject("task", Fault.task_status("completed"))
        task = await s.get_task(sub)
        assert task.status is TaskStatus.COMPLETED and not task.outputs
        with pytest.raises(ResultExpiredError, match="carries no result link"):
            await s.download(task, tmp_path / "fox.mp4")


@pytest.mark.parametrize("link", [
    "https://[oops/v.mp4",  # no URL parser takes it
    "https://{key}@files.example.com/v.mp4",  # the key as its user: scrubbed, then refused
    "https://a..b/v.mp4",  # an empty label: IDNA (the resolver) refuses it
    "https://" + "a" * 64 + ".com/v.mp4",  # a label over 63 characters
    "https://\ud800.com/v.mp4",  # not Unicode text (the journal could not store it)
    "https://files.example.com/\ud800.mp4",
])
async def test_a_malformed_result_link_fails_its_item_not_the_batch(
    server: EmulatorServer, tmp_path: Path, link: str
) -> None:
    async with session_for(server) as s:
        server.emulator.inject("task", Fault.result_url(link.format(key=KEY)))
        report = await s.run_batch([VideoRequest("a fox"), VideoRequest("an owl")],
                                   out_dir=tmp_path)
    assert report.completed == 1 and len(report.items) == 2, report.items
    reasons = [item.reason or "" for item in report.items]
    assert sum("result link" in reason for reason in reasons) == 1, reasons
    assert not any(KEY in reason for reason in reasons)
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".mp4"]) == 1


def test_a_url_no_parser_takes_is_a_validation_error() -> None:
    from apimart_async import Session, ValidationError

    with pytest.raises(ValidationError, match=r"image_urls\[0\]: is not a valid URL"):
        VideoRequest("x", image_urls=["https://[oops/v.png"])
    with pytest.raises(ValidationError, match="base_url: is not a valid URL"):
        Session(KEY, base_url="http://[oops")
    with pytest.raises(ValidationError, match="base_url: has a host name no resolver"):
        Session(KEY, base_url="https://a..b")


@pytest.mark.parametrize("location", ["http://[::1/x.mp4", "https://a..b/x.mp4"])
async def test_a_redirect_to_a_malformed_location_is_a_download_error(
    server: EmulatorServer, tmp_path: Path, location: str
) -> None:
    from apimart_async import DownloadError

    async with session_for(server) as s:
        task = await s.wait(await s.submit(VideoRequest("a fox")))
        server.emulator.inject("download", Fault.redirect(location, 302))
        with pytest.raises(DownloadError):
            await s.download(task, tmp_path / "fox.mp4")


async def test_a_task_id_that_is_not_unicode_text_is_refused(server: EmulatorServer) -> None:
    from apimart_async import ValidationError

    async with session_for(server) as s:
        with pytest.raises(ValidationError, match="task_id: must be Unicode text"):
            await s.get_task("task_\ud800")
    assert not server.emulator.request_log


def test_a_nested_extra_cannot_be_refilled_through_init() -> None:
    r = VideoRequest("a", extra={"o": [1, 2], "n": {"k": 1}})
    with pytest.raises(TypeError, match="read-only"):
        r.extra["o"].__init__(["x"])
    with pytest.raises(TypeError, match="read-only"):
        r.extra["n"].__init__({"z": 1})
    assert r.to_body()["o"] == [1, 2] and r.to_body()["n"] == {"k": 1}


async def test_status_shows_server_text_without_terminal_controls(
    server: EmulatorServer,
) -> None:
    from .test_cli import run_cli

    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("a fox"))
    server.emulator.inject("task", Fault.result_url(
        "https://x.example/\x1b[31mRED\x1b]0;pwned\x07\r\nFAKE LINE \ud800"))
    result = await run_cli("status", sub.task_id, "--base-url", server.base_url,
                           APIMART_API_KEY=KEY)
    assert result.returncode == 0, result.stderr
    assert b"\x1b" not in result.stdout and b"\r" not in result.stdout
    assert b"\\x1b[31mRED" in result.stdout and b"FAKE LINE" in result.stdout
    assert result.stdout.count(b"\n") == 2  # the task's line and its link's


async def forty_second_tasks(make_server: MakeServer) -> EmulatorServer:
    """An emulator whose every task queues 1 s and runs 40 s: a schedule of a few polls."""
    return await make_server(EmulatorConfig(
        planner=lambda body, index: TaskPlan(duration=40, queue_time=1)))


@pytest.mark.parametrize("early_watches", [0, 3])
async def test_watching_a_task_again_polls_it_once_at_a_time(
    make_server: MakeServer, early_watches: int
) -> None:
    # Each watch left before the task's first poll left its queue item behind, numbered
    # like the next watch's (each of them sent a GET at the same moment), and took the
    # task's submission time with it (the next watch polled it at once, then often).
    server = await forty_second_tasks(make_server)
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("a fox"))
        for _ in range(early_watches):
            async with s.watch([sub]):
                pass
        await s.wait(sub, timeout=600)
    polls = [r.time for r in server.emulator.request_log if r.route == "task"]
    # The control run's polls (4, or 5 when one lands a hair before the end).
    assert len(polls) <= 5 and polls[1] - polls[0] > 10, [round(p - polls[0], 2) for p in polls]


@pytest.mark.parametrize("early_watches", [0, 3])
async def test_watching_another_sessions_task_again_polls_it_once_at_a_time(
    make_server: MakeServer, early_watches: int
) -> None:
    # A task this session did not submit is polled at once when watched: every watch
    # left before that poll left an item due at once, numbered like the next one's.
    server = await forty_second_tasks(make_server)
    async with session_for(server) as other:
        sub = await other.submit(VideoRequest("a fox"))
    async with session_for(server) as s:
        for _ in range(early_watches):
            async with s.watch([sub.task_id]):
                pass
        await s.wait(sub.task_id, timeout=600)
    polls = [r.time for r in server.emulator.request_log if r.route == "task"]
    # Its schedule (an unknown age: soon, then further apart), never two at once.
    assert all(b - a > 0.2 for a, b in itertools.pairwise(polls)), [
        round(p - polls[0], 2) for p in polls]


async def test_a_client_giving_up_on_a_slow_submission_logs_no_emulator_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from apimart_async import APITimeoutError, Timeout

    server = EmulatorServer()
    async with server, session_for(server, timeout=Timeout(total=0.05)) as s:
        server.emulator.inject("submit", Fault.slow(0.15))
        with pytest.raises(APITimeoutError) as info:
            await s.submit(VideoRequest("a fox"))
        assert info.value.submission_ambiguous
    # (Leaving the server waited for its handler, which ends after the fault's delay.)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.exc_info]
    assert server.stats.submissions == 0


async def test_the_journal_stores_text_that_is_not_unicode_with_escapes(tmp_path: Path) -> None:
    # Server text quoted in an error can hold a lone surrogate; SQLite cannot store it,
    # and the run must not end on it.
    from apimart_async._batch.journal import ItemState, Journal, JournalRow

    async with Journal(tmp_path / "j.sqlite") as journal:
        await journal.add([(0, JournalRow(key="k", name=None, request='{"prompt":"x"}',
                                          idempotency_key="i", state=ItemState.PENDING))])
        await journal.update("k", ItemState.FAILED, error="file host said \ud800")
        row = (await journal.load())["k"]
    assert row.state is ItemState.FAILED and row.error == "file host said \\ud800"
