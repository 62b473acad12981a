"""The key stays secret everywhere (#12 item 3): server text that echoes it is scrubbed
before it reaches a Task, an exception, the journal or the terminal; the CLI takes the key
without putting it in ``ps``; no exception chain keeps aiohttp's request objects.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio
import pytest

from apimart_async import (
    APIMartError,
    DownloadError,
    RetryPolicy,
    TaskFailedError,
    VideoRequest,
)
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault

from .conftest import KEY, MakeServer, session_for
from .test_cli import env, run_cli

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def test_a_failure_message_echoing_the_key_is_scrubbed(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("a fox"))
        server.emulator.inject("task", Fault.echo_key())
        task = await s.get_task(sub)
        assert task.error is not None and "[redacted]" in task.error.message
        assert KEY not in repr(task)
        server.emulator.inject("task", Fault.echo_key())
        with pytest.raises(TaskFailedError) as caught:
            await s.wait(sub)
    assert "Authorization: Bearer [redacted]" in str(caught.value)
    assert KEY not in str(caught.value) and KEY not in repr(caught.value)


async def test_an_echoed_key_reaches_neither_journal_nor_report(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        server.emulator.inject("task", Fault.echo_key())
        report = await s.run_batch([VideoRequest("a fox")], out_dir=tmp_path / "out",
                                   journal=tmp_path / "j.sqlite")
    [item] = report.items
    assert item.error is not None and "[redacted]" in str(item.error)
    assert item.reason is not None and "[redacted]" in item.reason
    assert KEY not in repr(report) and KEY not in str(item.error)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


async def test_the_cli_summary_never_prints_an_echoed_key(
    server: EmulatorServer, tmp_path: Path
) -> None:
    requests = tmp_path / "r.txt"
    requests.write_text("a fox\n")
    server.emulator.inject("task", Fault.echo_key())
    result = await run_cli("batch", str(requests), "--out", str(tmp_path / "out"),
                           "--base-url", server.base_url, APIMART_API_KEY=KEY)
    output = result.stdout + result.stderr
    assert b"[redacted]" in output, output
    assert KEY.encode() not in output


# -- how the CLI takes the key --------------------------------------------------------


async def status(server: EmulatorServer, *args: str, stdin: bytes | None = None,
                 ) -> tuple[int, str, str]:
    """Run ``status`` for a fresh task with `args` (no APIMART_* variables set)."""
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x"))
    result = await anyio.run_process(
        [sys.executable, "-m", "apimart_async", "status", sub.task_id,
         "--base-url", server.base_url, *args],
        input=stdin, check=False, env=env(),
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.fixture
async def strict(make_server: MakeServer) -> EmulatorServer:
    """An emulator that accepts only the canary key."""
    return await make_server(EmulatorConfig(api_key=KEY))


async def test_the_key_is_read_from_a_file(strict: EmulatorServer, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    code, _out, err = await status(strict, "--api-key-file", str(key_file))
    assert code == 0, err
    assert "warning" not in err


async def test_the_key_is_read_from_standard_input(strict: EmulatorServer) -> None:
    code, _out, err = await status(strict, "--api-key", "-", stdin=KEY.encode() + b"\n")
    assert code == 0, err
    assert "warning" not in err


async def test_a_key_on_the_command_line_works_but_warns(strict: EmulatorServer) -> None:
    code, _out, err = await status(strict, "--api-key", KEY)
    assert code == 0, err
    assert "warning" in err and "ps" in err
    assert KEY not in err


async def test_an_empty_key_file_is_a_clear_usage_error(
    strict: EmulatorServer, tmp_path: Path
) -> None:
    (tmp_path / "key").write_text("\n")
    code, _out, err = await status(strict, "--api-key-file", str(tmp_path / "key"))
    assert code == 2 and "api_key" in err


# -- no exception chain keeps aiohttp's objects (which hold request headers) ----------


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [item.__cause__, item.__context__]


def assert_clean(exc: BaseException) -> None:
    for link in chain(exc):
        assert not isinstance(link, aiohttp.ClientError), repr(link)
        assert KEY not in repr(link) and KEY not in str(link)
        assert not any(isinstance(a, (aiohttp.ClientResponse, aiohttp.RequestInfo))
                       for a in getattr(link, "args", ())), repr(link)


async def test_api_errors_carry_no_aiohttp_chain(server: EmulatorServer) -> None:
    async with session_for(server, retry=RetryPolicy(max_attempts=2)) as s:
        sub = await s.submit(VideoRequest("x"))
        server.emulator.inject("task", *[Fault.reset()] * 6)
        with pytest.raises(APIMartError) as caught:
            await s.get_task(sub)
    assert_clean(caught.value)


async def test_download_errors_carry_no_aiohttp_chain(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server, retry=RetryPolicy(max_attempts=2)) as s:
        task = await s.wait(await s.submit(VideoRequest("x")))
        server.emulator.inject("download", *[Fault.reset()] * 6)
        with pytest.raises(DownloadError) as caught:
            await s.download(task, tmp_path / "x.mp4")
    assert_clean(caught.value)
