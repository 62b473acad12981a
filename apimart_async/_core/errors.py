"""The error tree: one base class, split by what the caller can do about it.

- Fix the input: `ValidationError`, `BadRequestError`.
- Fix the account: `AuthenticationError`, `InsufficientBalanceError`, `PermissionDeniedError`.
- Wait and try again: `RateLimitError`, `ServerError`, `APIConnectionError`, `APITimeoutError`.
- Look at the task: `TaskFailedError`, `TaskTimeoutError`, `ResultExpiredError`.

No message built here ever contains the API key: the transport scrubs server text
before it reaches these constructors, and nothing here is given the key at all.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIMartError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "DecodeError",
    "DownloadError",
    "InsufficientBalanceError",
    "JournalBusyError",
    "JournalUnavailableError",
    "JournalWriteError",
    "NotFoundError",
    "NotSubmittedError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResultExpiredError",
    "ServerError",
    "TaskFailedError",
    "TaskTimeoutError",
    "ValidationError",
    "WorkerFencedError",
    "scrub",
]


class APIMartError(Exception):
    """Base class of every error this SDK raises."""

    #: Set on a submission's error when the server may have created (and billed) the
    #: task anyway: a timeout or reset after sending, a 500/502/504, an unreadable answer.
    submission_ambiguous: bool = False

    #: True when retrying, or sending more requests, cannot help (bad key, no balance).
    fatal: bool = False

    #: The server's request id (``x-request-id`` or ``request-id``), when the answer
    #: that caused this error carried one: quote it to APIMart support.
    request_id: str | None = None

    #: The headers of the answer that caused this error (read-only), else None.
    headers: Mapping[str, str] | None = None

    # Pickling (multiprocessing, concurrent.futures) and copy: BaseException's way calls
    # the class again with `args`, the formatted message, which no constructor here takes
    # (and would format again). An error is rebuilt as `error_from_record` rebuilds one:
    # its message set without its constructor, then every attribute as it was.
    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        if state.get("headers") is not None:
            state["headers"] = dict(state["headers"])  # a mappingproxy does not pickle
        return (_rebuild, (type(self), self.args), state)

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        for name, value in (state or {}).items():
            if name == "headers" and value is not None:
                value = types.MappingProxyType(dict(value))
            setattr(self, name, value)


class ValidationError(APIMartError, ValueError):
    """Bad input, found before anything was sent.

    `field` names the offending field (``"duration"``, ``"image_urls[1]"``) and
    `problem` says what is wrong with its value.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class JournalBusyError(ValidationError):
    """Another run holds the batch journal: one run per journal, so no item is sent twice.

    `pid` and `host` name the process holding it (None when it could not be read).
    """

    def __init__(self, path: str, *, pid: int | None, host: str | None) -> None:
        self.path = path
        self.pid = pid
        self.host = host
        holder = f"pid {pid} on {host}" if pid is not None else "another process"
        super().__init__(
            "journal",
            f"{path} is in use by {holder} (another run of this batch); wait for it to "
            "end or stop it, then re-run",
        )


class WorkerFencedError(APIMartError):
    """This fleet worker's lease ran out (it was paused, or lost the database longer
    than the lease): the fleet declared it dead, its writes are refused, and it exits.
    Its items were handed on (submitting ones as ambiguous), so nothing is paid twice.
    """

    def __init__(self, worker: int, journal: str) -> None:
        self.worker = worker
        self.journal = journal
        super().__init__(
            f"worker {worker} lost its lease on {journal} (paused or cut off longer than "
            "the lease): the fleet declared it dead and refuses its writes; it exits. "
            "Start a new worker to rejoin"
        )


class JournalUnavailableError(APIMartError):
    """The fleet's PostgreSQL journal cannot be reached (server down, connection cut):
    the worker stops. Task ids it received but could not record were printed and
    appended to ``OUT/.apimart-recovered-task-ids``."""

    def __init__(self, journal: str, reason: str) -> None:
        self.journal = journal
        super().__init__(
            f"the journal database {journal} cannot be reached ({reason}): this worker "
            "stopped; start it again once the database is back")


class JournalWriteError(APIMartError):
    """A journal write failed during a batch (a full disk, an I/O error, a lock held
    elsewhere): submission stopped at once.

    `task_ids` are the tasks created (and paid for) whose ids the journal could not
    record; each was printed to standard error with its idempotency key and, when
    `recovery_file` is not None, appended to it (one JSON object a line: ``task_id``,
    ``item_key``, ``idempotency_key``, ``time``). The cause is the `OSError` or
    `sqlite3.Error` the journal raised.
    """

    def __init__(self, journal: str, *, task_ids: tuple[str, ...],
                 recovery_file: str | None, reason: str) -> None:
        self.journal = journal
        self.task_ids = task_ids
        self.recovery_file = recovery_file
        if not task_ids:
            lost = "no paid task is missing from it; a re-run resumes"
        elif recovery_file is not None:
            lost = (f"{len(task_ids)} paid task id(s) it could not record are in "
                    f"{recovery_file}")
        else:
            lost = (f"{len(task_ids)} paid task id(s) it could not record were printed above "
                    "(the recovery file could not be written either): keep them")
        super().__init__(f"journal {journal}: a write failed ({reason}); submission "
                         f"stopped: {lost}")


