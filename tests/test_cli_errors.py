"""The command line's errors: one line saying what to do, and a distinct exit status.

`main()` runs in-process on a worker thread (its own event loop), against the emulator
on the test's loop; retry delays are zero here, so a dead port fails fast.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from apimart_async.testing import EmulatorConfig, EmulatorServer

from .conftest import KEY, MakeServer, cli

pytestmark = pytest.mark.anyio
DEAD = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused


@pytest.fixture(autouse=True)
def _key(cli_env: None) -> None:
    """The CLI reads the canary key from the environment, no base URL."""


def one_line(err: str) -> str:
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def test_unknown_task_is_one_line_and_exit_1(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = await cli(capsys, "status", "task_nope", "--base-url", server.base_url)
    assert status == 1
    line = one_line(err)
    assert "no such task" in line and "check the task id" in line and KEY not in line


@pytest.mark.parametrize("command", [["status", "task_x"], ["download", "task_x"]])
async def test_dead_port_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    extra = ["--out", str(tmp_path)] if command[0] == "download" else []
    status, _, err = await cli(capsys, *command, *extra, "--base-url", DEAD)
    assert status == 1
    # A notice at the first retry (not after the retries' silence), then the verdict.
    notice, line = err.strip().splitlines()
    assert notice.startswith("apimart-async: cannot connect to 127.0.0.1:1 yet"), notice
    assert "retrying" in notice
    line = one_line(line)
    assert "cannot reach the API" in line and "--base-url" in line, line


@pytest.mark.parametrize("command", ["generate", "batch"])
async def test_dead_port_batch_leaves_items_pending_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    (tmp_path / "p.txt").write_text("a fox\n")
    what = "a fox" if command == "generate" else str(tmp_path / "p.txt")
    status, out, err = await cli(capsys, command, what, "--out", str(tmp_path / "o"),
                                 "--base-url", DEAD)
    assert status == 1
    assert "Traceback" not in err + out
    assert "pending" in out and "could not connect" in out


async def test_rejected_key_exits_3(
    make_server: MakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(api_key="the-right-key"))
    status, _, err = await cli(capsys, "status", "task_x", "--base-url", server.base_url)
    assert status == 3
    line = one_line(err)
    assert line.startswith("apimart-async: API key rejected") and "APIMART_API_KEY" in line
    assert KEY not in line

    status, out, _ = await cli(capsys, "generate", "a fox", "--out", str(tmp_path),
                               "--base-url", server.base_url)
    assert status == 3 and out.startswith("API key rejected")


async def test_balance_exhausted_mid_batch_is_the_headline_exit_3_and_rerun_resumes(
    make_server: MakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(balance=2))
    (tmp_path / "p.txt").write_text("".join(f"clip {i}\n" for i in range(5)))
    args = ["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"),
            "--base-url", server.base_url, "--concurrency", "3"]
    status, out, _ = await cli(capsys, *args)
    assert status == 3
    headline, *rest = out.splitlines()
    assert headline.startswith("balance exhausted (HTTP 402") and "re-run" in headline
    assert sum("balance exhausted" in line for line in out.splitlines()) == 1
    assert rest[0].startswith("5 items: 2 downloaded")
    with sqlite3.connect(tmp_path / "o" / ".apimart-journal.sqlite3") as conn:
        states = sorted(row[0] for row in conn.execute("SELECT state FROM items"))
    assert states == ["downloaded"] * 2 + ["pending"] * 3
    assert server.stats.submissions == 2

    status, out, _ = await cli(capsys, *args, "--json")  # still no balance
    report = json.loads(out)
    assert status == 3 and report["account_error"]["status"] == 402
    assert report["account_error"]["type"] == "InsufficientBalanceError"

    server.emulator.set_balance(100)  # topped up
    status, out, _ = await cli(capsys, *args)
    assert status == 0, out
    assert out.startswith("5 items: 5 downloaded")
    assert server.stats.submissions == 5 and server.stats.duplicate_submissions == 0


def test_help_documents_every_exit_status() -> None:
    out = subprocess.run([sys.executable, "-m", "apimart_async", "--help"],
                         capture_output=True, check=True, text=True).stdout
    section = out[out.index("exit status:"):]
    for code in ("0", "1", "2", "3", "130", "143"):
        assert f"\n  {code} " in section or f"; {code}:" in section, code
    for words in ("API key rejected", "balance exhausted", "permission denied", "SIGTERM"):
        assert words in section


async def test_every_bad_input_line_is_reported_at_once_up_to_a_limit(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = '{"prompt": "fine"}'
    bad = ['{"prompt": "x", "duration": -1}', '{"prompt": ""}', "{not json",
           '{"prompt": "x", "resolution": "1080p"}', '["prompt"]',
           '{"prompt": "x", "aspect_ratio": "4:3"}']
    lines = [good]
    for i in range(25):
        lines += [bad[i % len(bad)], good]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    status, out, err = await cli(capsys, "batch", str(path), "--out", str(tmp_path / "out"),
                                 "--base-url", server.base_url)
    assert status == 2 and out == ""
    assert "Traceback" not in err
    reported = [line for line in err.splitlines() if line.startswith(f"{path}:")]
    # Bad lines are 2, 4, 6, ...: the first 20 are each named, then a count of the rest.
    assert [int(line.split(":")[1]) for line in reported] == list(range(2, 42, 2))
    assert reported[0] == f"{path}:2: duration: must be positive, got -1"
    assert reported[1].startswith(f"{path}:4: prompt: ")
    assert reported[3].startswith(f"{path}:8: resolution: unknown field")
    assert "25 bad lines" in err and "and 5 more" in err
    assert sum(server.stats.requests.values()) == 0
    assert not (tmp_path / "out").exists()


async def test_a_single_bad_line_reads_as_before(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"prompt": "a", "name": "n"}\n{"prompt": "b", "name": "n"}\n')
    status, _, err = await cli(capsys, "batch", str(jsonl), "--out", str(tmp_path / "o"),
                               "--base-url", server.base_url)
    assert status == 2
    assert one_line(err) == (f"apimart-async: error: {jsonl}:2: name: 'n' already used "
                             "on line 1")


async def test_file_and_journal_errors_are_one_line(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "p.txt").write_text("a fox\n")
    (tmp_path / "a-file").write_text("not a directory")
    status, _, err = await cli(capsys, "batch", str(tmp_path / "p.txt"), "--out",
                               str(tmp_path / "a-file"), "--base-url", server.base_url)
    assert status == 2  # a usage error: --out must name a folder
    assert str(tmp_path / "a-file") in one_line(err) and "not a folder" in err

    (tmp_path / "j.sqlite3").write_bytes(b"not a database at all, " * 20)
    status, _, err = await cli(capsys, "batch", str(tmp_path / "p.txt"), "--out",
                               str(tmp_path / "o"), "--journal", str(tmp_path / "j.sqlite3"),
                               "--base-url", server.base_url)
    # Refused like any bad argument (as a newer-schema journal is): nothing was sent.
    assert status == 2 and one_line(err).startswith("apimart-async: error: journal: ")
    assert server.stats.submissions == 0


EVIL = "msg\x1b]0;pwned\x07\x1b[2J\r\napimart-async: all 12 videos downloaded"


async def evil_host(status: int) -> tuple[Any, str]:
    """A host answering every request with `status` and EVIL as its error message."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": EVIL, "code": status}}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("status", "command"), [
    (402, ["generate", "a fox"]), (404, ["status", "task_x"]), (401, ["balance"]),
])
async def test_a_servers_error_text_reaches_the_terminal_escaped_on_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, status: int, command: list[str]
) -> None:
    # Review 12: the account headline of `generate`/`batch` printed the server's
    # message raw (an escape sequence acting on the terminal), and the closing error
    # line kept a line feed from it (a forged "apimart-async: ..." line).
    runner, url = await evil_host(status)
    try:
        extra = ["--out", str(tmp_path)] if command[0] == "generate" else []
        code, out, err = await cli(capsys, *command, *extra, "--base-url", url)
    finally:
        await runner.cleanup()
    assert code != 0
    for stream in (out, err):
        assert "\x1b" not in stream and "\x07" not in stream and "\r" not in stream
        assert not any(line.startswith("apimart-async: all 12") for line in stream.splitlines())
    assert "\\x1b[2J" in out + err
