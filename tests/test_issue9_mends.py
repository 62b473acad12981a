"""Mends from the #9 attack review: rebuilt batch errors, the stepped clock's helpers,
fault and config validation, the session's read-only surface, request ids."""

from __future__ import annotations

import json
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from apimart_async import (
    APIConnectionError,
    APIMartError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    DownloadError,
    InsufficientBalanceError,
    NotFoundError,
    NotSubmittedError,
    PermissionDeniedError,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    Session,
    Task,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    ValidationError,
    VideoRequest,
)
from apimart_async._cli.main import main as cli_main
from apimart_async._cli.main import report_json
from apimart_async._core.errors import (
    JournalBusyError,
    error_from_record,
    error_record,
    with_response,
)
from apimart_async._core.models import TaskError
from apimart_async.testing import (
    EmulatorConfig,
    EmulatorServer,
    Fault,
    SteppedClock,
    TaskPlan,
    emulator_process,
)

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio

# -- F3: a rebuilt error has its class's attributes, no more, no fewer --------------------

_FAILED = Task(id="task_1", status=TaskStatus.FAILED, error=TaskError(code=None, message="boom"))
_SAMPLES: list[APIMartError] = [
    ValidationError("duration", "must be 5 or 10"),
    JournalBusyError("/x/j.sqlite3", pid=None, host=None),
    APIStatusError("odd", status=418),
    BadRequestError("bad", status=400),
    AuthenticationError("no", status=401, code=None),
    InsufficientBalanceError("broke", status=402, code="balance"),
    PermissionDeniedError("nope", status=403),
    NotFoundError("gone", status=404),
    RateLimitError("slow down"),
    RateLimitError("slow down", code=7, retry_after=2.5),
    ServerError("down", status=503),
    APIConnectionError("reset", request_sent=False),
    APITimeoutError("slow"),
    DecodeError("not JSON", status=200, snippet="<html>"),
    TaskFailedError(_FAILED),
    TaskTimeoutError("task_2", timeout=60.0),
    NotSubmittedError(InsufficientBalanceError("broke", status=402, code=4021)),
    ResultExpiredError("task_3"),
    DownloadError("task_4", "cut short", resumable=False),
]


@pytest.mark.parametrize("error", _SAMPLES, ids=lambda e: type(e).__name__)
def test_a_rebuilt_error_has_exactly_its_classs_attributes(error: APIMartError) -> None:
    with_response(error, {"X-Request-Id": "req-9"})
    back = error_from_record(error_record(error))
    assert type(back) is type(error) and str(back) == str(error)
    # The same instance attributes, headers aside (a re-run cannot restore them).
    assert set(vars(back)) == set(vars(error)) - {"headers"}
    assert back.headers is None and back.request_id == "req-9"
    for name in vars(error):
        if name in ("headers", "task"):
            continue
        mine, theirs = getattr(error, name), getattr(back, name)
        if isinstance(mine, APIMartError):
            assert type(theirs) is type(mine) and str(theirs) == str(mine)
        else:
            assert theirs == mine, name
    if hasattr(error, "task"):
        assert back.task is None  # the Task object is not recorded


def test_an_old_record_rebuilds_with_none_for_what_it_lacks() -> None:
    back = error_from_record({"type": "RateLimitError", "text": "HTTP 429: x", "status": 429,
                              "field": "stray"})
    assert isinstance(back, RateLimitError)
    assert (back.code, back.retry_after, back.message) == (None, None, None)
    assert not hasattr(back, "field")
    unknown: Any = error_from_record({"type": "NoSuchError", "text": "odd", "status": 500})
    assert type(unknown) is APIMartError and not hasattr(unknown, "status")


def test_never_sent_items_rebuild_their_reason() -> None:
    reason = InsufficientBalanceError("broke", status=402, code=4021)
    back = error_from_record(error_record(NotSubmittedError(reason)))
    assert isinstance(back, NotSubmittedError)
    assert isinstance(back.reason, InsufficientBalanceError)
    assert (back.reason.status, back.reason.code) == (402, 4021)



# -- F4: stepping a stepped clock does not jump past a wait's timeout ---------------------


