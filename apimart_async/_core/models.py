"""Typed, immutable models: what a user builds (`VideoRequest`) and what the API tells (`Task`)."""

from __future__ import annotations

import enum
import json
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import attrs

from .errors import ValidationError
from .registry import ModelName, check_model_fields
from .validation import check_image_url, check_unicode

__all__ = ["Submission", "Task", "TaskError", "TaskOutput", "TaskStatus", "VideoRequest"]

# Fields the SDK sends itself; `extra` may not shadow them.
_NAMED_FIELDS = frozenset({"model", "prompt", "duration", "aspect_ratio", "image_urls"})


class TaskStatus(str, enum.Enum):
    """A task's state; values are the wire strings.

    `UNKNOWN` stands for any status this SDK does not know yet; it is treated as
    still running, so a new server state never crashes a watch.
    """

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, raw: str) -> TaskStatus:
        """The member for a wire string; `UNKNOWN` for one not known."""
        found = _BY_WIRE.get(raw)
        if found is None:
            found = _BY_WIRE.get(raw.lower(), cls.UNKNOWN)
        return found

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in _TERMINAL


_BY_WIRE = {status.value: status for status in TaskStatus}
_TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


#: The longest prompt sent. The API documents no limit; a few thousand characters is
#: what video models read, and an unbounded one (a 200 MB line of a batch file) took
#: gigabytes of memory and would go out as one huge POST.
MAX_PROMPT_CHARS = 32_000