class APIStatusError(APIMartError):
    """The API answered with an error status (HTTP, or the body's ``code``)."""

    def __init__(self, message: str, *, status: int, code: int | str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"HTTP {status}: {message}")


class BadRequestError(APIStatusError):
    """400 or 422: the API rejected the parameters (e.g. a duration the model does not offer)."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or invalid."""

    fatal = True


class InsufficientBalanceError(APIStatusError):
    """402: the account has no balance left for this generation."""

    fatal = True


class PermissionDeniedError(APIStatusError):
    """403: the key is not allowed to do this."""

    fatal = True


class NotFoundError(APIStatusError):
    """404: no such task (or endpoint)."""


class RateLimitError(APIStatusError):
    """429: too many requests. `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: int | str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: trouble on the server or a gateway in front of it."""


class APIConnectionError(APIMartError):
    """The request did not get an answer: DNS, refused or reset connection, broken stream.

    `request_sent` tells whether the request may have reached the server; when it
    may have, a submission is ambiguous (it may have been created and billed).
    """

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        self.request_sent = request_sent
        super().__init__(message)


class APITimeoutError(APIConnectionError, TimeoutError):
    """The request timed out (connecting, or waiting for the answer)."""


class DecodeError(APIMartError):
    """The answer was not the documented shape (not JSON, or missing fields).

    `status` is the HTTP status and `snippet` the first characters of the body, or ""
    where the body is not quoted (an answer refused for the task id it names: the id
    itself is the problem, and the message says what is wrong with it).
    """

    def __init__(self, message: str, *, status: int, snippet: str) -> None:
        self.status = status
        self.snippet = snippet
        shown = f", body starts {snippet!r}" if snippet else ""
        super().__init__(f"{message} (HTTP {status}{shown})")


class TaskFailedError(APIMartError):
    """The task ended as failed or cancelled; `task` is its last state."""

    def __init__(self, task: models.Task) -> None:
        self.task = task
        self.task_id = task.id
        self.code = task.error.code if task.error else None
        self.message = task.error.message if task.error else None
        detail = f": {self.message}" if self.message else ""
        super().__init__(f"task {task.id} ended {task.status.value}{detail}")


class TaskTimeoutError(APIMartError, TimeoutError):
    """Waiting for a task ran past its deadline. The task itself may still finish.

    When its polls were failing at the deadline (an outage), `poll_error` is the last
    poll's error (else None), the message names it, and `Session.wait` chains it as
    ``__cause__``.
    """

    def __init__(
        self, task_id: str, *, timeout: float, task: models.Task | None = None,
        poll_error: APIMartError | None = None,
    ) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.task = task
        self.poll_error = poll_error
        state = f", last seen {task.status.value} at {task.progress}%" if task else ""
        failing = (f"; its polls were failing ({type(poll_error).__name__}: {poll_error})"
                   if poll_error is not None else "")
        super().__init__(f"task {task_id} not finished after {timeout:g}s{state}{failing}")


class NotSubmittedError(APIMartError):
    """The item was never sent: an earlier fatal answer (bad key, no balance) stopped the batch.

    `reason` is that fatal error. Nothing was billed for this item.
    """

    def __init__(self, reason: APIMartError) -> None:
        self.reason = reason
        name = type(reason).__name__
        super().__init__(f"not submitted: the batch stopped after {name}: {reason}")


class ResultExpiredError(APIMartError):
    """The task's video link expired and a fresh query gave no usable link."""

    def __init__(self, task_id: str, message: str = "result link expired") -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id}: {message}")


class DownloadError(APIMartError):
    """The video could not be downloaded whole (after resuming where possible).

    `resumable` is False when trying again cannot help (the task has no video).
    """

    def __init__(self, task_id: str, message: str, *, resumable: bool = True) -> None:
        self.task_id = task_id
        self.resumable = resumable
        super().__init__(f"task {task_id}: {message}")


