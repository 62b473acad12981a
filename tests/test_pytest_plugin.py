"""The pytest plugin, run by pytest itself (``pytester``) on fresh test files, as a user's
project would run it: the entry point loads it, nothing else is configured."""

from __future__ import annotations

import re

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


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess: a user's run shares no module, global or fixture with this one.
    return pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-W", "error",
                              "-s", *args)


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
