"""Errors cross the boundaries of our context managers as themselves, never wrapped.

The session (and `run_batch`) run background work in anyio task groups, which wrap
whatever leaves them in an ExceptionGroup; ``except TaskFailedError:`` must still work.
"""

from __future__ import annotations

import asyncio
import gc
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from apimart_async import EventKind, Session, TaskFailedError, VideoRequest
from apimart_async._core.groups import ungrouped
from apimart_async.testing import EmulatorConfig, EmulatorServer

from .conftest import MakeServer, session_for

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

pytestmark = pytest.mark.anyio
README = Path(__file__).resolve().parent.parent / "README.md"


def stray_tasks() -> list[asyncio.Task[object]]:
    """Our own tasks (poller, submitters) still alive, besides the test's."""
    # anyio names each task after its function: ours all start with the package name.
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("apimart_async")
            and not t.get_name().startswith("apimart_async.testing")]


async def test_task_failed_error_leaves_the_session_as_itself(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(fail_rate=1.0))
    ids: list[str] = []

    async def fail() -> None:
        async with session_for(server) as s:
            sub = await s.submit(VideoRequest("doomed"))
            ids.append(sub.task_id)
            await s.wait(sub, timeout=600)

    with pytest.raises(TaskFailedError) as caught:
        await fail()
    assert [caught.value.task_id] == ids
    assert caught.value.__context__ is None


async def test_users_own_error_cancels_background_work_and_leaves_as_itself(
    make_server: MakeServer,
) -> None:
    # Long tasks and many items: polling and submitting are both under way when we raise.
    server = await make_server(EmulatorConfig(duration=(40, 60), latency=0.01))
    cause = ValueError("the user's cause")
    requests = [VideoRequest(f"clip {i}") for i in range(20)]
    https = []

    async def raise_mid_stream() -> None:
        async with session_for(server, max_concurrency=2) as s:
            https.extend([s._engine.http.session, s._engine.http.api])
            async with s.stream(requests) as events:
                async for event in events:
                    if event.kind is EventKind.SUBMITTED:
                        assert stray_tasks(), "nothing ran in the background"
                        raise KeyError("mine") from cause

    with pytest.raises(KeyError) as caught:
        await raise_mid_stream()
    assert caught.value.args == ("mine",)
    assert caught.value.__cause__ is cause and caught.value.__context__ is None
    assert stray_tasks() == []
    assert all(http is not None and http.closed for http in https)
    assert server.stats.submissions < len(requests)
    gc.collect()  # an unclosed aiohttp session would warn here (warnings are errors)


async def test_cancelling_the_block_from_outside_is_clean(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(duration=(40, 60), latency=0.01))
    https = []
    with anyio.CancelScope() as scope:
        async with session_for(server, max_concurrency=2) as s:
            https.append(s._engine.http.session)
            https.append(s._engine.http.api)  # the API requests' own session
            async with s.stream([VideoRequest(f"clip {i}") for i in range(20)]) as events:
                async for event in events:
                    if event.kind is EventKind.SUBMITTED:
                        scope.cancel()  # e.g. an enclosing timeout firing
    assert scope.cancelled_caught
    assert stray_tasks() == [] and all(http is not None and http.closed for http in https)


async def test_run_batch_callback_error_comes_out_as_itself(
    server: EmulatorServer, tmp_path: Path
) -> None:
    raised: list[LookupError] = []

    def on_change(result: object) -> None:
        # Raised once, from a background task of run_batch (two at once would be a group).
        if getattr(result, "task_id", None) and not raised:
            raised.append(LookupError("from on_change"))
            raise raised[0]

    async with session_for(server) as s:  # caught inside the block: run_batch unwraps too
        with pytest.raises(LookupError) as caught:
            await s.run_batch([VideoRequest("a"), VideoRequest("b")], out_dir=tmp_path,
                              on_change=on_change)
    assert caught.value is raised[0]
    assert stray_tasks() == []


async def test_a_lone_error_in_nested_task_groups_is_unwrapped_with_its_context() -> None:
    inner = KeyError("k")

    async def fail() -> None:
        raise inner

    async def nested() -> None:
        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fail)
            outer.start_soon(anyio.sleep, 0)

    with pytest.raises(KeyError) as caught, ungrouped():
        await nested()
    assert caught.value is inner and inner.__context__ is None


@pytest.mark.parametrize("leaves", [1, 3])
async def test_a_users_own_exception_group_comes_out_as_itself(
    server: EmulatorServer, leaves: int
) -> None:
    mine = ExceptionGroup("mine", [ValueError(str(n)) for n in range(leaves)])
    with pytest.raises(ExceptionGroup) as caught:
        async with session_for(server):
            raise mine
    assert caught.value is mine


def test_truly_several_errors_stay_grouped() -> None:
    with pytest.raises(ExceptionGroup) as caught, ungrouped():
        raise ExceptionGroup("two", [KeyError("a"), ValueError("b")])
    assert len(caught.value.exceptions) == 2


def readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_readme_snippet_catching_task_failed_error_runs() -> None:
    code = readme_block("except TaskFailedError")
    assert "asyncio.run(main())" in code
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert re.match(r"task_\w+ failed: \S+", result.stdout.decode()), result.stdout


async def test_a_caught_error_closes_the_session_for_good(make_server: MakeServer) -> None:
    # The error leaves as itself and the session is closed cleanly; like httpx's client,
    # a closed session is not opened again: a second ``async with`` says so clearly.
    server = await make_server(EmulatorConfig(fail_rate=1.0))
    session = session_for(server)
    with pytest.raises(TaskFailedError):
        async with session as s:
            await s.wait(await s.submit(VideoRequest("doomed")), timeout=600)
    assert isinstance(session, Session) and stray_tasks() == []
    with pytest.raises(RuntimeError, match=r"closed.*create a new Session"):
        async with session:
            pass
    async with session_for(server) as fresh:  # a new one works
        with pytest.raises(TaskFailedError):
            await fresh.wait(await fresh.submit(VideoRequest("doomed")), timeout=600)


def test_readme_error_table_names_every_error_class_and_true_bases() -> None:
    import builtins

    import apimart_async

    text = README.read_text()
    section = text[text.index("## Errors"):]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named: set[str] = set()
    for row in rows:
        first = row.split(" | ")[0]
        named.update(re.findall(r"`(\w+Error)`", first))
        # "`X` (a `ValueError`...)": X really is one.
        for name, base in re.findall(r"`(\w+)` \(a `(\w+)`", first):
            parent = getattr(builtins, base, None) or getattr(apimart_async, base)
            assert issubclass(getattr(apimart_async, name), parent), name
    named -= {"ValueError", "TimeoutError"}
    errors = {name for name in apimart_async.__all__
              if isinstance(getattr(apimart_async, name), type)
              and issubclass(getattr(apimart_async, name), apimart_async.APIMartError)
              and name != "APIMartError"}
    assert named == errors
