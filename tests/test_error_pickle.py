"""Errors cross process boundaries whole: pickle, copy and deepcopy keep each error's
type, message and typed fields (multiprocessing and concurrent.futures pickle what a
worker raises), and never carry the API key (the errors never held it)."""

from __future__ import annotations

import concurrent.futures
import copy
import json
import multiprocessing
import pickle
import types
from collections.abc import Callable
from typing import Any, cast

import pytest

import apimart_async
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
    JournalBusyError,
    JournalUnavailableError,
    JournalWriteError,
    NotFoundError,
    NotSubmittedError,
    PermissionDeniedError,
    RateLimitError,
    ResultExpiredError,
    RetryPolicy,
    ServerError,
    Task,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
    VideoRequest,
    WorkerFencedError,
)
from apimart_async._core import errors as errors_module
from apimart_async._core.errors import with_response
from apimart_async._core.wire import parse_task
from apimart_async.testing import EmulatorServer, Fault

from .conftest import KEY, session_for


def _task(status: str = "failed") -> Task:
    # A task as the wire gives it: an error, outputs, and a field the SDK does not model.
    body = {"code": 200, "data": {
        "id": "task_01", "status": status, "progress": 40, "created": 1700000000,
        "error": {"code": "content_policy", "message": "refused"},
        "result": {"videos": [{"url": ["https://cdn.example/v.mp4"]}]},
        "usage": {"credits": 3, "tiers": [1, 2]},
    }}
    return parse_task(200, json.dumps(body).encode())


def _answered(error: APIMartError) -> APIMartError:
    # As the transport leaves an error: the answer's headers and request id attached.
    return with_response(error, {"X-Request-Id": "req-7", "Retry-After": "2"})


# One error of every class in the tree, each with every typed field it has set.
EXAMPLES: dict[type[APIMartError], Callable[[], APIMartError]] = {
    APIMartError: lambda: APIMartError("something went wrong"),
    ValidationError: lambda: ValidationError("duration", "must be 5 or 10, got 7"),
    JournalBusyError: lambda: JournalBusyError("/out/.j.sqlite3", pid=4242, host="box"),
    WorkerFencedError: lambda: WorkerFencedError(3, "postgresql://db/jobs"),
    JournalUnavailableError: lambda: JournalUnavailableError("postgresql://db/jobs",
                                                             "connection refused"),
    JournalWriteError: lambda: JournalWriteError("/out/.j.sqlite3", task_ids=("t1", "t2"),
                                                 recovery_file="/out/.rec", reason="disk full"),
    APIStatusError: lambda: _answered(APIStatusError("teapot", status=418, code="tea")),
    BadRequestError: lambda: _answered(BadRequestError("bad duration", status=422, code=422)),
    AuthenticationError: lambda: _answered(AuthenticationError("invalid key", status=401)),
    InsufficientBalanceError: lambda: InsufficientBalanceError("no credit", status=402),
    PermissionDeniedError: lambda: PermissionDeniedError("no sora", status=403, code=403),
    NotFoundError: lambda: NotFoundError("no such task", status=404),
    RateLimitError: lambda: _answered(RateLimitError("slow down", code="rate", retry_after=2.5)),
    ServerError: lambda: _answered(ServerError("bad gateway", status=502)),
    APIConnectionError: lambda: APIConnectionError("connection reset", request_sent=False),
    APITimeoutError: lambda: APITimeoutError("read timed out", request_sent=True),
    DecodeError: lambda: _answered(DecodeError("not JSON", status=200, snippet="<html>")),
    TaskFailedError: lambda: TaskFailedError(_task()),
    TaskTimeoutError: lambda: TaskTimeoutError(
        "task_01", timeout=30.0, task=_task("processing"),
        poll_error=_answered(ServerError("bad gateway", status=502))),
    NotSubmittedError: lambda: NotSubmittedError(_answered(AuthenticationError("bad", status=401))),
    ResultExpiredError: lambda: ResultExpiredError("task_01", "link gone"),
    DownloadError: lambda: DownloadError("task_01", "cut at 40%", resumable=False),
}


def _tree() -> set[type[APIMartError]]:
    return {obj for obj in vars(errors_module).values()
            if isinstance(obj, type) and issubclass(obj, APIMartError)}


def test_every_error_class_has_an_example() -> None:
    assert set(EXAMPLES) == _tree()
    # The facade exports the same tree.
    assert {getattr(apimart_async, cls.__name__) for cls in EXAMPLES} == _tree()


def _same(copied: object, original: object, where: str = "error") -> None:
    """`copied` equals `original` field by field (errors have no ==: by their parts)."""
    assert type(copied) is type(original), where
    if isinstance(original, BaseException):
        assert isinstance(copied, BaseException)
        if where == "error":  # a shallow copy shares what the error holds
            assert copied is not original
        assert str(copied) == str(original), where
        assert copied.args == original.args, where
        assert repr(copied) == repr(original), where
        assert sorted(vars(copied)) == sorted(vars(original)), where
        for name, value in vars(original).items():
            _same(vars(copied)[name], value, f"{where}.{name}")
        for name in ("fatal", "submission_ambiguous", "request_id", "headers"):
            _same(getattr(copied, name), getattr(original, name), f"{where}.{name}")
    elif isinstance(original, types.MappingProxyType):
        assert isinstance(copied, types.MappingProxyType), where  # still read-only
        assert dict(copied) == dict(original), where
    else:
        assert copied == original, where


