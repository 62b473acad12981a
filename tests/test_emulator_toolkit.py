"""The emulator as a toolkit: faults typed per route, the task view, the request log and
the stepped clock (with a Session on it)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import attrs
import pytest

from apimart_async import PollPolicy, Session, TaskStatus, ValidationError, VideoRequest
from apimart_async.testing import (
    Clock,
    EmulatedTask,
    EmulatorConfig,
    EmulatorServer,
    Fault,
    RequestRecord,
    SteppedClock,
    TaskPlan,
)

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio

AUTH = {"Authorization": f"Bearer {KEY}"}


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the event loop run (no sleeping) until `condition` holds."""
    # The progress is made by other tasks and sockets, so there is no one event to wait
    # on: yield to them. The guard is real time; each wait here takes milliseconds.
    with anyio.move_on_after(10):
        while not condition():
            await anyio.lowlevel.checkpoint()
    assert condition(), f"timed out waiting for {what}"


async def completed_task(server: EmulatorServer) -> tuple[str, str]:
    """A completed task's id and result URL, made over plain HTTP."""
    async with aiohttp.ClientSession() as http:
        async with http.post(server.base_url + "/v1/videos/generations", headers=AUTH,
                             json={"model": "sora-2", "prompt": "fox"}) as r:
            task_id = (await r.json())["data"][0]["task_id"]
        server.emulator.complete_all()
        async with http.get(f"{server.base_url}/v1/tasks/{task_id}", headers=AUTH) as r:
            url = (await r.json())["data"]["result"]["videos"][0]["url"][0]
    return task_id, url


# -- faults typed per route ------------------------------------------------------------

# Each fault builder, and the routes it acts on: the README's table says the same.
EVERY = {"submit", "task", "download", "balance"}
ROUTES = {
    "http": (EVERY, Fault.http(503)),
    "body_status": (EVERY, Fault.body_status(500)),
    "reset": (EVERY, Fault.reset()),
    "html": (EVERY, Fault.html(502)),
    "redirect": (EVERY, Fault.redirect("http://127.0.0.1:9/x")),
    "slow": (EVERY, Fault.slow(0.01)),
    "lost_answer": ({"submit"}, Fault.lost_answer()),
    "created_with_error": ({"submit"}, Fault.created_with_error()),
    "cut": ({"download"}, Fault.cut(0.5)),
    "ignore_range": ({"download"}, Fault.ignore_range()),
    "short_range": ({"download"}, Fault.short_range(0.5)),
    "wrong_range": ({"download"}, Fault.wrong_range()),
    "gzip": ({"download", "task"}, Fault.gzip(bomb=True)),
    "endless": ({"download"}, Fault.endless()),
    "drip": ({"download"}, Fault.drip(1.0)),
    "cut_unframed": ({"download"}, Fault.cut_unframed(0.5)),
    "result_url": ({"task"}, Fault.result_url("file:///etc/passwd")),
    "answer_id": ({"task"}, Fault.answer_id("../../x")),
    "echo_key": ({"task"}, Fault.echo_key()),
    "huge_answer": ({"task"}, Fault.huge_answer(1 << 20)),
    "task_status": ({"task"}, Fault.task_status(None)),
    "repeat_id": ({"submit"}, Fault.repeat_id()),
    "storm": ({"submit", "task", "balance"}, Fault.storm(1.0)),
}

REFUSED = [
    (route, fault) for routes, fault in ROUTES.values()
    for route in ("submit", "task", "download", "balance") if route not in routes
]


@pytest.mark.parametrize(("name", "routes"), [(k, v[0]) for k, v in ROUTES.items()])
def test_each_fault_names_the_routes_it_acts_on(name: str, routes: set[str]) -> None:
    assert ROUTES[name][1].routes == routes


def test_the_readmes_fault_table_says_what_the_code_does() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    documented = {}
    for line in readme.splitlines():
        if not line.startswith("| `Fault."):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        routes = {r for r, cell in zip(("submit", "task", "download"), cells[1:], strict=True)
                  if cell.startswith("yes")}
        for name in re.findall(r"(?:Fault\.|, |`)(\w+)\(", cells[0]):
            documented[name] = routes
    # The table has no balance column: the sentence under it names those faults.
    assert documented == {name: routes - {"balance"} for name, (routes, _) in ROUTES.items()}
    on_balance = sorted(name for name, (routes, _) in ROUTES.items() if "balance" in routes)
    sentence = readme.split("The `balance` route", 1)[1].split("\n\n", 1)[0]
    named = sorted(n for n in re.findall(r"`(\w+)`", sentence) if n in ROUTES)
    assert named == on_balance


