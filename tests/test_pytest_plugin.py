"""The pytest plugin, run by pytest itself (``pytester``) on fresh test files, as a user's
project would run it: the entry point loads it, nothing else is configured."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

# What a user's test file looks like: no conftest, no anyio_backend, no set_testing.
USER_TESTS = '''
import pytest
from apimart_async import Session, TaskStatus, VideoRequest, TaskFailedError
from apimart_async import sync
from apimart_async.testing import EmulatorServer, Fault, is_testing


@pytest.mark.anyio
async def test_async_session(apimart_session, apimart_server):
    assert isinstance(apimart_session, Session)
    assert isinstance(apimart_server, EmulatorServer)
    assert is_testing()
    apimart_server.emulator.inject("submit", Fault.http(503))
    task = await apimart_session.wait(await apimart_session.submit(VideoRequest("fox")))
    assert task.status is TaskStatus.COMPLETED
    print("TASK-ID", task.id)


def test_sync_session(apimart_sync_session, apimart_sync_server):
    assert isinstance(apimart_sync_session, sync.Session)
    apimart_sync_server.emulator.inject("task", Fault.http(500))
    task = apimart_sync_session.wait(apimart_sync_session.submit(VideoRequest("fox")))
    assert task.status is TaskStatus.COMPLETED
    assert apimart_sync_session.stats.retries == 1
    print("TASK-ID", task.id)


@pytest.mark.apimart(fail_rate=1.0, speed=200)
def test_marker_configures_the_emulator(apimart_sync_session, apimart_sync_server):
    assert apimart_sync_server.emulator.clock.speed == 200
    with pytest.raises(TaskFailedError):
        apimart_sync_session.wait(apimart_sync_session.submit(VideoRequest("fox")))


def test_testing_mode_is_off_without_the_fixtures():
    assert not is_testing()
'''


def _ids(result: pytest.RunResult) -> list[str]:
    return re.findall(r"TASK-ID (\S+)", result.stdout.str())


def _run(pytester: pytest.Pytester, *args: str, asyncio: bool = False) -> pytest.RunResult:
    # A subprocess: a user's run shares no module, global or fixture with this one.
    # pytest-asyncio (a test extra) stays out unless the test is about it.
    plugin = ("-o", "asyncio_default_fixture_loop_scope=function") if asyncio else (
        "-p", "no:asyncio")
    return pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-W", "error",
                              "-s", *plugin, *args)


def test_fixtures_work_in_a_fresh_test_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = _run(pytester)
    result.assert_outcomes(passed=4)


def test_header_shows_the_seed_and_the_seed_option_replays(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    first = _run(pytester, "--apimart-seed", "1234")
    first.stdout.fnmatch_lines(["apimart_async: emulator seed 1234 (replay with --apimart-seed 1234)"])
    again = _run(pytester, "--apimart-seed", "1234")
    other = _run(pytester, "--apimart-seed", "1235")
    unseeded = _run(pytester)
    for result in (first, again, other, unseeded):
        result.assert_outcomes(passed=4)
    ids = _ids(first)
    assert len(ids) == 2 and ids[0] != ids[1]  # each test its own emulator seed
    assert _ids(again) == ids  # the same run seed replays the same task ids
    assert set(_ids(other)).isdisjoint(ids)
    assert set(_ids(unseeded)).isdisjoint(ids)
    seed = re.search(r"emulator seed (\d+)", unseeded.stdout.str())
    assert seed is not None
    replay = _run(pytester, "--apimart-seed", seed.group(1))
    assert _ids(replay) == _ids(unseeded)  # the printed seed replays the run


def test_config_and_anyio_backend_are_the_users_to_override(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('''
import pytest
from apimart_async.testing import EmulatorConfig

@pytest.fixture
def anyio_backend():
    return ("asyncio", {"debug": True})

@pytest.fixture
def apimart_config():
    return EmulatorConfig(api_key="sk-users-own-key-0123456789", seed=5)
''')
    pytester.makepyfile(test_user='''
import asyncio
import pytest
from apimart_async import VideoRequest

@pytest.mark.anyio
async def test_users_fixtures_win(apimart_session, apimart_server):
    assert asyncio.get_running_loop().get_debug()  # the user's anyio_backend, not ours
    assert apimart_server.emulator.seed == 5
    sub = await apimart_session.submit(VideoRequest("fox"))  # the configured key is sent
    assert sub.task_id
''')
    _run(pytester).assert_outcomes(passed=1)


def test_readme_plugin_example_passes_as_written(pytester: pytest.Pytester) -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The pytest plugin", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(test_readme=code)
    _run(pytester).assert_outcomes(passed=2)


def test_readme_stepped_clock_with_the_sync_fixtures_passes(pytester: pytest.Pytester) -> None:
    # advance() from the test thread, the waits on the sync session's loop thread: it
    # used to raise "no running event loop" and leave the fixture's close() hanging.
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("`advance` may be called from any thread.", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "def apimart_clock" in code and "apimart_sync_session" in code
    pytester.makepyfile(test_readme_stepped=code)
    _run(pytester, "--timeout", "60").assert_outcomes(passed=1)


def _needs_pytest_asyncio() -> None:
    try:
        import pytest_asyncio  # noqa: F401
    except ImportError:
        # It is in the test extra: CI must run these, never skip them.
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("pytest-asyncio is not installed (pip install -e '.[test]')")


PYTEST_ASYNCIO_TESTS = '''
import pytest
from apimart_async import VideoRequest

@pytest.mark.asyncio
async def test_asyncio_marker(apimart_session):
    await apimart_session.submit(VideoRequest("a"))

@pytest.mark.anyio
async def test_anyio_marker(apimart_session):
    sub = await apimart_session.submit(VideoRequest("a"))
    assert (await apimart_session.wait(sub)).status == "completed"
'''


def test_under_pytest_asyncio_strict_an_asyncio_test_is_refused_clearly(
    pytester: pytest.Pytester,
) -> None:
    # The fixtures run on anyio's loop, an asyncio-marked test on pytest-asyncio's: it
    # failed deep in aiohttp ("Timeout context manager should be used inside a task").
    _needs_pytest_asyncio()
    pytester.makepyfile(test_user=PYTEST_ASYNCIO_TESTS)
    result = _run(pytester, "-o", "asyncio_mode=strict", asyncio=True)
    result.assert_outcomes(passed=1, errors=1)  # @pytest.mark.anyio works beside it
    result.stdout.fnmatch_lines(["*the test is marked @pytest.mark.asyncio*"
                                 "Mark the test @pytest.mark.anyio*strict mode*"])
    assert "Timeout context manager" not in result.stdout.str()


def test_under_pytest_asyncio_auto_mode_the_fixtures_are_refused_clearly(
    pytester: pytest.Pytester,
) -> None:
    _needs_pytest_asyncio()
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    code = readme.split("### The pytest plugin", 1)[1].split("```python\n", 1)[1]
    pytester.makepyfile(test_readme=code.split("```", 1)[0])
    result = _run(pytester, "-o", "asyncio_mode=auto", asyncio=True)
    result.assert_outcomes(passed=1, errors=1)  # the sync test is unaffected
    result.stdout.fnmatch_lines(["*pytest-asyncio runs in auto mode (asyncio_mode=auto)*"])
    assert "Timeout context manager" not in result.stdout.str()


def test_the_same_seed_gives_the_same_task_ids_whatever_the_rootdir(
    pytester: pytest.Pytester,
) -> None:
    # The per-test seed came from the node id, which is relative to the rootdir: run
    # from the project or from its tests folder, --apimart-seed 7 replayed other ids.
    pytester.mkdir("proj")
    pytester.mkdir("proj/tests")
    (pytester.path / "proj" / "tests" / "test_user.py").write_text(USER_TESTS)
    test_file = str(pytester.path / "proj" / "tests" / "test_user.py")
    runs = [
        _run(pytester, "--apimart-seed", "7", "--rootdir", str(pytester.path / where),
             test_file)
        for where in ("proj", "proj/tests")
    ]
    for result in runs:
        result.assert_outcomes(passed=4)
    first, second = (_ids(result) for result in runs)
    assert len(first) == 2 and first == second