def _rebuild(cls: type[APIMartError], args: tuple[Any, ...]) -> APIMartError:
    """An error of `cls` with `args` as its message, its attributes set afterwards."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    return error


def account_problem(error: APIMartError) -> str | None:
    """A 401/402/403 in a few words and what to do about it; None for any other error."""
    if isinstance(error, NotSubmittedError):
        error = error.reason
    if isinstance(error, AuthenticationError):
        return f"API key rejected ({error}): check APIMART_API_KEY or --api-key"
    if isinstance(error, InsufficientBalanceError):
        return f"balance exhausted ({error}): top up the account"
    if isinstance(error, PermissionDeniedError):
        return f"permission denied ({error}): this key may not use that model or endpoint"
    return None


# -- errors as records, for the batch journal ------------------------------------------

# The attributes each error class's constructor sets, beyond the class-level defaults
# (`request_id`, `headers`, `submission_ambiguous`, `fatal`): a rebuilt error gets
# exactly these, None where the record cannot say. Pinned against the constructors by
# tests/test_issue9_mends.py.
_FIELDS: dict[type[APIMartError], tuple[str, ...]] = {
    ValidationError: ("field", "problem"),
    JournalBusyError: ("field", "problem", "path", "pid", "host"),
    APIStatusError: ("status", "code", "message"),
    RateLimitError: ("status", "code", "message", "retry_after"),
    APIConnectionError: ("request_sent",),
    DecodeError: ("status", "snippet"),
    TaskFailedError: ("task", "task_id", "code", "message"),
    TaskTimeoutError: ("task_id", "timeout", "task", "poll_error"),
    NotSubmittedError: ("reason",),
    ResultExpiredError: ("task_id",),
    DownloadError: ("task_id", "resumable"),
}


def _fields(cls: type[APIMartError]) -> tuple[str, ...]:
    """The constructor-set attributes of `cls` (its nearest listed ancestor's)."""
    for klass in cls.__mro__:
        if klass in _FIELDS:
            return _FIELDS[klass]
    return ()


def error_record(error: APIMartError) -> dict[str, Any]:
    """`error` as JSON-ready data: its type, text, request id and its class's attributes
    whose values are plain data (a `NotSubmittedError`'s `reason` as a nested record).

    Not kept: response headers (only the request id among them; the journal holds
    outcomes, not transport details) and a `Task` object (`task`).
    """
    record: dict[str, Any] = {"type": type(error).__name__, "text": str(error)}
    for name in (*_fields(type(error)), "request_id"):
        value = getattr(error, name, None)
        if isinstance(value, APIMartError):
            record[name] = error_record(value)
        elif isinstance(value, (str, int, float, bool)):
            record[name] = value
    if error.submission_ambiguous:
        record["submission_ambiguous"] = True
    return record


def error_from_record(record: Mapping[str, Any]) -> APIMartError:
    """The error `error_record` described, as its own type (`APIMartError` if unknown).

    Rebuilt without calling the class's constructor (its arguments, e.g. a whole `Task`,
    are not recorded), with exactly the attributes the constructor sets: the recorded
    values, None for the others (`task`, and anything an older record lacks).
    `headers` stays None.
    """
    found = getattr(sys.modules[__name__], str(record.get("type")), None)
    cls = found if isinstance(found, type) and issubclass(found, APIMartError) else APIMartError
    error = cls.__new__(cls)
    Exception.__init__(error, str(record.get("text", "")))
    for name in _fields(cls):
        value = record.get(name)
        if isinstance(value, Mapping):
            value = error_from_record(value)
        elif isinstance(value, list):
            value = None
        setattr(error, name, value)
    request_id = record.get("request_id")
    if isinstance(request_id, str):
        error.request_id = request_id
    if record.get("submission_ambiguous"):
        error.submission_ambiguous = True
    return error


def scrub(text: str, secret: str | None) -> str:
    """Remove every occurrence of `secret` from server-supplied text (the one scrubber:
    answers, headers and transport errors all pass through it)."""
    if secret and secret in text:
        return text.replace(secret, REDACTED)
    return text


#: What `scrub` puts where the key was.
REDACTED = "[redacted]"


def with_response(
    error: APIMartError, headers: Mapping[str, str], secret: str | None = None
) -> APIMartError:
    """Attach the answer's headers (a read-only copy) and request id to `error`, every
    name and value scrubbed of `secret` (a host may echo anything; they reach journals).
    Names are kept in lower case, so they are scrubbed of the key in lower case too."""
    lowered = secret.lower() if secret else None
    error.headers = types.MappingProxyType({
        scrub(k.lower(), lowered): scrub(v, secret) for k, v in headers.items()
    })
    error.request_id = error.headers.get("x-request-id") or error.headers.get("request-id")
    return error


# Last, for `typing.get_type_hints` on the constructors that take a `Task`: `models`
# imports this module, and a module bound at the end resolves whichever loads first.
from . import models  # noqa: E402