@pytest.mark.parametrize(("route", "fault"), REFUSED, ids=[f"{r}-{f.kind}" for r, f in REFUSED])
def test_a_fault_with_no_effect_on_its_route_is_refused(route: Any, fault: Fault) -> None:
    server = EmulatorServer()
    # Queued behind a good fault: the whole call is refused, nothing is queued.
    with pytest.raises(ValueError, match=rf"has no effect on route '{route}'; it acts on"):
        server.emulator.inject(route, Fault.http(500), fault)
    assert server.emulator.pending_faults(route) == 0


def test_the_refusal_says_which_fault_and_where_it_would_act() -> None:
    emulator = EmulatorServer().emulator
    with pytest.raises(ValueError, match="no effect") as info:
        emulator.inject("task", Fault.cut(0.3))
    assert str(info.value) == (
        "Fault.cut(0.3) has no effect on route 'task'; it acts on 'download' only"
    )
    with pytest.raises(ValueError, match=r"Fault.lost_answer\(hard=True\) .* 'submit' only"):
        emulator.inject("download", Fault.lost_answer(hard=True))
    with pytest.raises(TypeError, match="must be Fault objects"):
        emulator.inject("task", 503)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [503, 429, 500])
async def test_the_file_host_answers_an_injected_error_status(
    server: EmulatorServer, status: int
) -> None:
    _, url = await completed_task(server)
    server.emulator.inject("download", Fault.http(status, retry_after="2"))
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as first:
            assert first.status == status and first.headers["Retry-After"] == "2"
        async with http.get(url) as second:
            assert second.status == 200
    downloads = [r for r in server.emulator.request_log if r.route == "download"]
    assert [(r.status, r.fault) for r in downloads] == [
        (status, Fault.http(status, retry_after="2")), (200, None)
    ]


async def test_a_range_fault_waits_for_a_request_that_asks_for_a_range(
    server: EmulatorServer,
) -> None:
    _, url = await completed_task(server)
    server.emulator.inject("download", Fault.short_range(0.5))
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as whole:
            assert whole.status == 200 and len(await whole.read()) == 64 * 1024
        # Not used up by a request it could not act on.
        assert server.emulator.pending_faults("download") == 1
        async with http.get(url, headers={"Range": "bytes=1000-"}) as part:
            assert part.status == 206
            assert len(await part.read()) == (64 * 1024 - 1000) // 2
    assert server.emulator.pending_faults("download") == 0
    faults = [r.fault for r in server.emulator.request_log if r.route == "download"]
    assert faults == [None, Fault.short_range(0.5)]


# -- the task view ------------------------------------------------------------------------

async def test_tasks_are_read_only_snapshots_at_the_emulators_time() -> None:
    clock = SteppedClock()
    plan = TaskPlan(duration=10.0, queue_time=2.0, estimated_time=9.0)
    config = EmulatorConfig(planner=lambda body, index: plan)
    async with EmulatorServer(config, clock=clock) as server, aiohttp.ClientSession() as http:
        clock.advance(1.5)
        async with http.post(server.base_url + "/v1/videos/generations",
                             headers={**AUTH, "Idempotency-Key": "k-1"},
                             json={"model": "veo3", "prompt": "a fox", "duration": 5}) as r:
            task_id = (await r.json())["data"][0]["task_id"]
        task = server.emulator.task(task_id)
        assert isinstance(task, EmulatedTask)
        assert (task.id, task.model, task.status, task.progress) == (task_id, "veo3", "pending", 0)
        assert (task.created, task.ends_at, task.now) == (1.5, 11.5, 1.5)
        assert task.plan == plan and task.idempotency_key == "k-1"
        assert dict(task.body) == {"model": "veo3", "prompt": "a fox", "duration": 5}
        assert KEY not in repr(task)

        clock.advance(2 + 4)  # 6 s old: 4 s into an 8 s render
        later = server.emulator.tasks[task_id]
        assert (later.status, later.progress, later.now) == ("processing", 50, 7.5)
        assert task.status == "pending"  # a snapshot does not move
        clock.advance(5)
        assert server.emulator.task(task_id).status == "completed"
        assert server.emulator.task(task_id).is_terminal
        assert list(server.emulator.tasks) == [task_id] and len(server.emulator.tasks) == 1

        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            task.status = "completed"  # type: ignore[misc]
        with pytest.raises(TypeError):
            task.body["prompt"] = "changed"  # type: ignore[index]
        with pytest.raises(TypeError):
            server.emulator.tasks[task_id] = task  # type: ignore[index]
        with pytest.raises(KeyError, match="no task 'task_nope'"):
            server.emulator.task("task_nope")


