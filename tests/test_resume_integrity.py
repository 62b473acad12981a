"""A download is whole only when its total is known and every byte up to it arrived,
from one version of the file (#12 review F1-F3). The file host here is a tiny scripted
aiohttp server on 127.0.0.1 (the emulator's `Fault.result_url` points the task at it):
each request gets the next scripted answer, and may be cut after some bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from apimart_async import DownloadError, VideoRequest
from apimart_async.testing import EmulatorServer, Fault

from .conftest import session_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 400
OTHER = b"\x00\x00\x00\x18ftypmp42" + b"Z" * 49_893  # a shorter, different version


class Host:
    """Answers request n with script[n] (the last one repeats): (status, headers, body,
    bytes to send before cutting or None)."""

    def __init__(self, script: list[tuple[int, dict[str, str], bytes, int | None]]) -> None:
        self.script = script
        self.requests: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        status, headers, body, cut = self.script[min(len(self.requests), len(self.script)) - 1]
        headers = {"Content-Length": str(len(body)), **headers}
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        await response.write(body if cut is None else body[:cut])
        if cut is not None:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response


@pytest.fixture
async def host_url() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(host: Host) -> str:
        app = web.Application()
        app.router.add_get("/v.mp4", host.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v.mp4"

    yield start
    for runner in runners:
        await runner.cleanup()


async def fetch(server: EmulatorServer, url: str, dest: Path) -> Any:
    async with session_for(server) as s:
        fox = await s.wait(await s.submit(VideoRequest("a fox")))
        server.emulator.inject("task", Fault.result_url(url))
        return await s.download(fox.id, dest)


def whole(etag: str = '"A"') -> tuple[int, dict[str, str], bytes, int | None]:
    return 200, {"ETag": etag}, VIDEO, None


async def test_a_206_to_a_plain_get_with_an_unknown_total_is_not_whole(
    server: EmulatorServer, tmp_path: Path, host_url: Any
) -> None:
    host = Host([(206, {"Content-Range": "bytes 0-999/*", "ETag": '"A"'}, VIDEO[:1000], None)])
    with pytest.raises(DownloadError):
        await fetch(server, await host_url(host), tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()


async def test_a_206_to_a_plain_get_with_a_known_total_goes_on_to_the_end(
    server: EmulatorServer, tmp_path: Path, host_url: Any
) -> None:
    # The control: a 206 with a numeric total is a piece, and the rest is asked for.
    size = len(VIDEO)
    host = Host([
        (206, {"Content-Range": f"bytes 0-999/{size}", "ETag": '"A"'}, VIDEO[:1000], None),
        (206, {"Content-Range": f"bytes 1000-{size - 1}/{size}", "ETag": '"A"'},
         VIDEO[1000:], None),
    ])
    result = await fetch(server, await host_url(host), tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == VIDEO and result.resumed == 1


async def test_a_resume_announcing_another_total_starts_over(
    server: EmulatorServer, tmp_path: Path, host_url: Any
) -> None:
    cut = 49_805
    host = Host([
        (200, {"ETag": '"A"'}, VIDEO, cut),
        (206, {"Content-Range": f"bytes {cut}-{len(OTHER) - 1}/{len(OTHER)}", "ETag": '"A"'},
         OTHER[cut:], None),
        whole(),
    ])
    result = await fetch(server, await host_url(host), tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == VIDEO
    assert result.restarted == 1 and "Range" not in host.requests[-1]


async def test_the_total_first_announced_is_recorded_beside_the_part(
    server: EmulatorServer, tmp_path: Path, host_url: Any
) -> None:
    host = Host([(200, {"ETag": '"A"'}, VIDEO, 30_000), (404, {}, b"gone", None)])
    with pytest.raises(DownloadError):
        await fetch(server, await host_url(host), tmp_path / "v.mp4")
    record = json.loads((tmp_path / ".v.mp4.part.meta").read_text())
    assert record["total"] == len(VIDEO) and record["validator"] == '"A"'


async def test_a_resume_of_another_version_is_discarded_and_started_over(
    server: EmulatorServer, tmp_path: Path, host_url: Any
) -> None:
    cut, size = 40_000, len(VIDEO)
    other = VIDEO[:cut] + b"Z" * (size - cut)
    host = Host([
        (200, {"ETag": '"A"'}, VIDEO, cut),
        # If-Range "A" ignored: the rest of version B.
        (206, {"Content-Range": f"bytes {cut}-{size - 1}/{size}", "ETag": '"B"'},
         other[cut:], None),
        whole(),
    ])
    result = await fetch(server, await host_url(host), tmp_path / "v.mp4")
    assert host.requests[1]["If-Range"] == '"A"'
    assert (tmp_path / "v.mp4").read_bytes() == VIDEO
    assert result.restarted == 1


async def test_a_host_that_never_keeps_one_version_is_given_up_on(
    server: EmulatorServer, tmp_path: Path, host_url: Any
) -> None:
    cut, size = 40_000, len(VIDEO)
    host = Host([
        (200, {"ETag": '"A"'}, VIDEO, cut),
        (206, {"Content-Range": f"bytes {cut}-{size - 1}/{size}", "ETag": '"B"'},
         VIDEO[cut:], None),
    ] * 20)
    with pytest.raises(DownloadError, match="restarts"):
        await fetch(server, await host_url(host), tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()


async def test_a_416_naming_another_total_is_not_taken_as_whole(
    server: EmulatorServer, tmp_path: Path, host_url: Any
) -> None:
    cut = 49_905
    host = Host([
        (200, {"ETag": '"A"'}, VIDEO, cut),
        (416, {"Content-Range": f"bytes */{cut}"}, b"", None),
        whole(),
    ])
    await fetch(server, await host_url(host), tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == VIDEO
