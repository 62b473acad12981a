"""Every ```python block of README.md runs as written.

Each block is run as a script in its own Python process, in a temporary directory, with
``APIMART_API_KEY`` and ``APIMART_BASE_URL`` pointing at an emulator on a fast clock that
this test serves; warnings are errors there too. A block that cannot run on its own (a
fragment) is marked just before its fence with ``<!-- snippet: skip REASON -->``, and is
reported as skipped with that reason (``pytest -ra`` lists them).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import anyio
import attrs
import pytest

from apimart_async.testing import Clock, EmulatorConfig, EmulatorServer

from .conftest import KEY

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_SKIP = re.compile(r"<!--\s*snippet:\s*skip\b\s*(.*?)\s*-->")
# Tasks of a few emulated seconds end in a few real milliseconds.
SPEED = 200.0
DEADLINE = 120.0  # real seconds per snippet, under load


@attrs.frozen
class Snippet:
    line: int
    code: str
    skip: str | None


def snippets(text: str) -> list[Snippet]:
    """The python blocks of `text`, with the skip reason written just before each, if any."""
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _SKIP.search(before)
        found.append(Snippet(line=text.count("\n", 0, match.start()) + 1,
                             code=match.group(1),
                             skip=(marker.group(1) or "no reason given") if marker else None))
    return found


SNIPPETS = snippets(README.read_text(encoding="utf-8"))


def test_the_readme_has_snippets_and_every_skip_gives_a_reason() -> None:
    assert len(SNIPPETS) >= 5
    for snippet in SNIPPETS:
        assert snippet.skip != "no reason given", f"README.md:{snippet.line}: skip without reason"


def test_the_extractor_reads_fences_and_skip_markers() -> None:
    text = ("intro\n```python\nprint(1)\n```\n\n<!-- snippet: skip a fragment -->\n"
            "```python\nx = await y\n```\n```bash\nls\n```\n")
    assert snippets(text) == [Snippet(2, "print(1)\n", None),
                              Snippet(7, "x = await y\n", "a fragment")]


@pytest.mark.anyio
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"README.md:{s.line}" for s in SNIPPETS])
async def test_readme_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    if snippet.skip is not None:
        pytest.skip(f"README.md:{snippet.line}: {snippet.skip}")
    script = tmp_path / f"readme_{snippet.line}.py"
    script.write_text(snippet.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMART_")}
    async with EmulatorServer(EmulatorConfig(api_key=KEY), clock=Clock(speed=SPEED)) as server:
        env.update(APIMART_API_KEY=KEY, APIMART_BASE_URL=server.base_url)
        with anyio.fail_after(DEADLINE):
            done = await anyio.run_process(
                [sys.executable, "-W", "error", str(script)], cwd=tmp_path, env=env,
                check=False,
            )
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    assert done.returncode == 0, (
        f"README.md:{snippet.line} exited {done.returncode}\n--- stdout\n{out[-3000:]}"
        f"\n--- stderr\n{err[-3000:]}"
    )
    assert KEY not in out + err


@pytest.mark.anyio
async def test_the_every_output_snippet_runs_twice_in_one_folder(tmp_path: Path) -> None:
    # Users re-run examples: a second run must not trip over the first one's files.
    text = README.read_text(encoding="utf-8")
    start = text.index("## Every output")
    snippet = next(s for s in SNIPPETS if text.count("\n", 0, start) < s.line)
    script = tmp_path / "every_output.py"
    script.write_text(snippet.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMART_")}
    async with EmulatorServer(EmulatorConfig(api_key=KEY), clock=Clock(speed=SPEED)) as server:
        env.update(APIMART_API_KEY=KEY, APIMART_BASE_URL=server.base_url)
        for run in (1, 2):
            with anyio.fail_after(DEADLINE):
                done = await anyio.run_process(
                    [sys.executable, "-W", "error", str(script)], cwd=tmp_path, env=env,
                    check=False)
            assert done.returncode == 0, (run, done.stderr.decode(errors="replace")[-3000:])