async def test_a_submission_body_not_sent_as_json_is_refused(make_server: MakeServer) -> None:
    # As a JSON API does: the body's Content-Type must say JSON (the SDK sends it with
    # the encoded body, not as a header of its own: a regression fails every submit).
    server = await make_server()
    body = b'{"model": "sora-2", "prompt": "a fox"}'
    url = server.base_url + "/v1/videos/generations"
    # (aiohttp types bytes application/octet-stream unless told to skip it.)
    for session_kw, headers, said in [
        ({}, {}, "'application/octet-stream'"),
        ({}, {"Content-Type": "text/plain"}, "'text/plain'"),
        ({"skip_auto_headers": ["Content-Type"]}, {}, "none"),
    ]:
        async with aiohttp.ClientSession(**session_kw) as http, \
                http.post(url, data=body, headers={**AUTH, **headers}) as r:
            answer = await r.json()
        assert r.status == 400, answer
        assert answer["error"]["message"] == f"Content-Type must be application/json, got {said}"
    async with aiohttp.ClientSession() as http, http.post(
            url, data=body, headers={**AUTH, "Content-Type": "application/json; charset=utf-8"}
    ) as r:
        assert r.status == 200
    assert server.emulator.stats.rejected_submissions == 3 and len(server.emulator.tasks) == 1


async def test_replan_changes_what_a_task_will_do(make_server: MakeServer) -> None:
    server = await make_server()
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x"))
        server.emulator.replan(sub.task_id, TaskPlan(duration=0.0, outcome="failed"))
        assert server.emulator.task(sub.task_id).status == "failed"
        assert (await s.get_task(sub)).status is TaskStatus.FAILED
    with pytest.raises(KeyError):
        server.emulator.replan("task_nope", TaskPlan())


# -- the request log ------------------------------------------------------------------------

async def test_the_request_log_records_every_request_and_never_a_key() -> None:
    clock = SteppedClock()
    async with EmulatorServer(EmulatorConfig(api_key=KEY), clock=clock) as server:
        server.emulator.inject("task", Fault.reset())
        async with aiohttp.ClientSession() as http:
            async with http.post(server.base_url + "/v1/videos/generations",
                                 headers={**AUTH, "Idempotency-Key": "k-9"},
                                 json={"model": "m", "prompt": "p"}) as r:
                task_id = (await r.json())["data"][0]["task_id"]
            clock.advance(3)
            async with http.get(f"{server.base_url}/v1/tasks/{task_id}", headers=AUTH) as r:
                assert r.status == 200  # aiohttp sent the GET again after the reset
            async with http.get(f"{server.base_url}/v1/tasks/{task_id}",
                                headers={"Authorization": "Bearer sk-wrong-key"}) as r:
                assert r.status == 401
            async with http.get(f"{server.base_url}/v1/nothing", headers=AUTH) as r:
                assert r.status == 404
            async with http.get(server.base_url + "/_emulator/stats") as r:
                assert r.status == 200  # control endpoints are not logged
            async with http.get(server.base_url + "/_emulator/requests") as r:
                served = await r.json()
        log = server.emulator.request_log
    assert all(isinstance(r, RequestRecord) for r in log)
    assert [(r.route, r.method, r.path, r.status, r.fault, r.authorization,
             r.idempotency_key, r.time) for r in log] == [
        ("submit", "POST", "/v1/videos/generations", 200, None, True, "k-9", 0.0),
        ("task", "GET", f"/v1/tasks/{task_id}", None, Fault.reset(), True, None, 3.0),
        ("task", "GET", f"/v1/tasks/{task_id}", 200, None, True, None, 3.0),
        ("task", "GET", f"/v1/tasks/{task_id}", 401, None, True, None, 3.0),
        (None, "GET", "/v1/nothing", 404, None, True, None, 3.0),
    ]
    assert KEY not in repr(log) and "sk-wrong-key" not in repr(log)
    # The same log as JSON, for harnesses running the emulator in another process.
    assert [(e["route"], e["status"], e["fault"], e["time"]) for e in served] == [
        (r.route, r.status, r.fault.describe() if r.fault else None, r.time) for r in log
    ]
    assert served[1]["fault"] == "Fault.reset()"