COPIES: dict[str, Callable[[Any], Any]] = {
    **{f"pickle-{p}": (lambda e, p=p: pickle.loads(pickle.dumps(e, protocol=p)))
       for p in range(pickle.HIGHEST_PROTOCOL + 1)},
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_an_error_survives_pickle_and_copy_whole(cls: type[APIMartError], how: str) -> None:
    error = EXAMPLES[cls]()
    assert type(error) is cls
    copied = COPIES[how](error)
    _same(copied, error)
    # The typed fields by name too (what a caller reads after the round trip).
    for name in errors_module._fields(cls):
        _same(getattr(copied, name), getattr(error, name), name)


def test_an_ambiguous_submissions_flag_and_a_note_survive() -> None:
    error = _answered(ServerError("bad gateway", status=502))
    error.submission_ambiguous = True
    vars(error)["__notes__"] = ["item boat-3"]  # what add_note (3.11+) sets
    copied = pickle.loads(pickle.dumps(error))
    assert copied.submission_ambiguous is True and vars(copied)["__notes__"] == ["item boat-3"]
    assert copied.headers is not None and copied.headers["retry-after"] == "2"
    with pytest.raises(TypeError):
        cast(Any, copied.headers)["x"] = "y"  # read-only, as before
    assert copied.request_id == "req-7"
    assert copied.status == 502 and copied.message == "bad gateway"


def test_a_task_and_a_request_pickle_with_their_extra_fields() -> None:
    # A failed task's error carries the Task; its `extra` is read-only and pickles as such.
    task = _task()
    assert dict(task.extra) == {"usage": {"credits": 3, "tiers": [1, 2]}}
    for copied in (pickle.loads(pickle.dumps(task)), copy.copy(task), copy.deepcopy(task)):
        assert copied == task and isinstance(copied.extra, types.MappingProxyType)
        assert copied.outputs == task.outputs and copied.error == task.error
    request = VideoRequest("a fox", extra={"seed": 7, "style": {"tone": "warm"}})
    for copied_request in (pickle.loads(pickle.dumps(request)), copy.deepcopy(request)):
        assert copied_request == request
        assert isinstance(copied_request.extra, types.MappingProxyType)


def _raise(kind: str) -> None:
    # Runs in a worker process: what it raises is pickled back to the caller.
    if kind == "validation":
        raise ValidationError("duration", "must be 5 or 10")
    raise _answered(RateLimitError("slow down", retry_after=2.5))


def test_errors_raised_in_a_process_pool_reach_the_caller_as_themselves() -> None:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        with pytest.raises(ValidationError) as invalid:
            pool.submit(_raise, "validation").result(timeout=60)
        with pytest.raises(RateLimitError) as limited:
            pool.submit(_raise, "limited").result(timeout=60)
    assert (invalid.value.field, invalid.value.problem) == ("duration", "must be 5 or 10")
    assert str(limited.value) == "HTTP 429: slow down"
    assert limited.value.retry_after == 2.5 and limited.value.request_id == "req-7"


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_errors_from_a_real_session_pickle_without_the_key(
    server: EmulatorServer,
) -> None:
    caught: list[APIMartError] = []
    async with session_for(server, retry=RetryPolicy(max_attempts=1)) as s:
        sub = await s.submit(VideoRequest("a fox"))
        # A failed task whose message echoes the request's Authorization header.
        server.emulator.inject("task", Fault.echo_key())
        with pytest.raises(TaskFailedError) as failed:
            await s.wait(sub)
        caught.append(failed.value)
        server.emulator.inject("task", Fault.http(429, retry_after="3"))
        with pytest.raises(RateLimitError) as limited:
            await s.get_task(sub)
        caught.append(limited.value)
        server.emulator.inject("submit", Fault.http(401))
        with pytest.raises(AuthenticationError) as refused:
            await s.submit(VideoRequest("a fox"))
        caught.append(refused.value)
    assert caught[1].retry_after == 3.0 and caught[1].request_id  # type: ignore[attr-defined]
    for error in caught:
        data = pickle.dumps(error)
        assert KEY.encode() not in data, type(error).__name__
        copied = pickle.loads(data)
        _same(copied, error)
        assert KEY not in repr(vars(copied)) and KEY not in str(copied)
    assert "[redacted]" in str(pickle.loads(pickle.dumps(caught[0])))


@pytest.mark.anyio
@pytest.mark.parametrize("key", [KEY, "SK-Canary-Mixed-Case-7d1e"])
async def test_a_key_echoed_in_a_header_name_is_scrubbed_before_the_pickle(
    server: EmulatorServer, key: str
) -> None:
    # A gateway echoing the token in a header's name, a value and the message: the
    # error keeps the headers (lower-cased names), never the key in any case.
    async with session_for(server, api_key=key, retry=RetryPolicy(max_attempts=1)) as s:
        server.emulator.inject("submit", Fault.http(400, echo_key=True))
        with pytest.raises(APIStatusError) as refused:
            await s.submit(VideoRequest("a fox"))
    error = refused.value
    assert error.headers and "x-echo" in error.headers
    shown = repr(dict(error.headers)) + str(error) + repr(vars(error))
    for form in (key, key.lower()):
        assert form not in shown
        assert form.encode() not in pickle.dumps(error)
    assert any("[redacted]" in name for name in error.headers)


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_an_error_rebuilt_from_the_journal_pickles_too(cls: type[APIMartError]) -> None:
    rebuilt = errors_module.error_from_record(errors_module.error_record(EXAMPLES[cls]()))
    assert type(rebuilt) is cls
    _same(pickle.loads(pickle.dumps(rebuilt)), rebuilt)
    _same(copy.deepcopy(rebuilt), rebuilt)
