"""The API key stays secret: no repr, message, log line or foreign host ever sees it."""

from __future__ import annotations

import pickle

import pytest

from apimart_async import (
    APIMartError,
    APIStatusError,
    AuthenticationError,
    RetryPolicy,
    Session,
    Timeout,
    ValidationError,
    VideoRequest,
)
from apimart_async._core.config import ApiKey
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault

from .conftest import KEY, MakeServer, session_for

pytestmark = pytest.mark.anyio
REQ = VideoRequest("x")


def test_key_never_in_repr_or_str() -> None:
    s = Session(KEY, base_url="http://127.0.0.1:1")
    for text in (repr(s), str(s), repr(s.__dict__), repr(vars(s._engine)), repr(vars(s._engine.transport)), str(ApiKey(KEY))):
        assert KEY not in text
    with pytest.raises(TypeError):
        pickle.dumps(ApiKey(KEY))


@pytest.mark.parametrize(
    "url",
    ["http://api.apimart.ai", "http://10.0.0.5:8080", "http://example.com/v1", "http://0.0.0.0"],
)
def test_plain_http_refused_except_loopback(url: str) -> None:
    with pytest.raises(ValidationError, match="plain http is refused") as info:
        Session(KEY, base_url=url)
    assert info.value.field == "base_url" and KEY not in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8089", "http://localhost:1", "http://[::1]:2",
                                 "http://127.5.6.7", "https://api.apimart.ai"])
def test_https_and_loopback_allowed(url: str) -> None:
    Session(KEY, base_url=url)


def test_base_url_with_credentials_refused() -> None:
    with pytest.raises(ValidationError, match="credentials"):
        Session(KEY, base_url="https://user:pw@api.apimart.ai")


async def test_key_absent_from_errors_and_logs_on_every_failure_path(
    make_server: MakeServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    # The emulator echoes a wrong key in its 401 message, as real APIs do.
    wrong = await make_server(EmulatorConfig(api_key="another-key"))
    server = await make_server()
    errors: list[BaseException] = []

    async def collect(coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except APIMartError as exc:
            errors.append(exc)

    async with session_for(wrong) as s:
        await collect(s.submit(REQ))
    emu = server.emulator
    async with session_for(server, retry=RetryPolicy(max_attempts=2),
                           timeout=Timeout(total=0.2)) as s:
        for fault in (Fault.http(400), Fault.http(402), Fault.lost_answer(), Fault.html(200),
                      Fault.http(502), Fault.http(429, retry_after="9999"), Fault.slow(1)):
            emu.inject("submit", fault)
            await collect(s.submit(REQ))
        emu.inject("task", *[Fault.reset()] * 3, *[Fault.html(502)] * 2, *[Fault.http(500)] * 2)
        for _ in range(3):
            await collect(s.get_task("task_unknown"))
        await collect(s.get_task("task_unknown"))  # 404
    async with Session(KEY, base_url="http://127.0.0.1:1", retry=RetryPolicy(max_attempts=2)) as s:
        await collect(s.submit(REQ))

    assert len(errors) == 13
    assert isinstance(errors[0], AuthenticationError)
    assert "[redacted]" in str(errors[0])
    for exc in errors:
        texts = [str(exc), repr(exc), repr(vars(exc))]
        if isinstance(exc, APIStatusError):
            texts.append(exc.message)
        assert all(KEY not in t for t in texts), exc
    assert debug_logs.records, "expected DEBUG records from the failure paths"
    assert KEY not in debug_logs.text
    for record in debug_logs.records:
        assert KEY not in record.getMessage()


async def test_redirect_is_not_followed_with_the_key(server: EmulatorServer) -> None:
    server.emulator.inject("task", Fault.redirect("{files}/files/steal.mp4"))
    async with session_for(server) as s:
        with pytest.raises(APIStatusError) as info:
            await s.get_task("task_x")
    assert info.value.status == 307
    assert server.stats.requests["download"] == 0
    assert server.stats.credential_leaks == 0
