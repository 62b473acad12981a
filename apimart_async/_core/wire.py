"""The wire format, sans I/O: building requests and deciphering answers.

Everything here is a pure function of bytes, status codes and headers, so it is
unit-tested without a socket. The one cattrs converter for the wire lives here.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import string
import types
from collections.abc import Callable, Mapping
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
from .validation import is_text

__all__ = [
    "SUBMIT_PATH",
    "HttpRequest",
    "RememberingTaskGet",
    "TaskGet",
    "build_get_task",
    "build_submit",
    "converter",
    "encode_json",
    "parse_submit",
    "parse_task",
    "snippet",
    "task_path",
    "use_orjson",
]

log = logging.getLogger("apimart_async")

SUBMIT_PATH = "/v1/videos/generations"
SNIPPET_CHARS = 200


# No weak-reference slot: 80 bytes instead of 96, kept per watched task (its GET).
@attrs.frozen(kw_only=True, weakref_slot=False)
class HttpRequest:
    """What to send, minus credentials (the I/O shell adds those for the API host only)."""

    method: str
    path: str
    json: Mapping[str, Any] | None = None
    # One shared empty mapping, not two new dicts per request.
    params: Mapping[str, str] = attrs.field(default=types.MappingProxyType({}))
    headers: Mapping[str, str] = attrs.field(default=types.MappingProxyType({}))
    # A GET can be repeated freely; a submission bills, so it cannot.
    idempotent: bool = True


def build_submit(request: VideoRequest, *, idempotency_key: str) -> HttpRequest:
    """``POST /v1/videos/generations`` for `request`.

    The `Idempotency-Key` header is stable across the retries of one submission, so
    a server or gateway that honours it can drop the duplicates.
    """
    # Built for every submission: the slots are filled directly (0.3 us against 0.8 for
    # the frozen class's keyword __init__), with the same values it would check nothing of.
    post = _new_request(HttpRequest)
    _set_method(post, "POST")
    _set_path(post, SUBMIT_PATH)
    _set_json(post, request.to_body())
    _set_params(post, _NO_PARAMS)
    # (Its Content-Type travels with the encoded body: `Transport.call`.)
    _set_headers(post, {"Idempotency-Key": idempotency_key})
    _set_idempotent(post, False)
    return post


_new_request = object.__new__
_NO_PARAMS: Mapping[str, str] = types.MappingProxyType({})
_REQUEST_SETTERS = {
    field.name: HttpRequest.__dict__[field.name].__set__ for field in attrs.fields(HttpRequest)
}
_set_method, _set_path, _set_json = (
    _REQUEST_SETTERS["method"], _REQUEST_SETTERS["path"], _REQUEST_SETTERS["json"])
_set_params, _set_headers, _set_idempotent = (
    _REQUEST_SETTERS["params"], _REQUEST_SETTERS["headers"], _REQUEST_SETTERS["idempotent"])
if len(_REQUEST_SETTERS) != 6:
    raise ImportError("HttpRequest's fields changed: update build_submit in _core/wire.py")


_BAD_ID = re.compile(r"[\s/]")
# Ids made of these alone (every id the API hands out) need neither the regex nor
# `quote`: `quote(id, safe="")` returns them unchanged.
_PLAIN_ID = frozenset(string.ascii_letters + string.digits + "_-.~")


# A path segment the URL library resolves ("/v1/tasks/.." is "/v1/"): never an id.
_DOT_IDS = frozenset({".", ".."})
# Ids name files ("{id}.mp4", and a suffix): past this many bytes a file system refuses
# the name (255). The API's ids are ~30 characters.
MAX_TASK_ID = 200


def check_task_id(task_id: object) -> str:
    """Return a usable task id or raise `ValidationError`."""
    if type(task_id) is str and task_id and _PLAIN_ID.issuperset(task_id) \
            and task_id not in _DOT_IDS and len(task_id) <= MAX_TASK_ID:
        return task_id  # the usual id: runs for every poll
    if not isinstance(task_id, str) or not task_id.strip():
        raise ValidationError("task_id", f"must be a non-empty string, got {task_id!r}")
    if _BAD_ID.search(task_id):
        raise ValidationError("task_id", f"must not contain spaces or '/', got {task_id!r}")
    if task_id in _DOT_IDS:
        raise ValidationError("task_id", f"must not be {task_id!r} (a path step, not an id)")
    if not is_text(task_id):
        raise ValidationError("task_id", f"must be Unicode text (it holds a lone surrogate), "
                                         f"got {task_id!r}")
    if not task_id.isprintable():
        # An id reaches terminals: an escape sequence in it would act there.
        raise ValidationError("task_id", f"must not contain control characters, got "
                                         f"{task_id[:100]!r}")
    size = len(task_id.encode())
    if size > MAX_TASK_ID:
        raise ValidationError("task_id", f"is {size} bytes long (UTF-8); at most "
                                         f"{MAX_TASK_ID}, got {task_id[:40]!r}...")
    return task_id


def task_path(task_id: str) -> str:
    """The path of ``GET /v1/tasks/{task_id}``; a bad id raises `ValidationError`."""
    if type(task_id) is str and task_id and _PLAIN_ID.issuperset(task_id) \
            and task_id not in _DOT_IDS and len(task_id) <= MAX_TASK_ID:
        return "/v1/tasks/" + task_id
    return "/v1/tasks/" + quote(check_task_id(task_id), safe="")


def build_get_task(task_id: str) -> HttpRequest:
    """``GET /v1/tasks/{task_id}``; a bad id raises `ValidationError`."""
    return HttpRequest(method="GET", path=task_path(task_id))


class TaskGet(HttpRequest):
    """``GET /v1/tasks/{task_id}`` built once, to be sent again and again (a watched
    task's polls), and `parse`, which reads an answer and refuses one about another
    task. A bad id raises `ValidationError` here, before anything is sent.

    It is its own `HttpRequest` (one object per watched task, not two: 96 bytes against
    48 + 80), and unlike one it takes attributes after construction (the poller keeps a
    task's poll state on its subclass)."""

    __slots__ = ("task_id",)
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__

    def __init__(self, task_id: str) -> None:
        super().__init__(method="GET", path=task_path(task_id))
        self.task_id = task_id

    @property
    def request(self) -> HttpRequest:
        """The request to send: itself."""
        return self

    def parse(
        self,
        status: int,
        body: bytes,
        *,
        retry_after: float | None = None,
        secret: str | None = None,
    ) -> Task:
        """`parse_task` expecting this task's id."""
        return parse_task(status, body, retry_after=retry_after, secret=secret,
                          expected_id=self.task_id)


_REMEMBERED_BYTES = 4096


class RememberingTaskGet(TaskGet):
    """A `TaskGet` that remembers its last successful answer: the same bytes again
    (a task polled while nothing changed, the usual poll) give the same `Task`
    (immutable, and without `extra`) without reading them again. It holds one answer's
    bytes, so it is for the few tasks `get_task` was asked about recently, not for
    every watched task."""

    __slots__ = ("_body", "_task")

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self._body: bytes | None = None
        self._task: Task | None = None

    def parse(
        self,
        status: int,
        body: bytes,
        *,
        retry_after: float | None = None,
        secret: str | None = None,
    ) -> Task:
        """`TaskGet.parse` (inline: one call less), or the `Task` of the last answer when
        these are its bytes."""
        if status == 200 and body == self._body and self._task is not None:
            return self._task
        task = parse_task(status, body, retry_after=retry_after, secret=secret,
                          expected_id=self.task_id)
        # Only a Task without `extra` is handed out twice: the values inside `extra` are
        # the caller's to change (a dict in a read-only mapping), and one caller's change
        # must not reach the next call's answer.
        # And only a usual answer's bytes are kept (a task answer is under 2 KB): a
        # verbose or hostile server does not make the session hold megabytes.
        if status == 200 and task.extra is NO_EXTRA and len(body) <= _REMEMBERED_BYTES:
            self._body, self._task = body, task
        else:
            self._body = self._task = None
        return task


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


# (Set in JSONDecoder.__init__; typeshed does not declare it.)
_scan_once: Callable[[str, int], tuple[Any, int]] = (
    json.JSONDecoder().scan_once)  # type: ignore[attr-defined]
_TRAILING = " \t\n\r"  # the whitespace JSON allows after a value


def _loads_stdlib(body: bytes) -> Any:
    # JSON is UTF-8 (RFC 8259): decoding it as such skips `json.loads`'s encoding
    # detection on bytes, a third of its time on a task answer. The value is read by
    # the scanner `json.loads` itself ends in, without its two Python layers; anything
    # it does not take whole (leading whitespace, trailing data) raises ValueError, and
    # `decode` reads that body again with `json.loads`, which decides it.
    text = body.decode()
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        raise ValueError("no JSON value at the start") from None
    if end != len(text) and text[end:].strip(_TRAILING):
        raise ValueError("data after the JSON value")
    return value


_loads: Callable[[bytes], Any] = _loads_stdlib


def use_orjson(enabled: bool = True) -> bool:
    """Decode answers with orjson (the ``speed`` extra) when `enabled` and importable,
    else with the standard library; return whether orjson is now used. The results are
    the same either way: what orjson refuses goes to the standard decoder."""
    global _loads, _dumps
    module: Any = None
    if enabled:
        try:
            module = importlib.import_module("orjson")
        except ImportError:
            module = None
    _loads = module.loads if module is not None else _loads_stdlib
    _dumps = module.dumps if module is not None else None
    return module is not None


_dumps: Callable[[Any], bytes] | None = None


def _unencodable(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# `json.dumps(value)`'s own encoder, made once: `json.dumps` builds it anew on every
# call (three Python layers, ~110 bytecodes, a fifth of a submission's own work). The
# arguments are `json.dumps`'s defaults; the circular-reference check keeps a dict of
# its own per call (below), as `json.dumps` does.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)


def _dumps_stdlib(value: Any) -> bytes:
    if _c_make_encoder is None:  # (an interpreter without the C accelerator)
        return json.dumps(value).encode()
    encode = _c_make_encoder(
        {}, _unencodable, json.encoder.encode_basestring_ascii, None, ": ", ", ",
        False, False, True)
    return "".join(encode(value, 0)).encode()


def encode_json(value: Any) -> bytes:
    """A request body: `value` as JSON (UTF-8), by orjson when it is in use.

    Both encoders give the same JSON value (orjson writes non-ASCII characters as UTF-8
    where the standard library escapes them); what orjson refuses (an integer past 64
    bits, a key that is not a string) is encoded by the standard library, with exactly
    the bytes ``json.dumps(value).encode()`` gives.
    """
    if _dumps is not None:
        try:
            return _dumps(value)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return _dumps_stdlib(value)


use_orjson()


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
    exact: bool = False,
) -> Any:
    """The ``data`` of a successful answer, or raise the matching error.

    The HTTP status and the body's ``code`` both count: a 200 carrying
    ``{"code": 402}`` is an `InsufficientBalanceError`. A body that is not JSON
    raises `ServerError` under a 5xx status (a gateway page) and `DecodeError`
    otherwise. Server text is scrubbed of `secret` before it goes into an error.

    The usual answer is decoded by the fastest decoder at hand; `exact` (and every
    unusual answer) uses the standard library's ``json.loads(bytes)`` alone, which
    orjson does not match on integers past 64 bits (it reads them as floats).
    """
    parsed = True
    payload: Any = None
    if body:
        try:
            payload = json.loads(body) if exact else _loads(body)
        except ValueError:
            try:
                # What the fast decoders refuse (a BOM, UTF-16, NaN, a lone surrogate)
                # goes to the standard decoder, encoding detection and all, so every
                # body decodes exactly as it always did.
                payload = json.loads(body)
            except ValueError:
                parsed = False
    if parsed:
        # The common case first: this runs for every poll.
        if (
            status == 200
            and type(payload) is dict
            and payload.get("code", 200) == 200
            and "data" in payload
            and "error" not in payload
        ):
            return payload["data"]
        if body and not exact and _loads is not _loads_stdlib:
            payload = json.loads(body)  # an unusual answer is read exactly as ever

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


def _usual_submit_answer() -> Callable[[bytes], re.Match[bytes] | None]:
    # The documented answer, ``{"code": 200, "data": [{"status": "submitted", "task_id":
    # "task_..."}]}``, with any JSON whitespace between its tokens: one C call instead of
    # a JSON decode and ~80 bytecodes of checks on what it gave. It takes nothing the
    # general path would refuse or read otherwise: a status of letters and "_" only, an
    # id of the characters `check_task_id` passes without `quote`, not too long (group
    # 1). Anything else (other keys, another order, escapes, more items) goes the
    # general way.
    ws = rb"[ \t\n\r]*"
    parts = [rb"\{", rb'"code"', b":", b"200", b",", rb'"data"', b":", rb"\[", rb"\{",
             rb'(?:"status"' + ws + b":" + ws + rb'"[A-Za-z_]*"' + ws + b"," + ws + b")?",
             rb'"task_id"', b":", rb'"([A-Za-z0-9_.~-]{1,%d})"' % MAX_TASK_ID,
             rb"\}", rb"\]", rb"\}"]
    return re.compile(ws + ws.join(parts) + ws).fullmatch


_usual_submit = _usual_submit_answer()


def parse_submit(
    status: int, body: bytes, *, retry_after: float | None = None, secret: str | None = None
) -> str:
    """The task id from a submission answer (``data`` is a one-item list)."""
    if status == 200 and (usual := _usual_submit(body)) is not None:
        task_id: str = usual[1].decode()
        if task_id not in _DOT_IDS and not (secret and len(secret) >= 8 and secret in task_id):
            return task_id
    return _submit_general(status, body, retry_after, secret)


def _submit_general(
    status: int, body: bytes, retry_after: float | None, secret: str | None
) -> str:
    """`parse_submit` for any answer: decoded and checked, the item read by the converter."""
    try:
        data = decode(status, body, retry_after=retry_after, secret=secret)
    except APIStatusError as exc:
        named = _named_task_id(body) if 200 <= status < 300 else None
        if named is None:
            raise
        # A success status whose body names a task beside an "error": the task may exist
        # and be billed. Taken as a rejection, a batch would drop it and pay again; its
        # id is followed instead (a task that does not exist then fails its polls, 404).
        task_id = _answered_id(named, status, secret)
        log.warning("submission answer names task %s beside an error (%s): following the "
                    "task", task_id, exc.message)
        return task_id
    item = data[0] if isinstance(data, list) and data else data
    try:
        task_id = converter.structure(item, _WireSubmitted).task_id
    except Exception:
        has_id = isinstance(item, Mapping) and isinstance(item.get("task_id"), str)
        raise DecodeError(
            "submission answer is not the documented shape (a string task_id and status)"
            if has_id else "submission answer has no task_id", status=status,
            snippet=snippet(body, secret),
        ) from None
    if not task_id:
        raise DecodeError("submission answer has an empty task_id", status=status, snippet="")
    return _answered_id(task_id, status, secret)


def _named_task_id(body: bytes) -> str | None:
    """The task id a submission answer's ``data`` names, if any (for an answer that also
    reports an error)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    item = data[0] if isinstance(data, list) and data else data
    task_id = item.get("task_id") if isinstance(item, dict) else None
    return task_id if isinstance(task_id, str) and task_id else None


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


# The JSON types the direct pass takes for a field; any other (a bool, a numeric
# string, a float where an int goes) is left to the converter, which decides it.
_INT = int
_NUMBER = (int, float)
# Progress within this range goes through `int(float(p))` unchanged.
_EXACT = 1 << 53


def _urls_fast(value: object) -> tuple[str, ...] | None:
    if type(value) is list:
        for url in value:
            if type(url) is not str:
                return None
        return tuple(value)
    if type(value) is str:
        return (value,)
    return None


def _outputs_fast(
    kind: str, value: object, into: list[TaskOutput], secret: str | None
) -> bool:
    """Append the outputs of a list of ``{"url", "expires_at"}`` objects to `into`, as
    the converter's path would; False for anything unusual (a link holding the key too:
    the general path scrubs it)."""
    if type(value) is not list:
        return False
    for item in value:
        if type(item) is not dict:
            return False
        urls = _urls_fast(item["url"]) if "url" in item else ()
        if urls is None:
            return False
        if secret:
            for url in urls:
                if secret in url:
                    return False
        expires = item.get("expires_at")
        if expires is not None and type(expires) is not _INT:
            return False
        into.extend(TaskOutput(kind=kind, url=url, expires_at=expires) for url in urls)
    return True


# Strings every answer repeats, kept once: a watched task's `Task` then holds no copy
# of its id, its status or its model name (100,000 watched tasks, 100,000 copies).
_KNOWN_STATUS = {status.value: (status, status.value) for status in TaskStatus}
_MODEL_NAMES: dict[str, str] = {}
_MODEL_NAMES_MAX = 256


def _task_fast(data: Any, secret: str | None, expected_id: str | None = None) -> Task | None:
    """The usual task answer, read in one direct pass; None for anything unusual.

    Every field is taken only when it has exactly the JSON type the converter would
    turn into the same value; anything else (an error object, a bool, a numeric
    string, a missing id) returns None and `_task_general` decides, so both give the
    same `Task` or the same error (pinned by tests/test_fast_path.py).
    """
    if type(data) is not dict:
        return None
    get = data.get
    task_id = get("id")
    status = get("status")
    if type(task_id) is not str or type(status) is not str or get("error") is not None:
        return None
    progress = get("progress", 0)
    if type(progress) is not _INT or not -_EXACT < progress < _EXACT:
        return None
    created = get("created")
    completed = get("completed")
    if (created is not None and type(created) is not _INT) or (
        completed is not None and type(completed) is not _INT
    ):
        return None
    estimated = get("estimated_time")
    actual = get("actual_time")
    if (estimated is not None and type(estimated) not in _NUMBER) or (
        actual is not None and type(actual) not in _NUMBER
    ):
        return None
    model = get("model")
    if model is not None and type(model) is not str:
        return None
    if task_id == expected_id:
        task_id = expected_id
    known = _KNOWN_STATUS.get(status)
    if known is not None and not (secret and secret in status):
        parsed, raw_status = known
    else:
        parsed, raw_status = TaskStatus.parse(status), scrub(status, secret)
    if model is not None:
        model = scrub(model, secret)
        name = _MODEL_NAMES.get(model)
        if name is not None:
            model = name
        elif len(_MODEL_NAMES) < _MODEL_NAMES_MAX:
            _MODEL_NAMES[model] = model
    outputs: tuple[TaskOutput, ...] = ()
    urls: tuple[str, ...] = ()
    expires_at = None
    result = get("result")
    if result is not None:
        if type(result) is not dict:
            return None
        found: list[TaskOutput] = []
        if not (_outputs_fast("video", result.get("videos", []), found, secret)
                and _outputs_fast("image", result.get("images", []), found, secret)):
            return None
        outputs = tuple(found)
        urls = tuple(out.url for out in outputs if out.kind == "video")
        expiries = [out.expires_at for out in outputs if out.expires_at is not None]
        expires_at = min(expiries) if expiries else None
    # Most answers hold only modelled fields: no per-answer dict built for them. orjson
    # reads integers past 64 bits as floats: unknown fields other than strings are left
    # to the general path, which decodes such answers again, exactly.
    extra = NO_EXTRA
    if not (_USUAL_FIELDS.issuperset(data) and (
            data.items() >= _CONSTANT_PAIRS or _constants_documented(data))):
        unknown = data.keys() - _MODELLED
        if _loads is not _loads_stdlib and any(type(data[key]) is not str for key in unknown):
            return None
        extra = _extra(data, secret)
    try:
        estimated = None if estimated is None else float(estimated)
        actual = None if actual is None else float(actual)
    except OverflowError:  # an integer too large for a float: the converter's error
        return None
    # `Task(...)` with these values, at half its cost: the slots are filled directly
    # (what its generated __init__ does through `object.__setattr__`, one by one); its
    # __attrs_post_init__ has nothing to do for a Task whose outputs are given.
    task: Task = _new_object(Task)
    _set_id(task, task_id)
    _set_status(task, parsed)
    _set_raw_status(task, raw_status)
    _set_progress(task, 0 if progress < 0 else 100 if progress > 100 else progress)
    _set_created(task, created)
    _set_estimated_time(task, estimated)
    _set_completed_at(task, completed)
    _set_actual_time(task, actual)
    _set_video_urls(task, urls)
    _set_expires_at(task, expires_at)
    _set_error(task, None)
    _set_model(task, model)
    _set_outputs(task, outputs)
    _set_extra(task, extra)
    return task


_new_object = object.__new__
# Task's slot setters by name; a field added to Task and not set above fails here, at
# import, not as a Task missing a slot (tests/test_fast_path.py compares every field).
_SETTERS = {field.name: Task.__dict__[field.name].__set__ for field in attrs.fields(Task)}
_set_id, _set_status, _set_raw_status = _SETTERS["id"], _SETTERS["status"], _SETTERS["raw_status"]
_set_progress, _set_created = _SETTERS["progress"], _SETTERS["created"]
_set_estimated_time, _set_completed_at = _SETTERS["estimated_time"], _SETTERS["completed_at"]
_set_actual_time, _set_video_urls = _SETTERS["actual_time"], _SETTERS["video_urls"]
_set_expires_at, _set_error, _set_model = (
    _SETTERS["expires_at"], _SETTERS["error"], _SETTERS["model"])
_set_outputs, _set_extra = _SETTERS["outputs"], _SETTERS["extra"]
if len(_SETTERS) != 14:
    raise ImportError("Task's fields changed: update the direct pass in _core/wire.py")


def task_from_data(data: Any, secret: str | None = None) -> Task:
    """A `Task` from a task answer's ``data`` object; raises on a wrong shape. The
    server's failure text is scrubbed of `secret`: it reaches journals and terminals."""
    task = _task_fast(data, secret)
    return task if task is not None else _task_general(data, secret)


def _task_general(data: Any, secret: str | None = None) -> Task:
    """`task_from_data` through the converter: every answer, usual or not."""
    wire = converter.structure(data, _WireTask)
    outputs = _outputs(wire.result, secret) if wire.result else ()
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


def _outputs(result: _WireResult, secret: str | None) -> tuple[TaskOutput, ...]:
    """Every file of a result: each video link, then each image link, in answer order.

    A link that holds the API key (a broken or hostile server echoing it) is scrubbed
    like any server text: fetching it would hand the key to the file host, and printing
    it would show it. The download refuses a scrubbed link (`check_file_url`)."""
    return tuple(
        TaskOutput(kind=kind, url=scrub(url, secret), expires_at=entry.expires_at)
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
# The fields of the usual answer: modelled, or constant.
_USUAL_FIELDS = _MODELLED | frozenset(_CONSTANT)
_CONSTANT_ITEMS = tuple(_CONSTANT.items())
# Every constant present with its value (the usual answer): one C-level check.
_CONSTANT_PAIRS = frozenset(_CONSTANT_ITEMS)


def _constants_documented(data: Mapping[str, Any]) -> bool:
    # The constant fields, where present, hold their documented values. (A loop, not
    # all() over a generator: this runs for every answer, and the generator costs more
    # than the two comparisons.)
    for key, value in _CONSTANT_ITEMS:  # noqa: SIM110
        if data.get(key, value) != value:
            return False
    return True


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
    task = _task_fast(data, secret, expected_id)
    try:
        if task is None:
            if _loads is not _loads_stdlib:
                # orjson reads integers past 64 bits as floats: an unusual answer is
                # decoded again, exactly, before the converter reads it.
                data = decode(status, body, retry_after=retry_after, secret=secret,
                              exact=True)
            task = _task_general(data, secret)
    except Exception:
        raise DecodeError(
            "task answer is not the documented shape", status=status, snippet=snippet(body, secret)
        ) from None
    if task.id != expected_id or (secret and secret in task.id):
        # (The id asked for was checked when its request was built.)
        _answered_id(task.id, status, secret)
    if not task.raw_status.strip():
        raise DecodeError(
            "task answer has an empty status", status=status, snippet=snippet(body, secret)
        )
    if expected_id is not None:
        if task.id != expected_id:
            raise DecodeError(
                f"task answer is about task {scrub(task.id, secret)[:100]!r}, "
                f"not the {expected_id!r} asked for",
                status=status, snippet="",
            )
        # The id asked for, not the answer's equal copy (the fast path does this too):
        # every final answer of the emulator and of a failed task takes the general
        # path, and a caller keeping 100,000 final updates' ids kept 100,000 copies
        # (80 bytes each, 7.6 MB) next to its Submissions' (#14).
        _set_id(task, expected_id)
    return task