async def test_the_request_log_is_bounded_and_can_be_cleared(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(request_log_size=3))
    async with session_for(server) as s:
        subs = [await s.submit(VideoRequest(f"{i}"), idempotency_key=f"k{i}") for i in range(5)]
    assert len(subs) == 5
    assert [r.idempotency_key for r in server.emulator.request_log] == ["k2", "k3", "k4"]
    server.emulator.clear_request_log()
    assert server.emulator.request_log == ()
    with pytest.raises(ValueError, match="request_log_size must be a whole number >= 0"):
        EmulatorConfig(request_log_size=-1)


async def test_the_log_shows_a_cut_download_and_no_key_sent_to_the_file_host(
    make_server: MakeServer, tmp_path: Any
) -> None:
    server = await make_server()
    async with session_for(server) as s:
        task = await s.wait(await s.submit(VideoRequest("x")))
        server.emulator.inject("download", Fault.cut(0.5))
        await s.download(task, tmp_path / "x.mp4")
    downloads = [r for r in server.emulator.request_log if r.route == "download"]
    assert [(r.status, r.fault, r.range is not None) for r in downloads] == [
        (200, Fault.cut(0.5), False), (206, None, True)
    ]
    assert not any(r.authorization for r in downloads)


# -- the stepped clock ----------------------------------------------------------------------

async def test_a_session_on_a_stepped_clock_moves_only_when_time_is_stepped() -> None:
    clock = SteppedClock()
    plan = TaskPlan(duration=10.0, queue_time=4.0, estimated_time=10.0)
    config = EmulatorConfig(planner=lambda body, index: plan)
    policy = PollPolicy(first_delay=1.0, min_interval=1.0, max_interval=1.0)
    seen: list[tuple[float, TaskStatus, int]] = []
    async with EmulatorServer(config, clock=clock) as server, Session(
        KEY, base_url=server.base_url, clock=clock, poll=policy
    ) as session:
        sub = await session.submit(VideoRequest("a fox"))

        def polls() -> int:
            return sum(r.route == "task" for r in server.emulator.request_log)

        async def follow() -> None:
            async for update in session.watch([sub]):
                seen.append((clock.now(), update.status, update.progress))

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            # Parked on the clock: the poller for its first poll, the watch for news.
            await until(lambda: clock.waiting >= 2, "the session waits on the clock")
            for _ in range(200):
                await anyio.lowlevel.checkpoint()
            assert polls() == 0 and seen == []  # no time passed: nothing polled

            for second in range(1, 11):
                clock.advance(1.0)
                # Logged by the emulator, and its answer taken in: the poller is parked
                # again, on the next second (after the last poll, the task is over).
                await until(lambda n=second: polls() == n and (
                    n == 10 or clock.next_deadline == n + 1), f"poll {second}")
                assert server.emulator.task(sub.task_id).now == second
            await until(lambda: bool(seen) and seen[-1][1] is TaskStatus.COMPLETED, "the end")

    # One poll per step, each at the stepped time; the task's life as the session saw it.
    assert [r.time for r in server.emulator.request_log if r.route == "task"] == [
        float(t) for t in range(1, 11)
    ]
    assert seen[0] == (1.0, TaskStatus.PENDING, 0)
    assert (4.0, TaskStatus.PROCESSING, 0) in seen
    assert (7.0, TaskStatus.PROCESSING, 50) in seen
    assert seen[-1] == (10.0, TaskStatus.COMPLETED, 100)
    assert server.stats.detection_lags[sub.task_id] == 0.0