async def test_step_reaches_the_tasks_end_not_the_waits_timeout() -> None:
    clock = SteppedClock()
    config = EmulatorConfig(planner=lambda body, index: TaskPlan(duration=10, queue_time=4))
    async with EmulatorServer(config, clock=clock) as server, Session(
        KEY, base_url=server.base_url, clock=clock
    ) as session:
        sub = await session.submit(VideoRequest("a red fox"))
        clock.advance(5)
        async with anyio.create_task_group() as tg:
            done: list[Task] = []

            async def wait() -> None:
                done.append(await session.wait(sub, timeout=600))

            tg.start_soon(wait)
            for _ in range(50):
                if done:
                    break
                await clock.step()
        # Stepping from poll to poll, not to the 600 s timeout.
        assert done and done[0].status is TaskStatus.COMPLETED
        assert clock.now() < 60
        assert server.emulator.task(sub.task_id).status == "completed"


async def test_settle_waits_for_the_pollers_first_deadline_and_step_returns_the_time(
) -> None:
    clock = SteppedClock()
    config = EmulatorConfig(planner=lambda body, index: TaskPlan(duration=10))
    async with EmulatorServer(config, clock=clock) as server, Session(
        KEY, base_url=server.base_url, clock=clock
    ) as session:
        assert await clock.step() is None  # nothing waits: no advance
        assert clock.now() == 0
        sub = await session.submit(VideoRequest("x"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(session.wait, sub, timeout=600))
            await clock.settle()
            deadline = clock.next_deadline
            assert deadline is not None and deadline < 600  # the poller's, not the timeout
            assert await clock.step() == deadline
            tg.cancel_scope.cancel()


# -- F1: a fault that could have no effect is refused where it is built -------------------


@pytest.mark.parametrize(("build", "names"), [
    (lambda: Fault.redirect("{files}/x", 200), "Fault.redirect: status"),
    (lambda: Fault.redirect("", 302), "Fault.redirect: location"),
    (lambda: Fault.http(99), "Fault.http: status"),
    (lambda: Fault.http(200), "Fault.http: status"),
    (lambda: Fault.http(True), "Fault.http: status"),
    (lambda: Fault.http(503, retry_after=5), "Fault.http: retry_after"),
    (lambda: Fault.body_status(200), "Fault.body_status: code"),
    (lambda: Fault.html(99), "Fault.html: status"),
    (lambda: Fault.cut(1.5), "Fault.cut: fraction"),
    (lambda: Fault.cut(1.0), "Fault.cut: fraction"),
    (lambda: Fault.cut(-0.1), "Fault.cut: fraction"),
    (lambda: Fault.short_range(1.0), "Fault.short_range: fraction"),
    (lambda: Fault.slow(-1), "Fault.slow: seconds"),
    (lambda: Fault.slow(0), "Fault.slow: seconds"),
    (lambda: Fault.slow(float("inf")), "Fault.slow: seconds"),
])
def test_a_fault_with_no_effect_is_refused_naming_the_argument(
    build: Any, names: str
) -> None:
    with pytest.raises(ValueError, match=f"^{names} must"):
        build()


def test_faults_with_an_effect_are_still_built() -> None:
    for fault in (Fault.http(400), Fault.http(599, retry_after="1"), Fault.body_status(402),
                  Fault.html(200), Fault.redirect("{files}/x", 302), Fault.cut(0.0),
                  Fault.cut(0.99), Fault.short_range(0.5), Fault.slow(0.01)):
        assert isinstance(fault, Fault)


# -- F2: the kind profile's knobs beside another profile are refused ----------------------


@pytest.mark.parametrize("knob", [{"fail_rate": 1.0}, {"duration": (1.0, 2.0)},
                                  {"queue_time": (0.0, 1.0)}, {"estimate_error": 0.5}])
def test_kind_knobs_beside_another_profile_are_refused(knob: dict[str, Any]) -> None:
    (name,) = knob
    with pytest.raises(ValueError, match=rf"{name}=.*'kind' profile.*profile='hostile'"):
        EmulatorConfig(profile="hostile", **knob)


def test_kind_knobs_are_accepted_where_the_kind_profile_reads_them() -> None:
    EmulatorConfig(fail_rate=1.0, duration=(1.0, 2.0))
    EmulatorConfig(profile="kind", fail_rate=1.0)
    EmulatorConfig(profile="hostile", profiles={"veo3": "kind"}, fail_rate=1.0)
    EmulatorConfig(profile="hostile")


@pytest.mark.parametrize(("flags", "named"), [
    (["--task-duration", "1:2"], "--task-duration"),
    (["--fail-rate", "1", "--estimate-error", "0.1"], "--estimate-error, --fail-rate"),
])
def test_the_cli_refuses_kind_flags_beside_another_profile(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["emulator", "--profile", "hostile", *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "--profile hostile" in err


async def test_the_cli_emulator_runs_with_a_profile_and_no_kind_flags() -> None:
    async with emulator_process("--profile", "hostile") as url:
        assert url.startswith("http://127.0.0.1:")
    async with emulator_process("--profile", "hostile", "--model-profile", "m=kind",
                                "--fail-rate", "1") as url:
        assert url.startswith("http://127.0.0.1:")


# -- F5: a closed borrowed aiohttp session is refused at enter ----------------------------


async def test_a_closed_borrowed_http_session_is_refused_at_enter(
    server: EmulatorServer,
) -> None:
    http = aiohttp.ClientSession()
    await http.close()
    session = session_for(server, http_session=http)
    with pytest.raises(ValidationError, match=r"http_session: .*is closed") as info:
        async with session:
            pass
    assert info.value.field == "http_session"
    assert "unopened" in repr(session)  # refused before opening anything
    assert not [r for r in server.emulator.request_log]
    # An open one is used (and left open).
    async with aiohttp.ClientSession() as http, session_for(server, http_session=http) as s:
        await s.submit(VideoRequest("x"))
        assert not http.closed


async def test_a_borrowed_http_session_with_auth_is_refused_at_enter(
    server: EmulatorServer,
) -> None:
    with warnings.catch_warnings():  # (aiohttp 3.14 deprecates auth=; still taken)
        warnings.simplefilter("ignore", DeprecationWarning)
        http = aiohttp.ClientSession(auth=aiohttp.BasicAuth("me", "pw"))
    async with http:
        session = session_for(server, http_session=http)
        with pytest.raises(ValidationError, match=r"http_session: .*auth=") as info:
            async with session:
                pass
    assert info.value.field == "http_session" and "pw" not in str(info.value)
    assert not [r for r in server.emulator.request_log]


async def test_a_borrowed_http_session_with_a_default_authorization_is_refused(
    server: EmulatorServer,
) -> None:
    # Its default headers go with every request it sends, downloads included: a key in
    # them would reach every file host.
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {KEY}"}) as http:
        session = session_for(server, http_session=http)
        with pytest.raises(ValidationError, match="default Authorization header") as info:
            async with session:
                pass
    assert info.value.field == "http_session" and KEY not in str(info.value)
    assert not [r for r in server.emulator.request_log]


async def test_a_borrowed_http_session_closed_mid_use_is_named(
    server: EmulatorServer, tmp_path: Path
) -> None:
    http = aiohttp.ClientSession()
    async with session_for(server, http_session=http) as s:
        sub = await s.submit(VideoRequest("a fox"))
        task = await s.wait(sub)
        await http.close()
        for call in (lambda: s.get_task(sub), lambda: s.download(task, tmp_path / "f.mp4")):
            with pytest.raises(ValidationError, match=r"http_session: .*closed while") as info:
                await call()
            assert info.value.field == "http_session"


async def test_an_authorization_set_on_a_borrowed_session_later_stops_downloads(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http, session_for(server, http_session=http) as s:
        task = await s.wait(await s.submit(VideoRequest("a fox")))
        http.headers["Authorization"] = f"Bearer {KEY}"  # after the check at async with
        with pytest.raises(ValidationError, match="default Authorization header now"):
            await s.download(task, tmp_path / "fox.mp4")
    assert not [r for r in server.emulator.request_log if r.route == "download"]
    assert server.stats.credential_leaks == 0


async def test_a_borrowed_raise_for_status_session_still_gets_typed_errors(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # Its raise_for_status=True would make every error answer a connection error: the
    # 429 retried, the 402 fatal, the 404 NotFoundError, a cut download resumed.
    async with aiohttp.ClientSession(raise_for_status=True) as http, \
            session_for(server, http_session=http) as s:
        server.emulator.inject("submit", Fault.http(429, retry_after="1"))
        sub = await s.submit(VideoRequest("a fox"))  # retried
        server.emulator.inject("submit", Fault.http(402))
        with pytest.raises(InsufficientBalanceError) as broke:
            await s.submit(VideoRequest("a fox"))
        assert broke.value.fatal and not broke.value.submission_ambiguous
        with pytest.raises(NotFoundError):
            await s.get_task("task_nope")
        task = await s.wait(sub)
        server.emulator.inject("download", Fault.http(503))
        done = await s.download(task, tmp_path / "fox.mp4")
        assert done.path.stat().st_size > 0
    assert server.stats.submissions == 1


# -- F6: a session's configuration is read-only, all of it --------------------------------


async def test_a_session_refuses_every_attribute_write(server: EmulatorServer) -> None:
    s = session_for(server, rps=5)
    assert s.rps == 5 and session_for(server).rps is None
    for name, value in [("rps", 9), ("foo", 1), ("max_concurrency", 0), ("stats", None),
                        ("_engine", None), ("limits", None)]:
        with pytest.raises(AttributeError, match="read-only"):
            setattr(s, name, value)
    with pytest.raises(AttributeError, match="read-only"):
        del s.rps
    assert not hasattr(s, "limits") and not hasattr(s, "foo")
    async with s:
        with pytest.raises(AttributeError, match="read-only"):
            s.rps = 1  # type: ignore[misc]
        await s.submit(VideoRequest("x"))
        stats = s.stats
        assert stats.submissions == 1
        stats.submissions = 0  # a snapshot: the session's counters do not move
        assert s.stats.submissions == 1
        await s.submit(VideoRequest("y"))
        assert s.stats.submissions == 2 and stats.submissions == 0


# -- F8: every API answer carries an x-request-id, and a re-run keeps it -----------------


async def test_every_api_answer_carries_a_request_id(server: EmulatorServer) -> None:
    server.emulator.inject("task", Fault.html(502), Fault.http(404))
    async with aiohttp.ClientSession() as http:
        async with http.post(server.base_url + "/v1/videos/generations",
                             json={"prompt": "x"}) as r:
            unauthorized = (r.status, r.headers.get("x-request-id"))
        auth = {"Authorization": f"Bearer {KEY}"}
        async with http.post(server.base_url + "/v1/videos/generations", headers=auth,
                             json={"model": "veo3", "prompt": "x", "duration": 5}) as r:
            created = (r.status, r.headers.get("x-request-id"))
            task_id = (await r.json())["data"][0]["task_id"]
        answers = []
        for _ in range(2):
            async with http.get(f"{server.base_url}/v1/tasks/{task_id}", headers=auth) as r:
                answers.append((r.status, r.headers.get("x-request-id")))
    assert [status for status, _ in [unauthorized, created, *answers]] == [401, 200, 502, 404]
    ids = [rid for _, rid in [unauthorized, created, *answers]]
    assert all(ids) and len(set(ids)) == 4
    log = server.emulator.request_log
    assert [r.request_id for r in log] == ids


async def test_a_batch_items_error_keeps_its_request_id_across_a_rerun(
    server: EmulatorServer, tmp_path: Path
) -> None:
    server.emulator.inject("submit", Fault.http(400))
    async with session_for(server) as s:
        first = await s.run_batch([VideoRequest("refused")], out_dir=tmp_path)
    (record,) = [r for r in server.emulator.request_log if r.route == "submit"]
    error = first.items[0].error
    assert isinstance(error, BadRequestError) and record.request_id
    assert error.request_id == record.request_id
    async with session_for(server) as s:
        again = await s.run_batch([VideoRequest("refused")], out_dir=tmp_path)
    rebuilt = again.items[0].error
    assert isinstance(rebuilt, BadRequestError) and rebuilt.request_id == record.request_id
    assert len([r for r in server.emulator.request_log if r.route == "submit"]) == 1


# -- F11: a planner that raises is logged as the 500 the client got -----------------------


async def test_a_raising_planner_is_logged_as_a_500(make_server: MakeServer) -> None:
    def planner(body: Any, index: int) -> TaskPlan:
        raise KeyError("a bug in the test's planner")

    server = await make_server(EmulatorConfig(planner=planner))
    async with aiohttp.ClientSession() as http, http.post(
        server.base_url + "/v1/videos/generations", headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "veo3", "prompt": "x", "duration": 5},
    ) as r:
        assert r.status == 500
    (record,) = server.emulator.request_log
    assert record.status == 500 and record.request_id


# -- F9: a TaskPlan is checked like a TimingProfile; a task's body is read-only all down --


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"duration": -5}, "duration"),
    ({"duration": float("nan")}, "duration"),
    ({"queue_time": -1}, "queue_time"),
    ({"estimated_time": float("inf")}, "estimated_time"),
    ({"render_time": -1.0}, "render_time"),
    ({"outcome": "exploded"}, "outcome"),
    ({"progress_mode": "wobbly"}, "progress_mode"),
    ({"duration": 2, "queue_time": 3}, "queue_time"),
])
def test_a_bad_task_plan_is_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^TaskPlan: {field} must"):
        TaskPlan(**kwargs)


