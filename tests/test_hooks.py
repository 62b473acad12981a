"""`Hooks`: typed events for requests, retries, rate changes, task updates and downloads;
a hook that raises never breaks the session; the DEBUG log tells a batch's story."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from apimart_async import (
    DownloadError,
    DownloadEvent,
    Hooks,
    RateChangeEvent,
    RequestEvent,
    RetryEvent,
    Session,
    TaskUpdate,
    ValidationError,
    VideoRequest,
)
from apimart_async.testing import EmulatorConfig, Fault, TaskPlan

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio


def _recorder() -> tuple[Hooks, list[Any]]:
    seen: list[Any] = []
    hooks = Hooks(on_request=seen.append, on_retry=seen.append, on_rate_change=seen.append,
                  on_task_update=seen.append, on_download=seen.append)
    return hooks, seen


async def test_every_kind_of_event_reaches_its_hook(make_server: MakeServer,
                                                    tmp_path: Path) -> None:
    server = await make_server()
    hooks, seen = _recorder()
    async with session_for(server, hooks=hooks) as s:
        server.emulator.inject("submit", Fault.http(429), Fault.http(503))
        sub = await s.submit(VideoRequest("a fox"))
        task = await s.wait(sub)
        result = await s.download(task, tmp_path / "fox.mp4")
        stats = s.stats
    requests = [e for e in seen if isinstance(e, RequestEvent)]
    retries = [e for e in seen if isinstance(e, RetryEvent)]
    rates = [e for e in seen if isinstance(e, RateChangeEvent)]
    updates = [e for e in seen if isinstance(e, TaskUpdate)]
    downloads = [e for e in seen if isinstance(e, DownloadEvent)]

    assert len(requests) == stats.requests
    assert [(e.method, e.path, e.attempt, e.status, e.error) for e in requests[:3]] == [
        ("POST", "/v1/videos/generations", 1, 429, "RateLimitError"),
        ("POST", "/v1/videos/generations", 2, 503, "ServerError"),
        ("POST", "/v1/videos/generations", 3, 200, None),
    ]
    assert all(e.elapsed >= 0 for e in requests)
    assert [(e.attempt, e.error, e.status) for e in retries] == [
        (1, "RateLimitError", 429), (2, "ServerError", 503)]
    assert len(retries) == stats.retries
    assert rates and rates[0].reason == "throttled" and rates[0].previous is None
    assert rates[0].rate is not None and rates[0].rate > 0
    assert updates[-1].final and updates[-1].completed and updates[-1].task_id == sub.task_id
    assert [(d.task_id, d.path, d.size, d.error) for d in downloads] == [
        (sub.task_id, result.path, result.size, None)]
    assert KEY not in repr(seen)


async def test_a_hook_that_raises_is_logged_and_the_session_goes_on(
    make_server: MakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(event: object) -> None:
        calls.append(type(event).__name__)
        raise RuntimeError("a metrics bug")

    server = await make_server()
    hooks = Hooks(on_request=broken, on_task_update=broken, on_download=broken,
                  on_retry=broken, on_rate_change=broken)
    server.emulator.inject("submit", Fault.http(429))
    async with session_for(server, hooks=hooks) as s:
        task = await s.wait(await s.submit(VideoRequest("a fox")))
        await s.download(task, tmp_path / "fox.mp4")
    assert (tmp_path / "fox.mp4").stat().st_size > 0
    assert set(calls) == {"RequestEvent", "RetryEvent", "RateChangeEvent", "TaskUpdate",
                          "DownloadEvent"}
    logged = [r for r in caplog.records if "hook" in r.getMessage()]
    assert logged and all(r.levelno == logging.ERROR and r.exc_info for r in logged)
    assert "a metrics bug" in caplog.text and KEY not in caplog.text


async def test_a_sync_hook_returning_a_coroutine_is_closed_and_logged(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def later(event: object) -> None:  # pragma: no cover - never run
        raise AssertionError

    server = await make_server()
    # Warnings are errors here: an unclosed coroutine would fail the test ("never awaited").
    async with session_for(server, hooks=Hooks(on_request=lambda e: later(e))) as s:
        await s.submit(VideoRequest("x"))
    assert "returned an awaitable" in caplog.text


def test_hooks_are_checked_when_made() -> None:
    async def coro(event: object) -> None:  # pragma: no cover
        pass

    class AsyncCall:
        async def __call__(self, event: object) -> None:  # pragma: no cover
            pass

    with pytest.raises(ValidationError, match=r"on_request.*plain .sync. function"):
        Hooks(on_request=coro)
    with pytest.raises(ValidationError, match=r"on_download.*plain"):
        Hooks(on_download=AsyncCall())
    with pytest.raises(ValidationError, match=r"on_retry.*callable"):
        Hooks(on_retry=42)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"hooks.*must be a Hooks"):
        Session(KEY, hooks={"on_request": print})  # type: ignore[arg-type]


async def test_the_debug_log_tells_a_batch_s_story_and_info_stays_quiet(
    make_server: MakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="apimart_async")

    def plan(body: Any, index: int) -> TaskPlan:
        return TaskPlan(duration=4.0, outcome="failed" if "bad" in body["prompt"] else "completed")

    server = await make_server(EmulatorConfig(api_key=KEY, planner=plan))
    server.emulator.inject("submit", Fault.http(429), Fault.http(503), Fault.http(503))
    requests = [VideoRequest("good one"), VideoRequest("bad one"), VideoRequest("good two")]
    async with session_for(server) as s:
        report = await s.run_batch(requests, out_dir=tmp_path)
    assert report.completed == 2 and report.failed == 1
    ours = [r for r in caplog.records if r.name == "apimart_async"]
    debug = [r.getMessage() for r in ours if r.levelno == logging.DEBUG]
    text = "\n".join(debug)
    assert text.count("submitted task") == 3
    assert "request rate throttled" in text
    assert text.count("completed after") == 2
    assert "ended failed" in text
    assert text.count(": saved ") == 2
    assert "retrying in" in text
    # Retries are routine: nothing at INFO for them.
    assert not [r for r in ours if r.levelno == logging.INFO and "retrying" in r.getMessage()]
    assert KEY not in caplog.text


async def test_a_hook_failing_on_a_failed_download_logs_its_own_traceback_only(
    make_server: MakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: DownloadEvent) -> None:
        raise RuntimeError("a metrics bug")

    server = await make_server()
    async with session_for(server, hooks=Hooks(on_download=broken)) as s:
        task = await s.wait(await s.submit(VideoRequest("a fox")))
        server.emulator.inject("download", Fault.http(404))
        with pytest.raises(DownloadError) as info:
            await s.download(task, tmp_path / "fox.mp4")
    assert "a metrics bug" not in str(info.value)
    (record,) = [r for r in caplog.records if "hook" in r.getMessage()]
    text = logging.Formatter().format(record)
    assert "RuntimeError: a metrics bug" in text
    # Not chained to the download's own error, which the hook was only told about.
    assert "During handling of the above exception" not in text
