"""A hang fails its test instead of hanging CI (pytest-timeout, set in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HANGING_TEST = textwrap.dedent(
    """
    import pytest

    from apimart_async import Session, VideoRequest
    from apimart_async.testing import EmulatorConfig, EmulatorServer

    @pytest.fixture
    def anyio_backend():
        return "asyncio"

    @pytest.mark.anyio
    async def test_watch_that_never_ends():
        # A task that takes a day and a watch with no deadline: termination never comes.
        async with EmulatorServer(EmulatorConfig(duration=(86400, 86401))) as server:
            async with Session("k", base_url=server.base_url) as s:
                sub = await s.submit(VideoRequest("x"))
                async for _ in s.watch([sub]):
                    pass
    """
)


def test_the_suite_has_a_per_test_timeout(pytestconfig: pytest.Config) -> None:
    assert 0 < float(pytestconfig.getini("timeout")) <= 120


def test_a_hanging_watch_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(HANGING_TEST)
    # The same plugin and setting as this suite, with a short limit so this runs fast.
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout = 2\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout" in done.stdout and "1 failed" in done.stdout, done.stdout
