"""Request building and answer deciphering, without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apimart_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    InsufficientBalanceError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TaskStatus,
    ValidationError,
    VideoRequest,
)
from apimart_async._core import wire
from apimart_async._core.wire import build_get_task, build_submit, parse_submit, parse_task

SECRET = "sk-secret-123"


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_submit_request() -> None:
    req = build_submit(VideoRequest("x", duration=5), idempotency_key="k1")
    assert (req.method, req.path, req.idempotent) == ("POST", "/v1/videos/generations", False)
    assert req.headers == {"Idempotency-Key": "k1"}
    assert req.json == {"model": "sora-2", "prompt": "x", "duration": 5}
    assert "Authorization" not in req.headers


def test_get_request_quotes_and_validates_the_id() -> None:
    assert build_get_task("task_1").path == "/v1/tasks/task_1"
    assert build_get_task("a%b").path == "/v1/tasks/a%25b"
    for bad in ("", "  ", "a/b", "a b", None):
        with pytest.raises(ValidationError, match="task_id"):
            build_get_task(bad)  # type: ignore[arg-type]


def test_parse_submit() -> None:
    ok = {"code": 200, "data": [{"status": "submitted", "task_id": "task_01"}]}
    assert parse_submit(200, body(ok)) == "task_01"
    with pytest.raises(DecodeError) as info:
        parse_submit(200, body({"code": 200, "data": [{"status": "submitted"}]}))
    assert info.value.status == 200


COMPLETED = {
    "id": "task_01", "status": "completed", "progress": 100, "created": 1763174000,
    "estimated_time": 60, "completed": 1763174019, "actual_time": 19,
    "result": {"videos": [{"url": ["https://files.example/v.mp4"], "expires_at": 1763260419}]},
    "model": "sora-2", "object": "video.generation.task", "usage": {"credits": 1},
    "brand_new_field": {"nested": [1, 2]},
}


def test_completed_task_with_unknown_fields() -> None:
    task = parse_task(200, body({"code": 200, "data": COMPLETED}))
    assert task.status is TaskStatus.COMPLETED and task.is_terminal
    assert task.video_urls == ("https://files.example/v.mp4",)
    assert (task.expires_at, task.actual_time, task.completed_at) == (1763260419, 19, 1763174019)
    assert task.estimated_time == 60


def test_url_as_plain_string() -> None:
    data = dict(COMPLETED, result={"videos": [{"url": "https://f/v.mp4", "expires_at": 5}]})
    assert parse_task(200, body({"code": 200, "data": data})).video_urls == ("https://f/v.mp4",)


def test_failed_task_error_and_unknown_status() -> None:
    failed = {"id": "t", "status": "failed", "progress": 0,
              "error": {"code": "moderation", "message": "rejected"}}
    task = parse_task(200, body({"code": 200, "data": failed}))
    assert task.error is not None and task.error.code == "moderation"
    odd = parse_task(200, body({"code": 200, "data": {"id": "t", "status": "rendering"}}))
    assert odd.status is TaskStatus.UNKNOWN and odd.raw_status == "rendering"
    assert not odd.is_terminal


@pytest.mark.parametrize(
    "data",
    [
        {"status": "completed"},  # no id
        {"id": 5, "status": "completed"},
        {"id": "t", "status": "completed", "result": {"videos": [{"url": 7}]}},
        ["not", "an", "object"],
    ],
)
def test_wrong_shape_is_a_decode_error_with_snippet(data: Any) -> None:
    raw = body({"code": 200, "data": data})
    with pytest.raises(DecodeError) as info:
        parse_task(200, raw)
    assert info.value.status == 200
    assert info.value.snippet and info.value.snippet in raw.decode()


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError), (422, BadRequestError), (401, AuthenticationError),
        (402, InsufficientBalanceError), (403, PermissionDeniedError), (404, NotFoundError),
        (429, RateLimitError), (500, ServerError), (502, ServerError), (503, ServerError),
        (409, APIStatusError),
    ],
)
def test_error_status_mapping(status: int, cls: type[APIStatusError]) -> None:
    err = {"error": {"code": status, "message": "nope", "type": "x"}}
    with pytest.raises(cls) as info:
        parse_task(status, body(err))
    assert type(info.value) is cls
    assert (info.value.status, info.value.message, info.value.code) == (status, "nope", status)


@pytest.mark.parametrize(("code", "cls"), [(402, InsufficientBalanceError), (401, AuthenticationError),
                                           (500, ServerError), (429, RateLimitError)])
def test_body_code_is_authoritative_under_http_200(code: int, cls: type[Exception]) -> None:
    with pytest.raises(cls):
        parse_task(200, body({"code": code, "msg": "from body", "data": None}))


def test_html_pages() -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    with pytest.raises(DecodeError) as info:
        parse_task(200, page)
    assert "502 Bad Gateway" in info.value.snippet
    with pytest.raises(ServerError) as err:
        parse_task(502, page)
    assert "non-JSON" in err.value.message


def test_rate_limit_carries_retry_after() -> None:
    with pytest.raises(RateLimitError) as info:
        parse_task(429, b"", retry_after=2.5)
    assert info.value.retry_after == 2.5


def test_an_unknown_status_is_kept_scrubbed_of_the_key() -> None:
    # raw_status reaches error messages (a status unknown on every poll) and journals.
    data = {"id": "t", "status": f"echo {SECRET}"}
    task = parse_task(200, body({"code": 200, "data": data}), secret=SECRET)
    assert task.status is TaskStatus.UNKNOWN and SECRET not in task.raw_status


def test_secret_is_scrubbed_from_server_text() -> None:
    echo = {"error": {"code": 401, "message": f"Invalid API key provided: {SECRET}"}}
    with pytest.raises(AuthenticationError) as info:
        parse_task(401, body(echo), secret=SECRET)
    assert SECRET not in str(info.value) and SECRET not in info.value.message
    with pytest.raises(DecodeError) as dec:
        parse_task(200, f"<html>{SECRET}</html>".encode(), secret=SECRET)
    assert SECRET not in str(dec.value)


ENCODED_VALUES: list[object] = [
    {"model": "sora-2", "prompt": "a café \u2028 🎬 \ud800 \"quoted\" \\ \n\t"},
    {"n": 2**70, "f": 1.5, "e": 1e300, "z": -0.0, "nan": float("nan"), "inf": -float("inf")},
    {"l": [1, None, True, False, {"x": [], "y": {}}], "t": (1, "a")},
    {1: "int key", 2.5: "float key", False: "bool key", None: "null key"},
    [], {}, "s", 7, None,
]


@pytest.mark.parametrize("value", ENCODED_VALUES)
def test_the_standard_encoder_gives_json_dumps_own_bytes(value: object) -> None:
    # The encoder made once must write exactly what `json.dumps` writes.
    was = wire.use_orjson(False)
    try:
        assert wire.encode_json(value) == json.dumps(value).encode()
    finally:
        wire.use_orjson(was)


def test_the_standard_encoder_refuses_what_json_dumps_refuses() -> None:
    loop: dict[str, object] = {}
    loop["self"] = loop
    was = wire.use_orjson(False)
    try:
        for bad in ({"x": object()}, {(1, 2): 3}, {"s": {1}}, loop, [loop]):
            with pytest.raises((TypeError, ValueError)) as theirs:
                json.dumps(bad)
            with pytest.raises(type(theirs.value)) as ours:
                wire.encode_json(bad)
            assert str(ours.value) == str(theirs.value)
        # A refusal leaves nothing behind: the same value is encoded fine after one.
        inner = {"a": 1}
        assert wire.encode_json([inner, inner]) == b'[{"a": 1}, {"a": 1}]'
    finally:
        wire.use_orjson(was)
