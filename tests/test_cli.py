"""The command line, run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import pytest

from apimart_async import Clock, Session, TaskStatus, VideoRequest
from apimart_async.testing import EmulatorServer, emulator_process

from .conftest import KEY, session_for

pytestmark = pytest.mark.anyio


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("APIMART_")}
    out.update(extra)
    return out


async def run_cli(*args: str, **env_extra: str) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(
        [sys.executable, "-m", "apimart_async", *args], env=env(**env_extra), check=False
    )


async def test_standalone_emulator_serves_submit_and_wait() -> None:
    async with emulator_process("--speed", "50") as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        async with Session("any-key", base_url=base_url, clock=Clock(speed=50)) as s:
            sub = await s.submit(VideoRequest("a lighthouse at dusk"))
            task = await s.wait(sub, timeout=60)
    assert task.status is TaskStatus.COMPLETED


async def test_status_command(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x"))
    server.emulator.complete_all()
    result = await run_cli("status", sub.task_id, "--json", "--base-url", server.base_url,
                           APIMART_API_KEY=KEY)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["id"] == sub.task_id and data["status"] == "completed"
    assert data["video_urls"]
    plain = await run_cli("status", sub.task_id, APIMART_API_KEY=KEY,
                          APIMART_BASE_URL=server.base_url)
    assert plain.stdout.decode().startswith(f"{sub.task_id}: completed 100%")


async def test_status_errors_are_clear_and_keyless(server: EmulatorServer) -> None:
    result = await run_cli("status", "task_nope", "--base-url", server.base_url,
                           APIMART_API_KEY=KEY)
    assert result.returncode == 1
    assert b"no such task" in result.stderr and KEY.encode() not in result.stderr
    nokey = await run_cli("status", "task_nope", "--base-url", server.base_url)
    assert nokey.returncode == 2 and b"APIMART_API_KEY" in nokey.stderr
    insecure = await run_cli("status", "t", "--base-url", "http://example.com", APIMART_API_KEY=KEY)
    assert insecure.returncode == 2 and b"plain http is refused" in insecure.stderr


def test_version_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "apimart_async", "--help"],
                         capture_output=True, check=True)
    assert b"emulator" in out.stdout and b"status" in out.stdout
