"""Downloads: resume after cuts, hosts that ignore Range, expiry, atomicity, no credentials."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import pytest

from apimart_async import (
    DownloadError,
    ResultExpiredError,
    Session,
    Task,
    TaskStatus,
    VideoRequest,
)
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, video_bytes

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def completed(s: Session) -> Task:
    return await s.wait(await s.submit(VideoRequest("a fox")))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_download_is_whole_and_keyless(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        result = await s.download(task, tmp_path / "fox.mp4")
    data = (tmp_path / "fox.mp4").read_bytes()
    assert data == video_bytes(task.id, 64 * 1024)
    assert (result.size, result.sha256) == (len(data), sha(data))
    assert leftovers(tmp_path) == ["fox.mp4"]
    assert server.stats.credential_leaks == 0 and server.stats.authorization_headers == []
    assert s.stats.downloads == 1 and s.stats.bytes_downloaded == len(data)


async def test_cut_downloads_resume_with_range(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        server.emulator.inject("download", Fault.cut(0.3), Fault.cut(0.5))
        result = await s.download(task, tmp_path / "fox.mp4")
    assert result.resumed == 2 and result.restarted == 0
    assert server.stats.range_requests == 2
    assert result.sha256 == sha(video_bytes(task.id, 64 * 1024))
    assert leftovers(tmp_path) == ["fox.mp4"]


async def test_host_ignoring_range_still_gives_an_identical_file(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        server.emulator.inject("download", Fault.cut(0.5), Fault.ignore_range())
        result = await s.download(task, tmp_path / "fox.mp4")
    assert server.stats.range_requests == 1  # asked, and got the whole file back
    assert (tmp_path / "fox.mp4").read_bytes() == video_bytes(task.id, 64 * 1024)
    assert result.resumed == 0


async def test_no_partial_file_at_the_destination_when_it_fails(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        server.emulator.inject("download", *[Fault.cut(0.0)] * 10)
        with pytest.raises(DownloadError) as info:
            await s.download(task, tmp_path / "fox.mp4")
    assert info.value.task_id == task.id
    assert not (tmp_path / "fox.mp4").exists()


async def test_a_later_call_resumes_the_part_file(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        # max_attempts (5) failures in a row without progress make the first call give up.
        server.emulator.inject("download", Fault.cut(0.6), *[Fault.cut(0.0)] * 5)
        with pytest.raises(DownloadError):
            await s.download(task, tmp_path / "fox.mp4")
        # A new attempt (a new run, say) picks up the bytes already on disk.
        result = await s.download(task, tmp_path / "fox.mp4")
    assert result.resumed == 1
    assert result.sha256 == sha(video_bytes(task.id, 64 * 1024))


async def test_expired_link_is_refreshed_once(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        polls = server.stats.polls[task.id]
        server.emulator.expire(task.id)  # the file host now answers 403 to the old link
        result = await s.download(task, tmp_path / "fox.mp4")
    assert result.refreshed
    assert server.stats.polls[task.id] == polls + 1
    assert result.sha256 == sha(video_bytes(task.id, 64 * 1024))


async def test_link_past_expires_at_is_refreshed_before_trying(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        stale = Task(id=task.id, status=TaskStatus.COMPLETED, video_urls=task.video_urls,
                     expires_at=1)
        result = await s.download(stale, tmp_path / "fox.mp4")
    assert result.refreshed and server.stats.downloads == 1


async def test_link_that_stays_expired_is_result_expired(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(url_ttl=-1000))
    async with session_for(server) as s:
        task = await completed(s)
        with pytest.raises(ResultExpiredError) as info:
            await s.download(task, tmp_path / "fox.mp4")
    assert info.value.task_id == task.id
    assert not (tmp_path / "fox.mp4").exists()


async def test_download_by_id_into_a_directory(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server) as s:
        task = await completed(s)
        result = await s.download(task.id, tmp_path)
    assert result.path == tmp_path / f"{task.id}.mp4"


async def test_unfinished_task_cannot_be_downloaded(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(duration=(500, 600)))
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x"))
        with pytest.raises(DownloadError, match="not completed"):
            await s.download(sub.task_id, tmp_path / "x.mp4")


async def test_downloads_have_their_own_limit(server: EmulatorServer, tmp_path: Path) -> None:
    async with session_for(server, download_concurrency=2) as s:
        tasks = [await s.wait(sub) for sub in await s.submit_many(
            [VideoRequest(f"v{i}") for i in range(6)])]  # type: ignore[arg-type]
        # Each download is held open a while, so they overlap unless limited.
        server.emulator.inject("download", *[Fault.slow(0.05)] * 6)
        async with anyio.create_task_group() as tg:
            for t in tasks:
                tg.start_soon(s.download, t, tmp_path / f"{t.id}.mp4")
    assert server.stats.peak_downloads_in_flight == 2
    assert len(list(tmp_path.glob("*.mp4"))) == 6
    assert server.stats.credential_leaks == 0


def test_download_concurrency_is_validated() -> None:
    from apimart_async import ValidationError

    with pytest.raises(ValidationError, match="download_concurrency"):
        Session(KEY, download_concurrency=0)


@pytest.mark.parametrize("borrowed", [False, True], ids=["owned", "borrowed"])
async def test_the_key_goes_to_the_api_host_only(
    make_server: MakeServer, tmp_path: Path, borrowed: bool
) -> None:
    # Owned: the credentials live in a session of their own that only API requests
    # use; borrowed: they are added per API request. Downloads carry none either way.
    import aiohttp

    server = await make_server(EmulatorConfig(api_key=KEY))  # any other key: 401
    async with aiohttp.ClientSession() as http:
        async with session_for(server, http_session=http if borrowed else None) as s:
            task = await completed(s)
            await s.download(task, tmp_path / "fox.mp4")
            await s.get_task(task.id)
        assert not http.closed
    assert server.stats.credential_leaks == 0 and server.stats.authorization_headers == []
    api = [r for r in server.emulator.request_log if r.route in ("submit", "task")]
    assert len(api) >= 3 and all(r.authorization and r.status == 200 for r in api)
