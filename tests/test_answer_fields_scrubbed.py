"""Every server-provided string is scrubbed of the API key where answers are deciphered
(#12 review F4): an error's string `code`, the `x-request-id` header, an unknown task
`status`; a task id carrying the key is refused outright. A tiny hostile API host on
127.0.0.1 echoes the key into each field; the real client talks to it over a socket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from apimart_async import APIMartError, DecodeError, Session, VideoRequest
from apimart_async._core.errors import error_record
from apimart_async._core.wire import decode, parse_submit, parse_task
from apimart_async.testing import EmulatorServer, Fault

from .conftest import KEY, session_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def ok(data: Any) -> bytes:
    return json.dumps({"code": 200, "data": data}).encode()


def task(**fields: Any) -> dict[str, Any]:
    return {"id": "task_1", "status": "processing", "progress": 5, **fields}


# -- the pure decipherer ------------------------------------------------------------


def test_a_string_error_code_is_scrubbed() -> None:
    body = json.dumps({"error": {"code": f"bad_{KEY}", "message": "no"}}).encode()
    with pytest.raises(APIMartError) as caught:
        decode(400, body, secret=KEY)
    assert KEY not in json.dumps(error_record(caught.value))
    assert "[redacted]" in str(getattr(caught.value, "code", ""))


def test_an_unknown_status_is_scrubbed() -> None:
    got = parse_task(200, ok(task(status=f"weird {KEY}")), secret=KEY)
    assert KEY not in got.raw_status and "[redacted]" in got.raw_status


@pytest.mark.parametrize("task_id", [f"task_{KEY}", "task 1", "a/b"])
def test_a_task_id_carrying_the_key_or_not_a_name_is_refused(task_id: str) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_submit(200, ok([{"task_id": task_id, "status": "submitted"}]), secret=KEY)
    assert KEY not in str(caught.value)
    with pytest.raises(DecodeError) as caught:
        parse_task(200, ok(task(id=task_id)), secret=KEY)
    assert KEY not in str(caught.value)


def test_a_plain_task_id_is_taken() -> None:
    # The control: the refusal is not of every id.
    answer = ok([{"task_id": "task_01K8SGYNNNVBQTXNR4MM964S7K", "status": "submitted"}])
    assert parse_submit(200, answer, secret=KEY) == "task_01K8SGYNNNVBQTXNR4MM964S7K"


# -- over a socket ----------------------------------------------------------------------


@pytest.fixture
async def echoing_host() -> AsyncIterator[str]:
    async def submit(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        return web.json_response(
            {"error": {"code": f"code {key}", "message": "refused"}},
            status=400, headers={"x-request-id": f"req-{key}"},
        )

    app = web.Application()
    app.router.add_post("/v1/videos/generations", submit)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_the_request_id_header_and_code_of_an_error_are_scrubbed(
    echoing_host: str,
) -> None:
    async with Session(KEY, base_url=echoing_host) as s:
        with pytest.raises(APIMartError) as caught:
            await s.submit(VideoRequest("a fox"))
    error = caught.value
    assert error.request_id == "req-[redacted]"
    assert error.headers is not None and KEY not in json.dumps(dict(error.headers))
    assert KEY not in json.dumps(error_record(error))


async def test_an_unknown_status_reaches_nobody_with_the_key(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        fox = await s.submit(VideoRequest("a fox"))
        server.emulator.inject("task", Fault.task_status(f"odd-{KEY}"))
        got = await s.get_task(fox)
    assert KEY not in got.raw_status


async def test_a_submission_answered_with_the_key_in_its_id_is_refused_as_ambiguous() -> None:
    async def submit(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        return web.json_response({"code": 200, "data": [{"task_id": f"task_{key}"}]})

    app = web.Application()
    app.router.add_post("/v1/videos/generations", submit)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with Session(KEY, base_url=f"http://127.0.0.1:{runner.addresses[0][1]}") as s:
            with pytest.raises(DecodeError) as caught:
                await s.submit(VideoRequest("a fox"))
    finally:
        await runner.cleanup()
    # The POST may have been billed: the error says so, and never carries the key.
    assert caught.value.submission_ambiguous
    assert KEY not in str(caught.value) and KEY not in json.dumps(error_record(caught.value))
