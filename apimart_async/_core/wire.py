"""The wire format, sans I/O: building requests and deciphering answers.

Everything here is a pure function of bytes, status codes and headers, so it is
unit-tested without a socket. The one cattrs converter for the wire lives here.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Mapping
from typing import Any, NewType
from urllib.parse import quote

import attrs
import cattrs

from .errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    InsufficientBalanceError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ValidationError,
    scrub,
)
from .models import NO_EXTRA, Task, TaskError, TaskOutput, TaskStatus, VideoRequest

__all__ = [
    "SUBMIT_PATH",
    "HttpRequest",
    "build_get_task",
    "build_submit",
    "converter",
    "parse_submit",
    "parse_task",
    "snippet",
]

SUBMIT_PATH = "/v1/videos/generations"
SNIPPET_CHARS = 200


@attrs.frozen(kw_only=True)
class HttpRequest:
    """What to send, minus credentials (the I/O shell adds those for the API host only)."""

    method: str
    path: str
    json: Mapping[str, Any] | None = None
    params: Mapping[str, str] = attrs.field(factory=dict)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    # A GET can be repeated freely; a submission bills, so it cannot.
    idempotent: bool = True


def build_submit(request: VideoRequest, *, idempotency_key: str) -> HttpRequest:
    """``POST /v1/videos/generations`` for `request`.

    The `Idempotency-Key` header is stable across the retries of one submission, so
    a server or gateway that honours it can drop the duplicates.
    """
    return HttpRequest(
        method="POST",
        path=SUBMIT_PATH,
        json=request.to_body(),
        headers={"Idempotency-Key": idempotency_key},
        idempotent=False,
    )


_BAD_ID = re.compile(r"[\s/]")


def check_task_id(task_id: object) -> str:
    """Return a usable task id or raise `ValidationError`."""
    if not isinstance(task_id, str) or not task_id.strip():
        raise ValidationError("task_id", f"must be a non-empty string, got {task_id!r}")
    if _BAD_ID.search(task_id):
        raise ValidationError("task_id", f"must not contain spaces or '/', got {task_id!r}")
    return task_id


def build_get_task(task_id: str) -> HttpRequest:
    """``GET /v1/tasks/{task_id}``; a bad id raises `ValidationError`."""
    path = "/v1/tasks/" + quote(check_task_id(task_id), safe="")
    return HttpRequest(method="GET", path=path)


# --- answers -------------------------------------------------------------------------

Urls = NewType("Urls", tuple[str, ...])


@attrs.frozen
class _WireVideo:
    url: Urls = Urls(())
    expires_at: int | None = None


@attrs.frozen
class _WireResult:
    videos: tuple[_WireVideo, ...] = ()
    images: tuple[_WireVideo, ...] = ()


@attrs.frozen
class _WireError:
    code: int | str | None = None
    message: str = ""


@attrs.frozen
class _WireTask:
    id: str
    status: str
    progress: float = 0
    created: int | None = None
    estimated_time: float | None = None
    completed: int | None = None
    actual_time: float | None = None
    result: _WireResult | None = None
    error: _WireError | None = None
    model: str | None = None


@attrs.frozen
class _WireSubmitted:
    task_id: str
    status: str = "submitted"


def _urls(value: object, _: object) -> Urls:
    # Documented as a list; some answers give a plain string.
    if isinstance(value, str):
        return Urls((value,))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return Urls(tuple(value))
    raise TypeError(f"url must be a string or a list of strings, not {type(value).__name__}")


def _wire_error(value: object, _: object) -> _WireError:
    # A failed task's `error` is an object; tolerate a bare message string too.
    if isinstance(value, str):
        return _WireError(message=value)
    if isinstance(value, Mapping):
        msg = value.get("message", value.get("msg", ""))
        code = value.get("code")
        return _WireError(
            code=code if isinstance(code, (int, str)) else None,
            message=str(msg) if msg is not None else "",
        )
    raise TypeError("error must be an object")


def _strict_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


converter = cattrs.Converter()
"""The one converter for the wire format. Unknown fields are ignored."""
converter.register_structure_hook(Urls, _urls)
converter.register_structure_hook(_WireError, _wire_error)
converter.register_structure_hook(str, _strict_str)


def snippet(body: bytes, secret: str | None = None) -> str:
    """The first characters of a body, for error messages, with `secret` scrubbed."""
    text = body[: SNIPPET_CHARS * 4].decode("utf-8", "replace")
    text = " ".join(text.split())[:SNIPPET_CHARS]
    return scrub(text, secret)


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientBalanceError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: BadRequestError,
    429: RateLimitError,
}


def status_error(
    status: int,
    message: str,
    *,
    code: int | str | None = None,
    retry_after: float | None = None,
) -> APIStatusError:
    """The `APIStatusError` subclass for `status`."""
    if status == 429:
        return RateLimitError(message, status=status, code=code, retry_after=retry_after)
    if status >= 500:
        return ServerError(message, status=status, code=code)
    return _BY_STATUS.get(status, APIStatusError)(message, status=status, code=code)


def _error_message(payload: Any) -> tuple[str | None, int | str | None]:
    """(message, code) from an OpenAI-style ``{"error": {...}}`` or a ``{"code", "msg"}`` body."""
    if not isinstance(payload, Mapping):
        return None, None
    err = payload.get("error")
    if isinstance(err, Mapping):
        msg = err.get("message") or err.get("msg") or err.get("type")
        code = err.get("code")
        return (str(msg) if msg else None), code if isinstance(code, (int, str)) else None
    if isinstance(err, str):
        return err, None
    msg = payload.get("message") or payload.get("msg")
    code = payload.get("code")
    return (str(msg) if msg else None), code if isinstance(code, (int, str)) else None


def _body_code(payload: Any) -> int | None:
    if isinstance(payload, Mapping):
        code = payload.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            return code
        if isinstance(code, str) and code.isdigit():
            return int(code)
    return None


def decode(
    status: int,
    body: bytes,
    *,
    retry_after: float | None = None,
    secret: str | None = None,
) -> Any:
    """The ``data`` of a successful answer, or raise the matching error.

    The HTTP status and the body's ``code`` both count: a 200 carrying
    ``{"code": 402}`` is an `InsufficientBalanceError`. A body that is not JSON
    raises `ServerError` under a 5xx status (a gateway page) and `DecodeError`
    otherwise. Server text is scrubbed of `secret` before it goes into an error.
    """
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
        parsed = False
    else:
        parsed = True
        # The common case first: this runs for every poll.
        if (
            status == 200
            and type(payload) is dict
            and payload.get("code", 200) == 200
            and "data" in payload
            and "error" not in payload
        ):
            return payload["data"]

    message, code = _error_message(payload)
    message = scrub(message, secret) if message else None
    code = scrub(code, secret) if isinstance(code, str) else code
    body_code = _body_code(payload)

    if 300 <= status < 400:
        raise APIStatusError(
            "unexpected redirect; not followed, as it could carry the API key to another host",
            status=status,
        )
    if status >= 400:
        effective = status
    elif body_code is not None and body_code != 200 and body_code >= 400:
        effective = body_code
    elif isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
        effective = body_code if body_code and body_code >= 400 else 400
    else:
        effective = status

    if effective >= 400:
        if message is None:
            message = snippet(body, secret) if body else "no body"
            if not parsed and status >= 500:
                message = f"non-JSON error page: {message}"
        raise status_error(effective, message, code=code, retry_after=retry_after)
    if not parsed:
        raise DecodeError("answer is not JSON", status=status, snippet=snippet(body, secret))
    if not isinstance(payload, Mapping) or "data" not in payload:
        raise DecodeError("answer has no 'data'", status=status, snippet=snippet(body, secret))
    return payload["data"]


def parse_submit(
    status: int, body: bytes, *, retry_after: float | None = None, secret: str | None = None
) -> str:
    """The task id from a submission answer (``data`` is a one-item list)."""
    data = decode(status, body, retry_after=retry_after, secret=secret)
    item = data[0] if isinstance(data, list) and data else data
    try:
        wire = converter.structure(item, _WireSubmitted)
    except Exception:
        raise DecodeError(
            "submission answer has no task_id", status=status, snippet=snippet(body, secret)
        ) from None
    if not wire.task_id:
        raise DecodeError("submission answer has an empty task_id", status=status, snippet="")
    return _answered_id(wire.task_id, status, secret)


def _answered_id(task_id: str, status: int, secret: str | None) -> str:
    """A task id from an answer, refused (`DecodeError`) unless it is a plain name that
    does not carry the key: ids reach terminals, journals and file names. (A key of
    under 8 characters, only ever a test's, cannot be told from ordinary text.)"""
    if secret and len(secret) >= 8 and secret in task_id:
        raise DecodeError("answer's task id contains the API key", status=status, snippet="")
    try:
        return check_task_id(task_id)
    except ValidationError as exc:
        raise DecodeError(f"answer's task id is not a plain name: {exc.problem[:200]}",
                          status=status, snippet="") from None


def task_from_data(data: Any, secret: str | None = None) -> Task:
    """A `Task` from a task answer's ``data`` object; raises on a wrong shape. The
    server's failure text is scrubbed of `secret`: it reaches journals and terminals."""
    wire = converter.structure(data, _WireTask)
    outputs = _outputs(wire.result) if wire.result else ()
    urls = tuple(out.url for out in outputs if out.kind == "video")
    expiries = [out.expires_at for out in outputs if out.expires_at is not None]
    return Task(
        id=wire.id,
        status=TaskStatus.parse(wire.status),
        raw_status=scrub(wire.status, secret),
        progress=max(0, min(100, int(wire.progress))),
        created=wire.created,
        estimated_time=wire.estimated_time,
        completed_at=wire.completed,
        actual_time=wire.actual_time,
        video_urls=urls,
        expires_at=min(expiries) if expiries else None,
        error=TaskError(
            code=scrub(wire.error.code, secret) if isinstance(wire.error.code, str)
            else wire.error.code,
            message=scrub(wire.error.message, secret),
        ) if wire.error else None,
        model=None if wire.model is None else scrub(wire.model, secret),
        outputs=outputs,
        extra=_extra(data, secret),
    )


def _outputs(result: _WireResult) -> tuple[TaskOutput, ...]:
    """Every file of a result: each video link, then each image link, in answer order."""
    return tuple(
        TaskOutput(kind=kind, url=url, expires_at=entry.expires_at)
        for kind, entries in (("video", result.videos), ("image", result.images))
        for entry in entries for url in entry.url
    )


_MODELLED = frozenset(field.name for field in attrs.fields(_WireTask))
# Documented fields whose documented value says nothing: not kept per task.
_CONSTANT = {"object": "video.generation.task", "type": "video"}


def _extra(data: Mapping[str, Any], secret: str | None) -> Mapping[str, Any]:
    """The answer's fields `Task` does not model, scrubbed of `secret`; the shared
    empty mapping when there are none (the common case costs nothing per task)."""
    extra = {key: _scrub_deep(value, secret) for key, value in data.items()
             if key not in _MODELLED and _CONSTANT.get(key, _NOTHING) != value}
    return types.MappingProxyType(extra) if extra else NO_EXTRA


_NOTHING = object()


def _scrub_deep(value: Any, secret: str | None) -> Any:
    if isinstance(value, str):
        return scrub(value, secret)
    if isinstance(value, Mapping):
        return {scrub(str(k), secret): _scrub_deep(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_deep(v, secret) for v in value]
    return value


def parse_task(
    status: int,
    body: bytes,
    *,
    retry_after: float | None = None,
    secret: str | None = None,
    expected_id: str | None = None,
) -> Task:
    """A `Task` from a ``GET /v1/tasks/{id}`` answer.

    With `expected_id`, an answer about another task is a `DecodeError` naming both ids
    (taking it as this task's update would lose or misfile one). A missing, null or
    empty ``status`` is a `DecodeError` too: no answer is read as "still running" unless
    it says a status.
    """
    data = decode(status, body, retry_after=retry_after, secret=secret)
    try:
        task = task_from_data(data, secret)
    except Exception:
        raise DecodeError(
            "task answer is not the documented shape", status=status, snippet=snippet(body, secret)
        ) from None
    _answered_id(task.id, status, secret)
    if not task.raw_status.strip():
        raise DecodeError(
            "task answer has an empty status", status=status, snippet=snippet(body, secret)
        )
    if expected_id is not None and task.id != expected_id:
        raise DecodeError(
            f"task answer is about task {scrub(task.id, secret)[:100]!r}, "
            f"not the {expected_id!r} asked for",
            status=status, snippet="",
        )
    return task
