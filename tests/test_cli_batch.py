"""`apimart-async batch`, `generate`, `download` and `demo`, as real subprocesses.

The kill tests SIGKILL a running batch at a moment chosen by reading its journal,
then re-run the same command and count submissions on the emulator.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from apimart_async.testing import EmulatorConfig, EmulatorServer, video_bytes

from .conftest import KEY, MakeServer

pytestmark = pytest.mark.anyio
JOURNAL = ".apimart-journal.sqlite3"


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("APIMART_")}
    out["APIMART_API_KEY"] = KEY
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "apimart_async", *args]


async def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(cli(*args), env=env(), check=False, cwd=cwd)


def write_jsonl(path: Path, n: int) -> Path:
    lines = [json.dumps({"prompt": f"clip {i}", "duration": 5, "name": f"clip-{i:03d}"})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def states(journal: Path) -> list[str]:
    if not journal.exists():
        return []
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
            return [row[0] for row in conn.execute("SELECT state FROM items")]
    except sqlite3.OperationalError:
        return []  # not created yet


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait on another process's progress, observed through its journal."""
    # Another process makes the progress, so there is no event to wait on: poll it.
    try:
        with anyio.fail_after(30):
            while not condition():  # noqa: ASYNC110
                await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def assert_all_downloaded(out: Path, n: int) -> None:
    with sqlite3.connect(out / JOURNAL) as conn:
        rows = conn.execute("SELECT name, state, task_id, path, sha256 FROM items").fetchall()
    assert len(rows) == n
    for name, state, task_id, path, digest in rows:
        assert state == "downloaded", (name, state)
        data = (out / path).read_bytes()  # a file name in the output folder
        assert data == video_bytes(task_id, len(data))
        assert hashlib.sha256(data).hexdigest() == digest
    assert not list(out.glob(".*.part"))


