"""The shape #9 gave the SDK: a single-use Session, read-only configuration, a Watch
that subscribes on first use, one typed error model for batches, and one-way layers."""

from __future__ import annotations

import ast
import pathlib
import sqlite3
from pathlib import Path

import aiohttp
import anyio
import pytest

from apimart_async import (
    APIMartError,
    InsufficientBalanceError,
    PollPolicy,
    RateLimitError,
    RetryPolicy,
    Session,
    TaskFailedError,
    Timeout,
    VideoRequest,
)
from apimart_async._core.errors import error_from_record, error_record, with_response
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, TaskPlan

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "apimart_async"

# -- lifecycle: unopened / open / closed ---------------------------------------------------


async def test_entering_an_open_session_again_is_refused(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        with pytest.raises(RuntimeError, match="already open"):
            async with s:
                pass
        # Still open and working: the refused entry changed nothing.
        await s.submit(VideoRequest("still fine"))


async def test_a_closed_session_is_not_reopened(server: EmulatorServer) -> None:
    session = session_for(server)
    async with session:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await session.submit(VideoRequest("x"))
    with pytest.raises(RuntimeError, match="closed"):
        async with session:
            pass


async def test_unopened_session_says_how_to_open_it(server: EmulatorServer) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await session_for(server).submit(VideoRequest("x"))


async def test_a_borrowed_http_session_is_used_never_closed_nor_replaced(
    server: EmulatorServer,
) -> None:
    async with aiohttp.ClientSession() as mine:
        session = session_for(server, http_session=mine)
        async with session as s:
            assert s._engine.http.session is mine
            await s.submit(VideoRequest("on the caller's connection pool"))
        assert not mine.closed
        with pytest.raises(RuntimeError):
            async with session:  # once closed, never swapped for an owned one
                pass
        assert not mine.closed and session._engine.http._session is None


def test_configuration_is_read_only_after_construction() -> None:
    s = Session(KEY, base_url="http://127.0.0.1:1")
    for name, value in [("retry", RetryPolicy(max_attempts=1)), ("timeout", Timeout()),
                        ("poll", PollPolicy()), ("base_url", "http://127.0.0.1:2"),
                        ("max_concurrency", 1)]:
        with pytest.raises(AttributeError):
            setattr(s, name, value)
    assert s.retry == RetryPolicy() and s.base_url == "http://127.0.0.1:1"


# -- Watch subscribes on first use ----------------------------------------------------------


async def test_watch_subscribes_on_entry_not_in_its_constructor(
    make_server: MakeServer,
) -> None:
    server = await make_server(EmulatorConfig(duration=(100, 200)))
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x"))
        poller = s._engine.poller  # submit already told it the task's model
        watch = s.watch([sub])
        assert poller.watched == 0  # nothing polled for a watch not used
        async with watch:
            assert poller.watched == 1
        assert poller.watched == 0  # left: unsubscribed at once


# -- one error model for batches ------------------------------------------------------------


async def test_batch_errors_are_typed_and_survive_the_journal(
    make_server: MakeServer, tmp_path: Path
) -> None:
    def planner(body: object, index: int) -> TaskPlan:
        return TaskPlan(outcome="failed")

    server = await make_server(EmulatorConfig(balance=1, planner=planner))
    async with session_for(server, max_concurrency=1) as s:
        first = await s.run_batch([VideoRequest("a"), VideoRequest("b")], out_dir=tmp_path)
        failed, unsent = first.items
        assert isinstance(failed.error, TaskFailedError) and failed.reason
        assert isinstance(unsent.error, InsufficientBalanceError)
        assert unsent.error.status == 402 and "not submitted" in (unsent.reason or "")
        # A re-run rebuilds each error from the journal, as its own type.
        server.emulator.set_balance(0)
        again = await s.run_batch([VideoRequest("a"), VideoRequest("b")], out_dir=tmp_path)
    rebuilt = again.items[0].error
    assert isinstance(rebuilt, TaskFailedError) and str(rebuilt) == str(failed.error)
    assert rebuilt.task_id == failed.error.task_id
    with sqlite3.connect(tmp_path / ".apimart-journal.sqlite3") as conn:
        records = [r for (r,) in conn.execute("SELECT error_record FROM items")]
    assert all(r and KEY not in r for r in records)


def test_an_error_record_round_trips_type_status_code_message_and_request_id() -> None:
    error = RateLimitError("slow down", code="rate_limit", retry_after=2.0)
    with_response(error, {"X-Request-Id": "req-123", "Retry-After": "2"})
    assert error.request_id == "req-123" and error.headers == {
        "x-request-id": "req-123", "retry-after": "2"}
    back = error_from_record(error_record(error))
    assert type(back) is RateLimitError and str(back) == str(error)
    assert (back.status, back.code, back.message, back.request_id, back.retry_after) == (
        429, "rate_limit", "slow down", "req-123", 2.0)
    unknown = error_from_record({"type": "NoSuchError", "text": "odd"})
    assert type(unknown) is APIMartError and str(unknown) == "odd"


async def test_api_errors_carry_the_answers_headers(server: EmulatorServer) -> None:
    server.emulator.inject("submit", Fault.http(429, retry_after="0"))
    async with session_for(server, retry=RetryPolicy(max_attempts=1)) as s:
        with pytest.raises(RateLimitError) as info:
            await s.submit(VideoRequest("x"))
    assert info.value.headers is not None and info.value.headers["retry-after"] == "0"
    (record,) = [r for r in server.emulator.request_log if r.route == "submit"]
    assert record.request_id and info.value.request_id == record.request_id


# -- one-way layers -------------------------------------------------------------------------


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [ast.unparse(node) for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_nothing_but_the_facade_and_the_cli_imports_session() -> None:
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if any("_session" in line for line in _imports(p))}
    # sync.py wraps the Session in a blocking one; the pytest plugin hands sessions out.
    assert users == {"__init__.py", "_cli/main.py", "sync.py", "testing/pytest_plugin.py"}


# -- time is injected: every retry wait goes through the session's clock --------------------


async def test_retry_and_resume_waits_go_through_the_clock(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # A minute of backoff per retry, were the waits real; under set_testing the clock
    # makes each one zero, so the whole thing takes well under a second.
    slow = RetryPolicy(initial_delay=60.0, max_delay=60.0, max_attempts=4)
    server.emulator.inject("submit", Fault.http(503), Fault.http(503))
    server.emulator.inject("task", Fault.http(500))
    server.emulator.inject("download", Fault.reset(), Fault.reset())
    with anyio.fail_after(10):
        async with session_for(server, retry=slow) as s:
            task = await s.wait(await s.submit(VideoRequest("x")))
            result = await s.download(task, tmp_path)
    assert result.size > 0 and s.stats.retries >= 3


def test_timeout_download_idle_keeps_its_old_name_read() -> None:
    assert Timeout(read=5.0) == Timeout(download_idle=5.0)
    assert Timeout(download_idle=5.0).read == 5.0 and Timeout().download_idle == 30.0
    with pytest.raises(ValueError, match="download_idle"):
        Timeout(read=-1.0)
