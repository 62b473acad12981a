"""Command-line details (#10): per-command help and usage, the key message, a ``/v1``
base URL, a host that does not answer, and ``batch --retry-failed``."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from apimart_async import Session, VideoRequest
from apimart_async._cli.main import build_parser, main
from apimart_async.testing import EmulatorConfig, EmulatorServer, TaskPlan

from .conftest import KEY, MakeServer, cli

pytestmark = pytest.mark.anyio
JOURNAL = ".apimart-journal.sqlite3"


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_generate_shows_only_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    generate, batch = help_of("generate", capsys), help_of("batch", capsys)
    for flag in ("--concurrency", "--rps", "--retry-failed", "--resubmit-ambiguous"):
        assert flag not in generate, flag
        assert flag in batch, flag
    assert "for lines that do not set it" not in generate


@pytest.mark.parametrize("command", ["generate", "batch"])
def test_duration_shows_its_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(command, capsys)
    assert "--duration SECONDS" in text
    after = text.rsplit("--duration SECONDS", 1)[1]  # the option, not the usage line
    assert "(default: none sent, the model's own default applies)" in after.split("--", 1)[0]


@pytest.mark.parametrize("command", [["generate", "a fox", "--out", "o"],
                                     ["batch", "p.txt", "--out", "o"],
                                     ["status", "task_1"]])
def test_a_typod_flag_prints_that_commands_usage(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--durration", "5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: apimart-async {command[0]} "), err
    assert "unrecognized arguments: --durration 5" in err


async def test_no_key_tells_cli_users_what_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("APIMART_API_KEY", raising=False)
    status, _, err = await cli(capsys, "generate", "a fox", "--out", str(tmp_path / "o"),
                               "--base-url", "http://127.0.0.1:1")
    assert status == 2
    assert "APIMART_API_KEY" in err and "--api-key-file" in err
    assert "api_key=" not in err


async def test_a_base_url_ending_in_v1_is_normalised(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], cli_env: None
) -> None:
    for suffix in ("/v1", "/v1/"):
        assert Session(KEY, base_url=server.base_url + suffix).base_url == server.base_url
    async with Session(KEY, base_url=server.base_url + "/v1",
                       clock=server.emulator.clock) as s:
        sub = await s.submit(VideoRequest("a fox"))
    status, out, err = await cli(capsys, "status", sub.task_id,
                                 "--base-url", server.base_url + "/v1/")
    assert status == 0, err
    assert out.startswith(sub.task_id)


# -- a host that does not answer: real subprocesses, real retry delays ------------------

async def _first_stderr_line(*args: str) -> tuple[str, int | None]:
    """Run the CLI; its first stderr line, and its exit status then (None: still running)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMART_")}
    env["APIMART_API_KEY"] = KEY
    async with await anyio.open_process(
        [sys.executable, "-m", "apimart_async", *args], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as process:
        assert process.stderr is not None
        buffer = b""
        try:
            with anyio.fail_after(15):  # generous: the machine may be loaded
                while b"\n" not in buffer:
                    buffer += await process.stderr.receive()
            return buffer.split(b"\n", 1)[0].decode(), process.returncode
        finally:
            if process.returncode is None:
                process.kill()


async def test_a_refused_connection_is_told_at_once_not_after_the_retries() -> None:
    # Connection refused: the default policy retries for ~7.5 s before giving up.
    line, running = await _first_stderr_line("status", "task_x",
                                             "--base-url", "http://127.0.0.1:1")
    assert line.startswith("apimart-async: cannot connect to 127.0.0.1:1 yet "
                           "(APIConnectionError); retrying"), line
    assert running is None  # told while still retrying


@pytest.fixture
def silent_host() -> Iterator[str]:
    """A port that takes connections (kernel backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_host_that_never_answers_is_told_after_a_second(silent_host: str) -> None:
    line, running = await _first_stderr_line("status", "task_x", "--base-url", silent_host)
    assert line.startswith("apimart-async: no answer from 127.0.0.1:"), line
    assert "after 1s; still waiting" in line, line
    assert running is None


# -- batch --retry-failed ------------------------------------------------------------------

def _fails_first_time() -> Any:
    seen: set[str] = set()

    def plan(body: Any, index: int) -> TaskPlan:
        prompt = body["prompt"]
        first = prompt not in seen
        seen.add(prompt)
        return TaskPlan(duration=2.0, outcome="failed" if first and "bad" in prompt
                        else "completed")

    return plan


def _states(out: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(out / JOURNAL) as conn:
        return {name: (state, key) for name, state, key in conn.execute(
            "SELECT json_extract(request, '$.prompt'), state, idempotency_key FROM items")}


async def test_retry_failed_submits_failed_items_again_and_only_with_the_flag(
    make_server: MakeServer, capsys: pytest.CaptureFixture[str], cli_env: None,
    tmp_path: Path,
) -> None:
    server = await make_server(EmulatorConfig(api_key=KEY, planner=_fails_first_time()))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a good fox\na bad fox\n")
    out = tmp_path / "o"
    args = ["batch", str(prompts), "--out", str(out), "--base-url", server.base_url]

    status, _, _ = await cli(capsys, *args)
    assert status == 1
    first = _states(out)
    assert first["a bad fox"][0] == "failed" and first["a good fox"][0] == "downloaded"

    status, text, _ = await cli(capsys, *args)  # a plain re-run: it stays failed
    assert status == 1 and server.emulator.stats.submissions == 2
    assert _states(out) == first

    status, text, err = await cli(capsys, *args, "--retry-failed")
    assert status == 0, text + err
    again = _states(out)
    assert again["a bad fox"][0] == "downloaded"
    # A new task under a new Idempotency-Key (the old key would answer the failed task).
    assert again["a bad fox"][1] != first["a bad fox"][1]
    assert again["a good fox"] == first["a good fox"]
    assert server.emulator.stats.submissions == 3  # only the failed item again


# -- a bad --model/--duration/--aspect-ratio default: once, as the flag's error ----------

@pytest.mark.parametrize(("flags", "flag", "says"), [
    (["--model", "Sora-2"], "--model", "did you mean 'sora-2'? Model names are exact: use "
                                       "'sora-2'"),
    (["--duration", "7"], "--duration", "7 is not supported by model 'sora-2'"),
    (["--model", "veo3", "--aspect-ratio", "4:3"], "--aspect-ratio", "'4:3' is not supported"),
])
async def test_a_bad_default_flag_is_told_once_naming_the_flag(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], cli_env: None,
    tmp_path: Path, flags: list[str], flag: str, says: str,
) -> None:
    prompts = tmp_path / "p8.txt"
    prompts.write_text("".join(f"prompt {n}\n" for n in range(8)))
    status, _, err = await cli(capsys, "batch", str(prompts), "--out", str(tmp_path / "o"),
                               "--base-url", server.base_url, *flags)
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"apimart-async: error: {flag}: "), err
    assert says in err and "p8.txt" not in err and "register_model" not in err
    status, _, err = await cli(capsys, "generate", "a fox", "--out", str(tmp_path / "o"),
                               "--base-url", server.base_url, *flags)
    assert status == 2 and f"error: {flag}: " in err and "register_model" not in err
    assert not server.emulator.tasks


async def test_a_duration_flag_for_jsonl_lines_naming_their_model_is_theirs_to_check(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], cli_env: None, tmp_path: Path
) -> None:
    # 7 s is wrong for the default model but these lines ask for veo3, which takes it.
    lines = tmp_path / "v.jsonl"
    lines.write_text('{"prompt": "a fox", "model": "veo3"}\n')
    status, _, err = await cli(capsys, "batch", str(lines), "--out", str(tmp_path / "o"),
                               "--base-url", server.base_url, "--duration", "7")
    assert status == 0, err
    assert [t.body["duration"] for t in server.emulator.tasks.values()] == [7]


@pytest.mark.parametrize(("args", "said"), [
    (["worker", "--journal", "postgresql://x/y", "--batch", "b", "--out", "o",
      "--max-spend", "0"], "--max-spend: must be an amount > 0, got '0'"),
    (["batch", "f.txt", "--rps", "abc"], "--rps: must be a number of requests per second"),
    (["batch", "f.txt", "--timeout", "-1"], "--timeout: must be a number of seconds > 0"),
])
def test_a_bad_number_flag_names_what_it_should_be(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert said in capsys.readouterr().err


async def test_a_batch_whose_database_never_answers_does_not_blame_the_api_host(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # The journal opens before the first request: while a silent database holds it, the
    # one-second notice must not say the API host (which answers) is silent. Given two
    # seconds, nothing is printed (the database is named after its own bound).
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    with socket.socket() as db:
        db.bind(("127.0.0.1", 0))
        db.listen(8)
        url = f"postgresql://u:pw@127.0.0.1:{db.getsockname()[1]}/jobs"
        env = {k: v for k, v in os.environ.items() if not k.startswith("APIMART_")}
        env["APIMART_API_KEY"] = KEY
        async with await anyio.open_process(
            [sys.executable, "-m", "apimart_async", "batch", str(prompts), "--out",
             str(tmp_path / "out"), "--journal", url, "--base-url", server.base_url],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        ) as process:
            assert process.stderr is not None
            said = b""
            with anyio.move_on_after(2.5):
                async for chunk in process.stderr:
                    said += chunk
            process.kill()
    assert b"no answer from" not in said, said
    assert server.stats.submissions == 0


async def test_a_reader_that_goes_away_gets_no_error_message(server: EmulatorServer) -> None:
    # `apimart-async status ID | head -0`: the pipe's reader is gone before the output;
    # the command ends quietly (it said "Broken pipe (EPIPE): check the path (e.g.
    # --out), its permissions, the free space" and exit 1).
    async with Session(KEY, base_url=server.base_url) as s:
        sub = await s.submit(VideoRequest("x"))
    reader, writer = os.pipe()
    os.close(reader)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMART_")}
    env["APIMART_API_KEY"] = KEY
    try:
        done = await anyio.run_process(
            [sys.executable, "-m", "apimart_async", "status", sub.task_id, "--json",
             "--base-url", server.base_url], env=env, stdout=writer, check=False)
    finally:
        os.close(writer)
    assert done.stderr == b"", done.stderr
    assert done.returncode == 1
