"""Defects found by the sixth README-only review, each pinned against the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from apimart_async import (
    DecodeError,
    ResultExpiredError,
    Submission,
    TaskStatus,
    VideoRequest,
)
from apimart_async.testing import EmulatorServer, Fault

from .conftest import session_for

pytestmark = pytest.mark.anyio


async def test_a_success_answer_naming_a_task_and_an_error_is_ambiguous(
    server: EmulatorServer,
) -> None:
    # The task was created and billed; the answer also says "error". Taking it for a
    # rejection (a 400, not ambiguous) would let a batch drop it and submit it again.
    server.emulator.honour_idempotency_key = True
    async with session_for(server) as s:
        server.emulator.inject("submit", Fault.created_with_error())
        with pytest.raises(DecodeError, match=r"names task 'task_\w+' and an error") as info:
            await s.submit(VideoRequest("a fox"), idempotency_key="fox-1")
        assert info.value.submission_ambiguous
        # Looked up again with the same key, the one task is found, not a second made.
        again = await s.submit(VideoRequest("a fox"), idempotency_key="fox-1")
        assert isinstance(again, Submission) and again.task_id in str(info.value)
        server.emulator.inject("submit", Fault.created_with_error())
        outcomes = await s.submit_many([VideoRequest("a cat")])
        assert isinstance(outcomes[0], DecodeError) and outcomes[0].submission_ambiguous
    assert server.stats.submissions == 2 and server.stats.duplicate_submissions == 0


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