async def run_and_kill(
    server: EmulatorServer, tmp_path: Path, n: int,
    killed_when: Callable[[list[str]], bool], what: str,
) -> tuple[list[str], Path]:
    """Start a batch of `n` items, SIGKILL it once its journal's states satisfy
    `killed_when`; return the command's arguments (to re-run it) and its output dir."""
    out = tmp_path / "out"
    batch = write_jsonl(tmp_path / "batch.jsonl", n)
    args = ["batch", str(batch), "--out", str(out), "--base-url", server.base_url,
            "--concurrency", "4"]
    async with await anyio.open_process(cli(*args), env=env()) as proc:
        await wait_for(lambda: killed_when(states(out / JOURNAL)), what)
        proc.send_signal(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    return args, out


async def test_killed_after_submitting_then_rerun_costs_nothing_twice(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(latency=0.02, duration=(40, 60)), speed=20)
    n = 30
    args, out = await run_and_kill(
        server, tmp_path, n, lambda s: s.count("submitted") == n, "every item submitted"
    )
    assert server.stats.submissions == n
    result = await run(*args)
    assert result.returncode == 0, result.stderr.decode()
    assert server.stats.submissions == n and server.stats.duplicate_submissions == 0
    assert_all_downloaded(out, n)


async def test_killed_while_submitting_then_rerun_names_the_ambiguous(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(latency=0.1, duration=(2, 4)), speed=20)
    n = 40
    args, out = await run_and_kill(
        server, tmp_path, n,
        # Killed while a POST is on the wire (a row "submitting"), else there is nothing
        # ambiguous to report: requests of equal latency can all land together.
        lambda s: s.count("submitted") >= 8 and "submitting" in s,
        "some items submitted and one on the wire",
    )
    created = server.stats.submissions
    assert created < n

    result = await run(*args, "--json")
    summary = json.loads(result.stdout)
    ambiguous = [r for r in summary["results"] if r["state"] == "ambiguous"]
    # No item with a task id was sent again, and the ambiguous ones were not resent.
    assert server.stats.duplicate_submissions == 0
    assert server.stats.submissions <= n
    assert summary["ambiguous"] == len(ambiguous) >= 1
    assert result.returncode == 1
    for item in ambiguous:
        assert item["task_id"] is None and "billed" in item["error"]
    plain = await run(*args)
    text = plain.stdout.decode()
    for item in ambiguous:
        assert f"ambiguous  {item['name']}" in text
    assert server.stats.duplicate_submissions == 0

    # Opting in resends with the same Idempotency-Key: a server that honours it
    # answers with the task it already has, so still nothing is paid twice.
    server.emulator.honour_idempotency_key = True
    final = await run(*args, "--resubmit-ambiguous")
    assert final.returncode == 0, final.stdout.decode() + final.stderr.decode()
    assert server.stats.duplicate_submissions == 0 and server.stats.submissions <= n
    assert_all_downloaded(out, n)


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ('{"prompt": "ok"}\n{"prompt": "broken"\n', 2, "not valid JSON"),
        ('{"prompt": "ok"}\n\n{"prompt": "x", "resolution": "1080p"}\n', 3, "resolution: unknown field"),
        ('{"prompt": ""}\n', 1, "prompt: must not be empty"),
        ('{"prompt": "x", "aspect_ratio": "4:3"}\n', 1, "aspect_ratio: '4:3' is not supported by model 'sora-2'"),
        ('{"prompt": "x", "duration": -1}\n', 1, "duration: must be positive"),
        ('{"prompt": "x", "name": "a"}\n{"prompt": "y", "name": "a"}\n', 2, "already used on line 1"),
        ('["prompt"]\n', 1, "expected a JSON object"),
    ],
)
async def test_bad_input_exits_2_naming_file_and_line_and_sends_nothing(
    server: EmulatorServer, tmp_path: Path, content: str, line: int, words: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    result = await run("batch", str(path), "--out", str(tmp_path / "out"),
                       "--base-url", server.base_url)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert f"{path}:{line}: " in err and words in err, err
    assert sum(server.stats.requests.values()) == 0
    assert not (tmp_path / "out").exists()


async def test_bad_file_kinds(server: EmulatorServer, tmp_path: Path) -> None:
    for name, content, words in [("in.csv", "a,b", "must end in .jsonl"),
                                 ("empty.txt", "\n# only a comment\n", "has no requests")]:
        (tmp_path / name).write_text(content)
        result = await run("batch", str(tmp_path / name), "--out", str(tmp_path / "o"),
                           "--base-url", server.base_url)
        assert result.returncode == 2 and words in result.stderr.decode()
    missing = await run("batch", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"),
                        "--base-url", server.base_url)
    assert missing.returncode == 2 and "cannot read" in missing.stderr.decode()


async def test_txt_batch_with_defaults_and_readable_plain_output(
    server: EmulatorServer, tmp_path: Path
) -> None:
    prompts = ["a red fox in snow", "# a comment", "", "waves at dusk", "rain on a window"]
    (tmp_path / "p.txt").write_text("\n".join(prompts))
    out = tmp_path / "out"
    result = await run("batch", str(tmp_path / "p.txt"), "--out", str(out), "--base-url",
                       server.base_url, "--duration", "10", "--aspect-ratio", "9:16",
                       "--model", "sora-2-pro")
    assert result.returncode == 0, result.stderr.decode()
    names = sorted(re.sub(r"-[0-9a-f]{10}\.mp4$", "", p.name) for p in out.glob("*.mp4"))
    assert names == ["a-red-fox-in-snow", "rain-on-a-window", "waves-at-dusk"]
    lines = result.stderr.decode().splitlines()
    pattern = re.compile(r"^\[\s*\d+/3\] (submitted|downloaded)\s+#\d+  \S")
    assert lines and all(pattern.match(line) for line in lines), lines
    assert sum("downloaded" in line for line in lines) == 3
    assert result.stdout.decode().startswith("3 items: 3 downloaded, 0 failed, 0 ambiguous")
    bodies = [t.body for t in server.emulator.tasks.values()]
    assert all((b["duration"], b["aspect_ratio"], b["model"]) == (10, "9:16", "sora-2-pro")
               for b in bodies)


async def test_generate_and_download_commands(server: EmulatorServer, tmp_path: Path) -> None:
    result = await run("generate", "a lighthouse", "--out", str(tmp_path / "g"),
                       "--base-url", server.base_url, "--json")
    assert result.returncode == 0, result.stderr.decode()
    (item,) = json.loads(result.stdout)["results"]
    assert Path(item["path"]).exists()
    fetched = await run("download", item["task_id"], "--out", str(tmp_path / "d"),
                        "--base-url", server.base_url)
    assert fetched.returncode == 0, fetched.stderr.decode()
    assert (tmp_path / "d" / f"{item['task_id']}.mp4").read_bytes() == Path(
        item["path"]).read_bytes()
    assert server.stats.credential_leaks == 0


async def test_failed_items_exit_1(make_server: MakeServer, tmp_path: Path) -> None:
    server = await make_server(EmulatorConfig(fail_rate=1.0))
    (tmp_path / "p.txt").write_text("doomed\n")
    result = await run("batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"),
                       "--base-url", server.base_url)
    assert result.returncode == 1
    assert "failed" in result.stdout.decode() and "content moderation" in result.stdout.decode()


async def test_server_text_reaches_the_terminal_without_its_control_characters(
    make_server: MakeServer, tmp_path: Path
) -> None:
    # Review 11: a failed task's message went to the terminal as the server wrote it
    # (`status` escaped it; `batch` did not): an escape sequence cleared the screen.
    from apimart_async.testing import TaskPlan

    server = await make_server(EmulatorConfig(planner=lambda body, index: TaskPlan(
        outcome="failed", error_message="\x1b]0;pwned\x07\x1b[2Jcleared\r\nFAKE")))
    (tmp_path / "p.txt").write_text("doomed\n")
    result = await run("batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"),
                       "--base-url", server.base_url)
    assert result.returncode == 1
    for stream in (result.stdout, result.stderr):
        assert b"\x1b" not in stream and b"\x07" not in stream and b"\r" not in stream
    assert b"\\x1b[2Jcleared" in result.stdout


async def test_demo_runs_offline(tmp_path: Path) -> None:
    result = await run("demo", "--count", "3", "--out", str(tmp_path / "demo"), "--speed", "10")
    assert result.returncode == 0, result.stderr.decode()
    assert len(list((tmp_path / "demo").glob("demo-*.mp4"))) == 3
    assert "3 items: 3 downloaded" in result.stdout.decode()
    again = await run("demo", "--count", "3", "--out", str(tmp_path / "demo"), "--speed", "10")
    assert again.returncode == 0 and "emulator saw 3 submissions" in again.stderr.decode()
