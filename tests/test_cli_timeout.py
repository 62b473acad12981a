"""`batch` and `generate` take an overall deadline (#12 item 2): `--timeout SECONDS`
stops like an interrupt (nothing more sent, what is paid for stays in the journal), exits
124 and a re-run resumes. The emulator's tasks take 1000 s of its clock here: without
the deadline the command would wait for them (a hang, caught by `fail_after`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

from apimart_async.testing import EmulatorConfig

from .conftest import MakeServer
from .test_cli_batch import JOURNAL, assert_all_downloaded, cli, env, states, write_jsonl

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def run_within(seconds: float, *args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(seconds):
        return await anyio.run_process(cli(*args), env=env(), check=False)


async def test_batch_timeout_stops_exits_124_and_a_rerun_resumes(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(duration=(1000, 1000)), speed=1)
    n = 4
    out = tmp_path / "out"
    args = ["batch", str(write_jsonl(tmp_path / "b.jsonl", n)), "--out", str(out),
            "--base-url", server.base_url]
    first = await run_within(25, *args, "--timeout", "1")
    text = first.stdout.decode() + first.stderr.decode()
    assert first.returncode == 124, text
    assert "--timeout 1s passed" in text
    # Ended like an interrupt: every paid task is in the journal, nothing mid-submission.
    assert sorted(set(states(out / JOURNAL))) == ["submitted"], states(out / JOURNAL)
    assert server.stats.submissions == n

    server.emulator.complete_all()
    again = await run_within(25, *args)
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    assert server.stats.submissions == n and server.stats.duplicate_submissions == 0
    assert_all_downloaded(out, n)


async def test_generate_timeout_exits_124(make_server: MakeServer, tmp_path: Path) -> None:
    server = await make_server(EmulatorConfig(duration=(1000, 1000)), speed=1)
    done = await run_within(25, "generate", "a fox", "--out", str(tmp_path / "out"),
                            "--base-url", server.base_url, "--timeout", "0.5")
    assert done.returncode == 124, done.stdout.decode() + done.stderr.decode()
    assert server.stats.submissions == 1


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "soon"])
async def test_a_bad_timeout_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    done = await run_within(25, "generate", "a fox", "--out", str(tmp_path), "--timeout", bad)
    assert done.returncode == 2 and b"--timeout" in done.stderr
