"""Downloads against a misbehaving file host: short and misplaced 206s, 5xx, If-Range.

Each fault is the emulator's file host doing it (`Fault.short_range`, `wrong_range`,
`http(503)`), and each check reads what the host received, not what we think we sent.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from apimart_async import DownloadError, RetryPolicy, Session, Task, VideoRequest
from apimart_async.testing import EmulatorServer, Fault, video_bytes

from .conftest import session_for

pytestmark = pytest.mark.anyio

SIZE = 64 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def completed(s: Session) -> Task:
    return await s.wait(await s.submit(VideoRequest("a fox")))


def whole(path: Path, task: Task) -> bool:
    return path.read_bytes() == video_bytes(task.id, SIZE)


async def test_short_206_is_continued_until_the_file_is_whole(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        # A cut makes the next request a resume; that resume gets a short (valid) 206.
        server.emulator.inject("download", Fault.cut(0.5), Fault.short_range(0.5))
        result = await s.download(task, tmp_path / "fox.mp4")
    assert whole(tmp_path / "fox.mp4", task)
    assert result.sha256 == sha(video_bytes(task.id, SIZE))
    # Cut, short 206 (a quarter of the file), then the last quarter.
    assert server.stats.requests["download"] == 3 and server.stats.range_requests == 2


async def test_a_host_serving_in_small_pieces_is_followed_to_the_end(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # More short answers in a row than max_attempts: each one is progress, not a failure.
    async with session_for(server, retry=RetryPolicy(max_attempts=3)) as s:
        task = await completed(s)
        server.emulator.inject("download", Fault.cut(0.1), *[Fault.short_range(0.3)] * 8)
        await s.download(task, tmp_path / "fox.mp4")
    assert whole(tmp_path / "fox.mp4", task)
    assert server.emulator.pending_faults("download") == 0


async def test_206_at_the_wrong_offset_restarts_the_file(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        server.emulator.inject("download", Fault.cut(0.5), Fault.wrong_range())
        result = await s.download(task, tmp_path / "fox.mp4")
    # Appending bytes from offset 0 after the first half would corrupt the video.
    assert whole(tmp_path / "fox.mp4", task)
    assert result.restarted == 1
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("fault", [Fault.http(503), Fault.http(502), Fault.http(429),
                                   Fault.html(500), Fault.reset()])
async def test_file_host_transient_failures_are_retried(
    server: EmulatorServer, tmp_path: Path, fault: Fault
) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        server.emulator.inject("download", fault, fault)
        await s.download(task, tmp_path / "fox.mp4")
    assert whole(tmp_path / "fox.mp4", task)
    assert server.stats.requests["download"] == 3
    assert server.emulator.pending_faults("download") == 0


async def test_file_host_5xx_gives_up_after_max_attempts(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server, retry=RetryPolicy(max_attempts=3)) as s:
        task = await completed(s)
        server.emulator.inject("download", *[Fault.http(503)] * 5)
        with pytest.raises(DownloadError, match="503") as info:
            await s.download(task, tmp_path / "fox.mp4")
    assert info.value.task_id == task.id
    assert server.stats.requests["download"] == 3
    assert not (tmp_path / "fox.mp4").exists()


async def test_resume_sends_if_range_with_the_files_etag(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        server.emulator.inject("download", Fault.cut(0.3), Fault.cut(0.5))
        await s.download(task, tmp_path / "fox.mp4")
    etag = '"' + sha(video_bytes(task.id, SIZE))[:16] + '"'
    # Both resumes named the version they continue, so a changed file is not spliced.
    assert server.stats.if_range_headers == [etag, etag]
    assert whole(tmp_path / "fox.mp4", task)