def _check_prompt(_: object, __: object, value: Any) -> None:
    if not isinstance(value, str):
        raise ValidationError("prompt", f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValidationError("prompt", "must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValidationError(
            "prompt", f"is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,}"
        )
    check_unicode("prompt", value)


def _check_model(_: object, __: object, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("model", f"must be a non-empty string, got {value!r}")
    check_unicode("model", value)


def _check_duration(_: object, __: object, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("duration", f"must be a whole number of seconds, got {value!r}")
    if value <= 0:
        raise ValidationError("duration", f"must be positive, got {value}")


def _check_aspect_ratio(_: object, __: object, value: Any) -> None:
    # Which ratios: the model's spec (`registry`), checked once every field is in.
    if value is not None and not isinstance(value, str):
        raise ValidationError("aspect_ratio", f"must be a string like '16:9', got {value!r}")
    if value is not None:
        check_unicode("aspect_ratio", value)


def _image_urls(value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValidationError("image_urls", "must be a list of URLs, not a single value")
    if isinstance(value, (Mapping, set, frozenset)):
        # A mapping would silently become its keys, a set an arbitrary order.
        raise ValidationError(
            "image_urls", f"must be a list of URLs, not a {type(value).__name__}"
        )
    return tuple(check_unicode(f"image_urls[{i}]", check_image_url(f"image_urls[{i}]", url))
                 for i, url in enumerate(value))


#: How deep `extra` may nest (the mapping itself is level 1). Model options are a level
#: or two; a structure thousands deep made the JSON encoder raise RecursionError.
MAX_EXTRA_DEPTH = 64


def _read_only(self: object, *_: object, **__: object) -> NoReturn:
    raise TypeError("a VideoRequest's extra is read-only, nested values too: build a new "
                    "request, e.g. attrs.evolve(request, extra={...})")


class _ReadOnlyDict(dict[str, Any]):
    """A JSON object inside a request's `extra`: a dict both JSON encoders take as one,
    that cannot be changed once the request validated it (made by `_read_only_dict`)."""

    __slots__ = ()
    # (__init__ too: called again, it would refill it.)
    __init__ = __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[Callable[[Any], _ReadOnlyDict], tuple[dict[str, Any]]]:
        # pickle and copy would fill a new one through __setitem__.
        return _read_only_dict, (dict(self),)


class _ReadOnlyList(list[Any]):
    """A JSON array inside a request's `extra`: a list (equal to one, encoded as one)
    that cannot be changed once the request validated it (made by `_read_only_list`)."""

    __slots__ = ()
    __init__ = __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = reverse = sort = clear = _read_only

    def __reduce__(self) -> tuple[Callable[[Any], _ReadOnlyList], tuple[list[Any]]]:
        return _read_only_list, (list(self),)


def _read_only_dict(items: Any) -> _ReadOnlyDict:
    made: _ReadOnlyDict = dict.__new__(_ReadOnlyDict)
    dict.__init__(made, items)
    return made


def _read_only_list(items: Any) -> _ReadOnlyList:
    made: _ReadOnlyList = list.__new__(_ReadOnlyList)
    list.__init__(made, items)
    return made


def _frozen(value: Any) -> Any:
    """A JSON value (as `json.loads` gives it) with every object and array read-only."""
    if type(value) is dict:
        return _read_only_dict({key: _frozen(item) for key, item in value.items()})
    if type(value) is list:
        return _read_only_list([_frozen(item) for item in value])
    return value


def _check_tree(value: object, where: list[object], inside: list[int]) -> None:
    """Refuse, naming the place (``extra['opts'][0]``), what `json.dumps` would fail on
    with no clear word or would send wrong: nesting past `MAX_EXTRA_DEPTH`, a value that
    contains itself, a string (value or key) that is not valid Unicode. `where` is the
    path of keys to `value` (its name is made only for an error: this runs for every
    request with an `extra`)."""
    if type(value) in _LEAVES:
        return
    if isinstance(value, str):
        if not value.isascii():
            check_unicode(_place(where), value)
        return
    items: Iterable[tuple[object, object]]
    if type(value) is dict or isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return
    if len(where) >= MAX_EXTRA_DEPTH:
        raise ValidationError(_place(where), f"nests deeper than {MAX_EXTRA_DEPTH} levels")
    if id(value) in inside:
        raise ValidationError(_place(where), "contains itself (a circular reference)")
    inside.append(id(value))
    for key, item in items:
        if isinstance(key, str) and not key.isascii():
            check_unicode(f"{_place(where)} key {key!r}", key)
        where.append(key)
        _check_tree(item, where, inside)
        where.pop()
    inside.pop()


# The usual values of `extra`: nothing in them to look into (an ABC's isinstance costs).
_LEAVES = frozenset({int, float, bool, type(None)})


def _place(where: list[object]) -> str:
    return "extra" + "".join(f"[{key!r}]" for key in where)


def _extra(value: object) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError("extra", f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ValidationError("extra", f"keys must be strings, got {key!r}")
        if key in _NAMED_FIELDS:
            raise ValidationError(f"extra[{key!r}]", "duplicates a named field; pass it directly")
    _check_tree(value, [], [])
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("extra", f"must be JSON-serialisable ({exc})") from None
    # A read-only copy of the JSON value itself, nested objects and arrays included
    # (dicts and lists that refuse changes: both JSON encoders take them as they are, so
    # `to_body` copies only the top level): neither what the caller changes in its own
    # dicts later nor a change through `request.extra` can reach the request (nor make its
    # body differ between the JSON encoders, or stop being JSON).
    return types.MappingProxyType(
        {key: _frozen(item) for key, item in json.loads(text).items()})


def _state_of(obj: VideoRequest | Task) -> dict[str, Any]:
    """A frozen model's fields for pickle and copy, its read-only `extra` as a dict."""
    state = {field.name: getattr(obj, field.name) for field in attrs.fields(type(obj))}
    if state["extra"] is not None:
        state["extra"] = dict(state["extra"])
    return state


def _set_state(obj: VideoRequest | Task, state: Mapping[str, Any],
               empty_extra: Mapping[str, Any] | None) -> None:
    """Fill a frozen model from `_state_of`'s state: `extra` read-only again (an empty
    one as `empty_extra` when that is given), as its constructor leaves it."""
    for name, value in state.items():
        if name == "extra" and value is not None:
            value = types.MappingProxyType(value) if value or empty_extra is None else empty_extra
        object.__setattr__(obj, name, value)


@attrs.frozen
class VideoRequest:
    """One video generation, validated on construction.

    `extra` carries model-specific fields (e.g. ``{"resolution": "1080p"}``) into the
    JSON body unchanged. Any problem raises `ValidationError` naming the field.

    A known `model` (see `register_model`) has its `aspect_ratio`, `duration`,
    `image_urls` and known `extra` fields checked against its `ModelSpec`; an unknown one
    is sent as given. `image_urls` takes http(s) URLs and base64 ``data:`` URIs of
    JPEG, PNG or WebP images of at most 10 MB.
    """

    prompt: str = attrs.field(validator=_check_prompt)
    model: ModelName = attrs.field(default="sora-2", validator=_check_model, kw_only=True)
    duration: int | None = attrs.field(default=None, validator=_check_duration, kw_only=True)
    aspect_ratio: str | None = attrs.field(
        default=None, validator=_check_aspect_ratio, kw_only=True
    )
    image_urls: tuple[str, ...] = attrs.field(default=(), converter=_image_urls, kw_only=True)
    extra: Mapping[str, Any] | None = attrs.field(
        default=None, converter=_extra, hash=False, kw_only=True
    )

    # attrs' own pickling hands `extra`, a mappingproxy, to pickle, which refuses it.
    def __getstate__(self) -> dict[str, Any]:
        return _state_of(self)

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        _set_state(self, state, empty_extra=None)

    def __attrs_post_init__(self) -> None:
        check_model_fields(
            self.model, duration=self.duration, aspect_ratio=self.aspect_ratio,
            image_count=len(self.image_urls), extra=self.extra,
        )

    def to_body(self) -> dict[str, Any]:
        """The JSON body for ``POST /v1/videos/generations``."""
        body: dict[str, Any] = dict(self.extra or {})
        body["model"] = self.model
        body["prompt"] = self.prompt
        if self.duration is not None:
            body["duration"] = self.duration
        if self.aspect_ratio is not None:
            body["aspect_ratio"] = self.aspect_ratio
        if self.image_urls:
            body["image_urls"] = list(self.image_urls)
        return body


@attrs.frozen(kw_only=True)
class TaskError:
    """Why a task failed: the server's code and message."""

    code: int | str | None = None
    message: str = ""


@attrs.frozen(kw_only=True)
class TaskOutput:
    """One file a completed task produced: a video or an image, its (temporary) link and
    when that link expires (Unix seconds, if the server said)."""

    kind: str  # "video" or "image"
    url: str
    expires_at: int | None = None


#: The `Task.extra` of a task whose answer had no field the SDK does not model: one
#: shared read-only mapping, so tasks without extras hold nothing more.
NO_EXTRA: Mapping[str, Any] = types.MappingProxyType({})


@attrs.frozen(kw_only=True)
class Task:
    """A task's state as last reported by ``GET /v1/tasks/{id}``.

    Times are Unix seconds as the server gave them; `raw_status` keeps the wire
    string, which matters when `status` is `TaskStatus.UNKNOWN`; `model` is the model
    the server names, if it does.

    `outputs` is every file the task produced, in the server's order: its videos
    (``result.videos``), then its images (``result.images``); `video_urls` and
    `image_urls` are their links. `extra` holds the answer's fields this class does not
    model (e.g. ``usage``), read-only, as the server sent them.
    """

    id: str
    status: TaskStatus
    raw_status: str = ""
    progress: int = 0
    created: int | None = None
    estimated_time: float | None = None
    completed_at: int | None = None
    actual_time: float | None = None
    video_urls: tuple[str, ...] = ()
    expires_at: int | None = None
    error: TaskError | None = None
    model: str | None = None
    outputs: tuple[TaskOutput, ...] = ()
    extra: Mapping[str, Any] = attrs.field(default=NO_EXTRA, hash=False)

    # attrs' own pickling hands `extra`, a mappingproxy, to pickle, which refuses it (a
    # TaskFailedError, which holds its Task, could not cross a process boundary).
    def __getstate__(self) -> dict[str, Any]:
        return _state_of(self)

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        _set_state(self, state, empty_extra=NO_EXTRA)

    def __attrs_post_init__(self) -> None:
        if not self.outputs and self.video_urls:
            # Built by hand from links alone (as before outputs existed): they are videos.
            outputs = tuple(TaskOutput(kind="video", url=url, expires_at=self.expires_at)
                            for url in self.video_urls)
            object.__setattr__(self, "outputs", outputs)

    @property
    def image_urls(self) -> tuple[str, ...]:
        """The links of the task's images (``result.images``)."""
        return tuple(out.url for out in self.outputs if out.kind == "image")

    @property
    def is_terminal(self) -> bool:
        """True once the task is completed, failed or cancelled."""
        return self.status.is_terminal

    def is_expired(self, now: float) -> bool:
        """True when the result links have expired at Unix time `now`."""
        return self.expires_at is not None and now >= self.expires_at


@attrs.frozen(kw_only=True)
class Submission:
    """An accepted submission: its task id, its request and the idempotency key it was sent with."""

    task_id: str
    request: VideoRequest
    idempotency_key: str = ""


_HEX_DIGITS = frozenset("0123456789abcdef")


class _Given:
    """A key that is not a string (a caller's mistake the type hint does not stop: None,
    an int, bytes), held as given and read back as given: a bare int there would read
    as an SDK-made key's hex."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Given, (self.value,))


class _KeyStorage:
    """How `Submission.idempotency_key` is stored: an SDK-made key (32 lowercase hex
    digits, 128 random bits) as its number, 48 bytes instead of an 81-byte string, in
    the field's own slot; read back, it is the same string again. Any other key is kept
    as given. The field stays what it is everywhere it shows (`attrs.asdict`, cattrs,
    repr, ==, hash, pickle): each reads it through this descriptor (#14: a caller
    holding 100,000 Submissions holds ~4.8 MB less)."""

    __slots__ = ("_slot",)

    def __init__(self, slot: Any) -> None:
        self._slot = slot  # the slot's own member descriptor

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self._slot
        value = self._slot.__get__(obj, owner)
        if type(value) is int:
            return f"{value:032x}"
        return value.value if type(value) is _Given else value

    def __set__(self, obj: object, value: object) -> None:
        if type(value) is str:
            if len(value) == 32 and _HEX_DIGITS.issuperset(value):
                value = int(value, 16)  # f"{n:032x}" gives `value` back, leading zeros too
        else:
            value = _Given(value)  # read back as given, whatever it is
        self._slot.__set__(obj, value)

    def __delete__(self, obj: object) -> None:
        self._slot.__delete__(obj)


_key_slot = vars(Submission)["idempotency_key"]
# setattr: the class attribute is typed as the field (str) for type checkers.
setattr(Submission, "idempotency_key", _KeyStorage(_key_slot))  # noqa: B010

_new_object = object.__new__
_set_task_id = vars(Submission)["task_id"].__set__
_set_request = vars(Submission)["request"].__set__
_set_key_number = _key_slot.__set__
if [f.name for f in attrs.fields(Submission)] != ["task_id", "request", "idempotency_key"]:
    raise ImportError("Submission's fields changed: update sdk_submission in _core/models.py")


def sdk_submission(task_id: str, request: VideoRequest, key: bytes) -> Submission:
    """``Submission(task_id=..., request=..., idempotency_key=key.hex())`` for an SDK-made
    key (`key`: its 16 random bytes), built for every submission: the slots are filled
    directly, the key stored as its number at once (what `_KeyStorage` makes of its hex),
    without the generated __init__ and the descriptor's check of a string."""
    submission: Submission = _new_object(Submission)
    _set_task_id(submission, task_id)
    _set_request(submission, request)
    _set_key_number(submission, int.from_bytes(key, "big"))
    return submission