def test_good_task_plans_are_built() -> None:
    TaskPlan(duration=0)
    TaskPlan(duration=10, queue_time=10, estimated_time=None, render_time=None)
    TaskPlan(outcome="cancelled", progress_mode="steps", estimated_time=3)


async def test_a_tasks_body_is_read_only_all_the_way_down(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x", image_urls=["https://example.com/a.png"],
                                          extra={"options": {"hdr": True}}))
    body = server.emulator.task(sub.task_id).body
    assert body["image_urls"] == ("https://example.com/a.png",)
    with pytest.raises(AttributeError):
        body["image_urls"].append("https://example.com/b.png")
    with pytest.raises(TypeError):
        body["options"]["hdr"] = False
    assert server.emulator.task(sub.task_id).body["options"]["hdr"] is True


# -- F7: --json rows carry the typed error's status and code, as Python sees it -----------


async def test_json_rows_carry_the_typed_errors_status_and_code(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(balance=1))
    server.emulator.inject("submit", Fault.http(400))
    async with session_for(server, max_concurrency=1) as s:
        report = await s.run_batch([VideoRequest(f"p{i}") for i in range(4)], out_dir=tmp_path)
    data = json.loads(json.dumps(report_json(report)))
    rows = data["results"]
    for item, row in zip(report.items, rows, strict=True):
        assert row["error_type"] == (type(item.error).__name__ if item.error else None)
        assert row["status"] == getattr(item.error, "status", None)
        assert row["code"] == getattr(item.error, "code", None)
    assert [(r["error_type"], r["status"]) for r in rows] == [
        ("BadRequestError", 400), (None, None), ("InsufficientBalanceError", 402),
        ("NotSubmittedError", None)]
    assert rows[2]["code"] == 402 and rows[2]["request_id"]
    account = data["account_error"]
    assert (account["type"], account["status"], account["code"]) == (
        "InsufficientBalanceError", 402, 402)


@pytest.mark.parametrize("settings", [
    {"headers": {"Content-Type": "text/plain"}},
    {"skip_auto_headers": ["Content-Type"]},
])
async def test_a_borrowed_http_session_still_sends_a_json_body_typed_json(
    server: EmulatorServer, settings: dict[str, Any]
) -> None:
    # Review 11: the body's type travelled on aiohttp's payload alone, which a
    # borrowed session's own Content-Type (or its skipping the automatic one) beat:
    # the server read text/plain, or no type, and refused every submission.
    async with aiohttp.ClientSession(**settings) as http, \
            session_for(server, http_session=http) as s:
        await s.submit(VideoRequest("x"))
    assert server.emulator.stats.rejected_submissions == 0 and len(server.emulator.tasks) == 1