async def test_a_watch_timeout_on_a_stepped_clock_fires_when_stepped_past_it() -> None:
    clock = SteppedClock()
    config = EmulatorConfig(planner=lambda body, index: TaskPlan(duration=100.0))
    policy = PollPolicy(first_delay=50.0, min_interval=50.0, max_interval=50.0)
    async with EmulatorServer(config, clock=clock) as server, Session(
        KEY, base_url=server.base_url, clock=clock, poll=policy
    ) as session:
        sub = await session.submit(VideoRequest("x"))
        finals = []

        async def follow() -> None:
            async for update in session.watch([sub], task_timeout=5.0):
                finals.append((clock.now(), update.timed_out))

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await until(lambda: clock.waiting >= 2, "parked")
            clock.advance(4.9)
            for _ in range(100):
                await anyio.lowlevel.checkpoint()
            assert finals == []
            clock.advance(0.1)
            await until(lambda: bool(finals), "the timeout")
    assert finals == [(5.0, True)]


async def test_stepped_clock_sleep_and_move_on_at() -> None:
    clock = SteppedClock()
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(5)
        woke.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper)
        await until(lambda: clock.waiting == 1, "asleep")
        clock.advance(4)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert woke == []
        clock.advance(1)
        await until(lambda: woke == [5.0], "awake")
    assert clock.waiting == 0
    with clock.move_on_at(5.0) as scope:  # already there: ends at once
        await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert clock.real(0) == 0 and clock.real(1) == math.inf
    wall = clock.wall()
    clock.advance(2.5)
    assert clock.wall() == wall + 2.5
    for bad in (-1, math.nan, math.inf, "1", True):
        with pytest.raises(ValidationError, match="seconds"):
            clock.advance(bad)  # type: ignore[arg-type]


async def test_the_compressed_clock_moves_on_at_api_time() -> None:
    clock = Clock(speed=1000)
    with clock.move_on_at(clock.now() + 5) as scope:  # 5 API s = 5 ms
        await anyio.sleep_forever()
    assert scope.cancelled_caught


# -- Fault.storm: the API host refuses everything for a while -----------------------------

async def test_a_storm_refuses_every_api_request_for_its_seconds_then_none() -> None:
    clock = SteppedClock()
    config = EmulatorConfig(rate_limit=1000, burst=20, rate_limit_clock=True)
    async with EmulatorServer(config, clock=clock) as server, aiohttp.ClientSession() as http:
        api = server.base_url

        async def statuses() -> list[tuple[int, str | None]]:
            out = []
            for method, path in (("POST", "/v1/videos/generations"), ("GET", "/v1/balance"),
                                 ("GET", "/v1/tasks/task_missing")):
                async with http.request(method, api + path, headers=AUTH,
                                        json={"model": "sora-2", "prompt": "a fox"}) as r:
                    out.append((r.status, r.headers.get("Retry-After")))
            return out

        server.emulator.inject("submit", Fault.storm(3.0))
        assert await statuses() == [(429, "1")] * 3  # the submission starts it
        clock.advance(2.9)
        assert await statuses() == [(429, "1")] * 3
        tokens = server.emulator._bucket._tokens  # type: ignore[union-attr]
        clock.advance(0.1)  # over: the bucket was not drawn on meanwhile
        assert [s for s, _ in await statuses()] == [200, 200, 404]
        assert tokens == 20 - 1  # only the request that met the fault took a token
        assert server.stats.rate_limited == 6
        server.emulator.inject("task", Fault.storm(1.0, retry_after=None))
        assert await statuses() == [(200, None), (200, None), (429, None)]
        assert (await statuses())[0] == (429, None)


@pytest.mark.parametrize(("build", "names"), [
    (lambda: Fault.storm(0), "Fault.storm: seconds"),
    (lambda: Fault.storm(-1), "Fault.storm: seconds"),
    (lambda: Fault.storm(math.inf), "Fault.storm: seconds"),
    (lambda: Fault.storm(True), "Fault.storm: seconds"),
    (lambda: Fault.storm(1, retry_after=1), "Fault.storm: retry_after"),  # type: ignore[arg-type]
])
def test_a_storm_that_would_do_nothing_is_refused(build: Any, names: str) -> None:
    with pytest.raises(ValueError, match=f"^{names} must"):
        build()


def test_a_storm_describes_itself_as_built() -> None:
    assert Fault.storm(3).describe() == "Fault.storm(3.0)"
    assert Fault.storm(2, retry_after=None).describe() == "Fault.storm(2.0, retry_after=None)"
    assert Fault.storm(2, retry_after="5").describe() == "Fault.storm(2.0, retry_after='5')"
