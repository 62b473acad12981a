"""The Session over real sockets against the emulator: happy path, errors, retries."""

from __future__ import annotations

import aiohttp
import anyio
import pytest

from apimart_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    InsufficientBalanceError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    Session,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    Timeout,
    ValidationError,
    VideoRequest,
    __version__,
)
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, TaskPlan

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio

REQ = VideoRequest("a red fox running through snow", duration=5)


async def test_submit_then_wait_completes(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        sub = await s.submit(REQ)
        task = await s.wait(sub)
    assert sub.task_id == task.id and sub.request is REQ
    assert task.status is TaskStatus.COMPLETED and task.video_urls
    assert server.stats.submissions == 1
    assert server.stats.user_agents == {f"apimart-async/{__version__}": 1 + server.stats.polls[task.id]}
    # Adaptive polling: a handful of polls, not one a second.
    assert 1 <= server.stats.polls[task.id] <= 5


async def test_failed_task_raises_task_failed(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(planner=lambda body, i: TaskPlan(outcome="failed")))
    async with session_for(server) as s:
        sub = await s.submit(REQ)
        with pytest.raises(TaskFailedError) as info:
            await s.wait(sub)
    assert info.value.task_id == sub.task_id
    assert info.value.code == "content_policy_violation"
    assert info.value.task.status is TaskStatus.FAILED


async def test_wait_timeout_names_the_task(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(planner=lambda body, i: TaskPlan(duration=600)))
    async with session_for(server) as s:
        sub = await s.submit(REQ)
        with pytest.raises(TaskTimeoutError) as info:
            await s.wait(sub, timeout=5)
    assert info.value.task_id == sub.task_id and info.value.timeout == 5
    assert isinstance(info.value, TimeoutError)


@pytest.mark.parametrize(
    ("fault", "cls", "status"),
    [
        (Fault.http(400), BadRequestError, 400),
        (Fault.http(403), PermissionDeniedError, 403),
        (Fault.http(422), BadRequestError, 422),
        (Fault.body_status(402), InsufficientBalanceError, 402),
        (Fault.http(409), APIStatusError, 409),
    ],
)
async def test_error_mapping_on_submit(
    server: EmulatorServer, fault: Fault, cls: type[APIStatusError], status: int
) -> None:
    server.emulator.inject("submit", fault)
    async with session_for(server) as s:
        with pytest.raises(cls) as info:
            await s.submit(REQ)
    assert type(info.value) is cls and info.value.status == status
    assert server.stats.requests["submit"] == 1  # not retried
    assert not info.value.submission_ambiguous


async def test_server_side_validation_error(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        # A model the SDK does not know is sent unchecked: the server refuses it.
        with pytest.raises(BadRequestError, match="duration 99 is not supported"):
            await s.submit(VideoRequest("x", model="kling-9", duration=99))


async def test_bad_key_is_authentication_error(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(api_key="the-right-key"))
    async with session_for(server) as s:
        with pytest.raises(AuthenticationError) as info:
            await s.submit(REQ)
    assert info.value.fatal and server.stats.submissions == 0


async def test_empty_balance_is_402(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(balance=1))
    async with session_for(server) as s:
        await s.submit(REQ)
        with pytest.raises(InsufficientBalanceError) as info:
            await s.submit(REQ)
    assert info.value.status == 402 and info.value.fatal


async def test_unknown_task_is_not_found(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        with pytest.raises(NotFoundError):
            await s.get_task("task_does_not_exist")
    assert server.stats.requests["task"] == 1


async def test_local_validation_sends_nothing(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        with pytest.raises(ValidationError):
            await s.submit("just a prompt")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="task_id"):
            await s.get_task("")
        with pytest.raises(ValidationError, match="timeout"):
            await s.wait("t", timeout=-1)
    assert sum(server.stats.requests.values()) == 0


# -- retries --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "fault",
    [Fault.http(429, retry_after="1"), Fault.http(500), Fault.http(502), Fault.http(503),
     Fault.http(504), Fault.reset(), Fault.html(200), Fault.html(502)],
)
async def test_get_retries_transient_failures(server: EmulatorServer, fault: Fault) -> None:
    async with session_for(server) as s:
        sub = await s.submit(REQ)
        server.emulator.inject("task", fault, fault)
        task = await s.get_task(sub)
    assert task.id == sub.task_id
    assert server.stats.polls[sub.task_id] == 3
    # aiohttp itself repeats a GET once when a reused keep-alive connection was reset.
    assert s.stats.retries == (1 if fault.kind == "reset" else 2)


async def test_get_gives_up_after_max_attempts(server: EmulatorServer) -> None:
    async with session_for(server, retry=RetryPolicy(max_attempts=3)) as s:
        sub = await s.submit(REQ)
        server.emulator.inject("task", *[Fault.http(500)] * 5)
        with pytest.raises(ServerError):
            await s.get_task(sub)
    assert server.stats.polls[sub.task_id] == 3


@pytest.mark.parametrize("fault", [Fault.http(429, retry_after="2"), Fault.http(503)])
async def test_submit_retries_when_surely_not_processed(server: EmulatorServer, fault: Fault) -> None:
    server.emulator.inject("submit", fault, fault)
    async with session_for(server) as s:
        sub = await s.submit(REQ)
    assert server.stats.submissions == 1
    assert server.stats.requests["submit"] == 3
    # One Idempotency-Key, stable across the retries of the one submission.
    assert server.stats.idempotency_keys == [sub.idempotency_key] * 3


async def test_submit_retries_a_connection_that_never_opened() -> None:
    # Nothing listens on this port: the request cannot have been sent.
    async with EmulatorServer() as server:
        url = server.base_url
    async with Session(KEY, base_url=url, retry=RetryPolicy(max_attempts=3)) as s:
        with pytest.raises(APIConnectionError) as info:
            await s.submit(REQ)
    assert info.value.request_sent is False
    assert not info.value.submission_ambiguous
    assert s.stats.retries == 2


@pytest.mark.parametrize(
    ("fault", "cls", "tasks"),
    [
        (Fault.lost_answer(), APIConnectionError, 1),
        (Fault.reset(), APIConnectionError, 0),
        (Fault.http(500), ServerError, 0),
        (Fault.http(502), ServerError, 0),
        (Fault.http(504), ServerError, 0),
        (Fault.html(200), DecodeError, 0),
    ],
)
async def test_ambiguous_submit_failure_is_not_retried(
    server: EmulatorServer, fault: Fault, cls: type[Exception], tasks: int
) -> None:
    server.emulator.inject("submit", fault)
    async with session_for(server) as s:
        with pytest.raises(cls) as info:
            await s.submit(REQ)
    assert info.value.submission_ambiguous  # type: ignore[attr-defined]
    assert server.stats.requests["submit"] == 1
    assert server.stats.submissions == tasks


async def test_lost_answer_leaves_exactly_one_task(server: EmulatorServer) -> None:
    server.emulator.inject("submit", Fault.lost_answer())
    async with session_for(server) as s:
        with pytest.raises(APIConnectionError):
            await s.submit(REQ)
    assert server.stats.submissions == 1 and server.stats.duplicate_submissions == 0


async def test_opt_in_retry_of_ambiguous_submissions_can_bill_twice(server: EmulatorServer) -> None:
    # Why the default is off: the emulator, like APIMart, ignores Idempotency-Key.
    server.emulator.inject("submit", Fault.lost_answer())
    policy = RetryPolicy(retry_ambiguous_submissions=True)
    async with session_for(server, retry=policy) as s:
        await s.submit(REQ)
    assert server.stats.submissions == 2 and server.stats.duplicate_submissions == 1


async def test_huge_retry_after_raises_instead_of_sleeping(server: EmulatorServer) -> None:
    server.emulator.inject("submit", Fault.http(429, retry_after="3600"))
    async with session_for(server, retry=RetryPolicy(max_retry_after=60)) as s:
        with pytest.raises(RateLimitError) as info:
            await s.submit(REQ)
    assert info.value.retry_after == 3600
    assert server.stats.requests["submit"] == 1


async def test_a_hint_past_max_retry_after_pauses_the_session_no_longer_than_that(
    make_server: MakeServer,
) -> None:
    # The request that met "Retry-After: 3600" fails at once; the session's next call
    # waits at most max_retry_after (it waited the whole hour: every later submit,
    # get_task and watch silently stuck). Real delays, on a clock 2,000x fast: the
    # bound is 30 ms, the hour 1.8 s.
    from apimart_async.testing import set_testing

    server = await make_server(speed=2000.0)
    server.emulator.inject("submit", Fault.http(429, retry_after="3600"))
    clock = server.emulator.clock
    with set_testing(False):
        async with session_for(server, retry=RetryPolicy(max_retry_after=60)) as s:
            # Counted from before the first submission: the pause runs from its 429,
            # which comes after this. (Counted from after the error, a pause of the
            # process between the two, at 2,000x, read 41.9 API seconds in CI.)
            start = clock.now()
            with pytest.raises(RateLimitError):
                await s.submit(REQ)
            await s.submit(REQ)
            waited = clock.now() - start
    # Paused for the bound (60), not the hour; the upper margin (0.5 s real, the hour
    # is 1.8 s) absorbs a loaded machine's late wake-ups.
    assert 59.9 <= waited <= 1000


async def test_read_timeout_get_is_retried_post_is_not(server: EmulatorServer) -> None:
    timeout = Timeout(total=0.2)
    async with session_for(server, timeout=timeout) as s:
        sub = await s.submit(REQ)
        server.emulator.inject("task", Fault.slow(1.0))
        assert (await s.get_task(sub)).id == sub.task_id
        server.emulator.inject("submit", Fault.slow(1.0))
        with pytest.raises(APITimeoutError) as info:
            await s.submit(REQ)
    assert info.value.request_sent and info.value.submission_ambiguous


# -- concurrency and lifecycle ---------------------------------------------------------

async def test_max_concurrency_bounds_requests_in_flight(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(latency=0.02))
    async with session_for(server, max_concurrency=4) as s:
        sub = await s.submit(REQ)
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(s.get_task, sub)
    # Reached, and never exceeded.
    assert server.stats.peak_in_flight == 4


async def test_borrowed_aiohttp_session_is_used_and_left_open(server: EmulatorServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with session_for(server, http_session=http) as s:
            await s.submit(REQ)
        assert not http.closed
    assert server.stats.submissions == 1


async def test_unopened_session_says_how_to_use_it(server: EmulatorServer) -> None:
    s = session_for(server)
    with pytest.raises(RuntimeError, match="async with"):
        await s.submit(REQ)


def test_base_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_BASE_URL", "http://127.0.0.1:8089/")
    assert Session(KEY).base_url == "http://127.0.0.1:8089"
    assert Session(KEY, base_url="https://other.example").base_url == "https://other.example"
    monkeypatch.delenv("APIMART_BASE_URL")
    assert Session(KEY).base_url == "https://api.apimart.ai"
    monkeypatch.setenv("APIMART_BASE_URL", "http://evil.example")
    with pytest.raises(ValidationError, match="plain http"):
        Session(KEY)


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIMART_API_KEY", "from-env")
    assert Session()._engine.transport._key.reveal() == "from-env"
    monkeypatch.delenv("APIMART_API_KEY")
    with pytest.raises(ValidationError, match="APIMART_API_KEY") as info:
        Session()
    assert info.value.field == "api_key"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_concurrency": 0}, "max_concurrency"), ({"rps": -1}, "rps"),
     ({"base_url": "ftp://x"}, "base_url")],
)
def test_session_arguments_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Session(KEY, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(("key", "problem"), [
    ("", "must not be empty"),
    (" k1", "must not start or end with a space"),
    ("k1\r\nX-Evil: 1", "printable ASCII"),
    ("clé", "printable ASCII"),
    ("k" * 256, "at most 255"),
    (5, "must be a string"),
])
async def test_a_bad_idempotency_key_is_refused_before_anything_is_sent(
    server: EmulatorServer, key: object, problem: str
) -> None:
    async with session_for(server) as s:
        with pytest.raises(ValidationError, match=problem) as caught:
            await s.submit(REQ, idempotency_key=key)  # type: ignore[arg-type]
        assert caught.value.field == "idempotency_key"
        with pytest.raises(ValidationError, match=problem) as caught:
            await s.submit_many([REQ, REQ], idempotency_keys=["ok-1", key])  # type: ignore[list-item]
        assert caught.value.field == "idempotency_keys[1]"
        sub = await s.submit(REQ, idempotency_key="my key-1")  # inner spaces are fine
        assert sub.idempotency_key == "my key-1"
    assert server.stats.submissions == 1


async def test_watch_refuses_a_single_id_or_submission_instead_of_its_characters(
    server: EmulatorServer,
) -> None:
    # A str is iterable: watch("task_x") watched "t", "a", "s", ... (authenticated GETs
    # to /v1/tasks/t and so on) and ended each as unknown.
    async with session_for(server) as s:
        sub = await s.submit(REQ)
        for one in (sub.task_id, sub):
            with pytest.raises(ValidationError, match=r"tasks.*pass \[it\]"):
                s.watch(one)  # type: ignore[arg-type]
    assert server.stats.requests["task"] == 0



@pytest.mark.parametrize("keys", [
    (k for k in ["aa"]), {"aa"}, {"aa": 1}, 5, "xy", b"xy", ["dup1", "dup1"],
])
async def test_submit_many_refuses_odd_idempotency_keys_naming_the_field(
    server: EmulatorServer, keys: object,
) -> None:
    async with session_for(server) as s:
        with pytest.raises(ValidationError, match="idempotency_keys"):
            await s.submit_many([REQ, REQ], idempotency_keys=keys)  # type: ignore[arg-type]
        for requests in (REQ, None):
            with pytest.raises(ValidationError, match="requests"):
                await s.submit_many(requests)  # type: ignore[arg-type]
    assert server.stats.requests["submit"] == 0
