"""The direct pass over the usual task answer gives what the converter gives.

`task_from_data` reads the usual answer in one direct pass (`_task_fast`) and leaves
anything unusual to the cattrs converter (`_task_general`). Over a corpus of answers
(the usual ones, and each field given every odd JSON value), both must give the same
`Task`, field by field and type by type, or the same error. A field added to `Task` or
to the wire model without the direct pass learning it shows up here.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from apimart_async import DecodeError, Task, ValidationError
from apimart_async._core import wire
from apimart_async._core.wire import _task_fast, _task_general, parse_submit, parse_task

SECRET = "sk-secret-12345678"

PROCESSING: dict[str, Any] = {
    "id": "task_01", "status": "processing", "progress": 40, "created": 1763174000,
    "estimated_time": 60, "model": "sora-2",
}
COMPLETED: dict[str, Any] = {
    "id": "task_01", "status": "completed", "progress": 100, "created": 1763174000,
    "estimated_time": 60, "completed": 1763174019, "actual_time": 19.5,
    "result": {"videos": [{"url": ["https://files.example/v.mp4"], "expires_at": 1763260419}]},
    "model": "sora-2", "object": "video.generation.task", "usage": {"credits": 1},
}
# The usual answer as documented: two constant fields the Task does not keep.
USUAL: dict[str, Any] = dict(PROCESSING, object="video.generation.task", type="video")
FAILED: dict[str, Any] = {
    "id": "task_01", "status": "failed", "progress": 0,
    "error": {"code": 500, "message": f"upstream said {SECRET}"},
}

# Every JSON value kind, and the edges of the numeric ones.
ODD: list[Any] = [
    None, True, False, 0, -1, 7, 101, 1 << 53, (1 << 53) + 1, 10**30, 2.5, -0.0,
    math.nan, math.inf, "", " ", "12", "4.5", "x", SECRET, f"a{SECRET}b",
    [], ["https://a/1"], ["https://a/1", 2], {}, {"k": 1},
]
FIELDS = ["id", "status", "progress", "created", "estimated_time", "completed",
          "actual_time", "model", "error", "result", "object", "type"]
RESULTS: list[Any] = [
    {"videos": []}, {"videos": [], "images": [{"url": "https://a/i.png"}]},
    {"images": [{"url": ["https://a/i.png"], "expires_at": 9}]},
    {"videos": [{"url": "https://a/v.mp4"}, {"url": ["https://a/w.mp4"], "expires_at": 3},
                {"expires_at": 1}]},
    {"videos": [{"url": ["https://a/v.mp4"], "expires_at": 5}],
     "images": [{"url": ["https://a/i.png"], "expires_at": 1}]},
    {"videos": None}, {"videos": [None]}, {"videos": "https://a/v.mp4"},
    {"videos": [{"url": None}]}, {"videos": [{"url": [1]}]},
    {"videos": [{"url": "u", "expires_at": "5"}]}, {"videos": [{"url": "u", "expires_at": True}]},
    {"videos": [{"url": "u", "expires_at": 2.5}]}, {"videos": ({"url": "u"},)},
    {"images": "x"}, {"videos": [{"url": "u"}], "images": None},
    # A link echoing the key: scrubbed on both paths, never kept as sent.
    {"videos": [{"url": [f"https://a/v.mp4?k={SECRET}"], "expires_at": 5}]},
    {"images": [{"url": f"https://a/{SECRET}/i.png"}]},
]


def corpus() -> Iterator[Any]:
    for base in (PROCESSING, USUAL, COMPLETED, FAILED):
        yield base
        for field in FIELDS:
            without = dict(base)
            without.pop(field, None)
            yield without
            for value in ODD:
                yield dict(base, **{field: value})
        for result in RESULTS:
            yield dict(base, result=result)
    for value in ODD:
        yield value
    yield [PROCESSING]


def outcome(func: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """What a call gives, comparable across paths: a Task's fields with their types,
    or the error's type and text."""
    try:
        result = func(*args, **kwargs)
    except Exception as exc:
        return ("error", (type(exc).__name__, str(exc)))
    if isinstance(result, Task):
        fields = attrs.asdict(result, recurse=False)
        return ("task", {k: (type(v).__name__, repr(v)) for k, v in fields.items()})
    return ("value", result)


CASES = list(corpus())


def test_the_corpus_takes_both_paths() -> None:
    # Without this the test below could pass with a direct pass that takes nothing.
    fast = [data for data in CASES if _task_fast(copy.deepcopy(data), SECRET) is not None]
    assert len(fast) > 50
    assert len(CASES) - len(fast) > 200


@pytest.mark.parametrize("data", CASES)
def test_direct_pass_equals_the_converter(data: Any) -> None:
    fast = _task_fast(copy.deepcopy(data), SECRET)
    general = outcome(_task_general, copy.deepcopy(data), SECRET)
    if fast is not None:
        assert outcome(lambda: fast) == general
        assert all(SECRET not in out.url for out in fast.outputs)
    assert outcome(wire.task_from_data, copy.deepcopy(data), SECRET) == general


def _general_parse_task(status: int, body: bytes, **kwargs: Any) -> Task:
    # parse_task as it would be with only the converter.
    original = wire._task_fast
    wire._task_fast = lambda *args: None  # type: ignore[assignment]
    try:
        return parse_task(status, body, **kwargs)
    finally:
        wire._task_fast = original


@pytest.mark.parametrize("orjson", [False, True], ids=["stdlib-json", "orjson"])
def test_parse_task_same_task_or_same_error_on_both_decoders(orjson: bool) -> None:
    if orjson:
        pytest.importorskip("orjson")
    assert wire.use_orjson(orjson) is orjson
    try:
        for data in CASES:
            body = json.dumps({"code": 200, "data": data}).encode()
            for expected in (None, "task_01", "task_02"):
                got = outcome(parse_task, 200, body, secret=SECRET, expected_id=expected)
                want = outcome(_general_parse_task, 200, body, secret=SECRET,
                               expected_id=expected)
                assert got == want, data
    finally:
        wire.use_orjson()


# Bodies the decoders might read differently; each must decode as `json.loads(bytes)`
# always did (what orjson or a plain UTF-8 decode refuses goes to it).
ODD_BODIES = [
    b"",
    b"not json",
    b'{"code": 200, "data": {"id": "t", "status": "processing", "estimated_time": NaN}}',
    b'{"code": 200, "data": {"id": "t", "status": "processing", "estimated_time": 1e400}}',
    b'{"code": 200, "data": {"id": "t", "status": "processing", "created": '
    + b"1" * 40 + b"}}",
    b'\xef\xbb\xbf{"code": 200, "data": {"id": "t", "status": "processing"}}',
    json.dumps({"code": 200, "data": {"id": "t", "status": "processing"}}).encode("utf-16"),
    b'{"code": 200, "data": {"id": "t", "status": "processing", "model": "\\ud800"}}',
    b'{"code": 200, "data": {"id": "t", "status": "a", "status": "completed"}}',
    b'{"code": 200, "data": {"id": "t", "status": "processing", "model": "\xff"}}',
    b'{"code": 200, "data": {"id": "t", "status": "processing"}} trailing',
    b' \n{"code": 200, "data": {"id": "t", "status": "processing"}}',
    b'{"code": 200, "data": {"id": "t", "status": "processing"}} \r\n\t',
    b'{"code": 200, "data": {"id": "t", "status": "processing"}}\x0c',
    b'{"code": 402, "msg": "no balance"}',
    b'{"code": ' + b"4" * 30 + b', "msg": "code past 64 bits"}',
    b'{"error": {"code": ' + b"4" * 30 + b', "message": "code past 64 bits"}}',
    b"[1, 2]",
    b'{"code": 200, "data": {"id": "t", "status": "processing", "progress": 1.0}}',
    b'{"code": 200, "data": {"id": "t", "status": "processing", "progress": 1e2}}',
]


@pytest.mark.parametrize("orjson", [False, True], ids=["stdlib-json", "orjson"])
@pytest.mark.parametrize("status", [200, 400])
@pytest.mark.parametrize("body", ODD_BODIES)
def test_odd_bodies_decode_as_before(body: bytes, status: int, orjson: bool) -> None:
    if orjson:
        pytest.importorskip("orjson")
    want = outcome(_general_parse_task_old_json, status, body, secret=SECRET)
    wire.use_orjson(orjson)
    try:
        assert outcome(parse_task, status, body, secret=SECRET) == want
    finally:
        wire.use_orjson()


def _general_parse_task_old_json(status: int, body: bytes, **kwargs: Any) -> Task:
    # The reference: the converter alone, on `json.loads(bytes)` alone.
    original = wire._loads
    wire._loads = json.loads
    try:
        return _general_parse_task(status, body, **kwargs)
    finally:
        wire._loads = original


def test_use_orjson_switches_the_decoder() -> None:
    pytest.importorskip("orjson")
    import orjson

    try:
        assert wire.use_orjson(True) and wire._loads is orjson.loads
        assert not wire.use_orjson(False) and wire._loads is wire._loads_stdlib
    finally:
        wire.use_orjson()


SUBMIT_ITEMS: list[Any] = [
    {"status": "submitted", "task_id": "task_01"},
    {"task_id": "task_01"},
    {"task_id": "task_01", "status": None},
    {"task_id": "task_01", "status": 3},
    {"task_id": ""},
    {"task_id": None},
    {"task_id": 7},
    {"task_id": "a b"},
    {"task_id": f"x{SECRET}"},
    # Plain characters, but path steps: refused like any id that is not a name.
    {"status": "submitted", "task_id": ".."},
    {"status": "submitted", "task_id": "."},
    {"status": "submitted", "task_id": "..."},
    {"status": 'sub"mitted', "task_id": "task_01"},
    {"status": "submitted", "task_id": "task_\u00e9"},
    {"task_id": "task_01", "status": "submitted"},
    # Review 11: ids reach terminals and file names.
    {"status": "submitted", "task_id": "x\u001b]0;t\u0007"},
    {"status": "submitted", "task_id": "a\u0000b"},
    {"status": "submitted", "task_id": "a" * 200},
    {"status": "submitted", "task_id": "a" * 201},
    {"status": "submitted", "task_id": "\u00e9" * 101},
    {"status": "submitted"},
    "task_01",
    None,
    [],
]


SUBMIT_BODIES: list[Any] = [
    {"code": 200, "data": [item]} for item in SUBMIT_ITEMS
] + [
    {"data": [{"task_id": "task_01"}]},
    {"code": 200.0, "data": [{"task_id": "task_01"}]},
    {"code": "200", "data": [{"task_id": "task_01"}]},
    {"code": True, "data": [{"task_id": "task_01"}]},
    {"code": 402, "data": [{"task_id": "task_01"}]},
    {"code": 200, "data": [{"task_id": "task_01"}], "error": None},
    {"code": 200, "data": [{"task_id": "task_01"}], "error": {"message": "no"}},
    {"code": 200, "data": [{"task_id": "task_01"}, {"task_id": "task_02"}]},
    {"code": 200, "data": {"task_id": "task_01"}},
    {"code": 200, "data": []},
    {"code": 200},
    {"code": 200, "data": [{"task_id": "task_01", "status": "submitted", "more": [1]}]},
    [{"task_id": "task_01"}],
]


@pytest.mark.parametrize("orjson", [False, True])
@pytest.mark.parametrize("answer", SUBMIT_BODIES)
def test_parse_submit_direct_pass_equals_the_general_path(answer: Any, orjson: bool) -> None:
    # The reference is the general path alone (decode, then the converter), which the
    # direct pass must match exactly: the same id, or the same error.
    if wire.use_orjson(orjson) != orjson:
        pytest.skip("orjson is not installed")
    try:
        for status in (200, 201, 429, 500):
            # Compact, spaced and indented: the whitespace JSON allows between tokens.
            for body in (json.dumps(answer).encode(),
                         json.dumps(answer, separators=(",", ":")).encode(),
                         b" \r\n" + json.dumps(answer, indent="\t").encode() + b"\n"):
                got = outcome(parse_submit, status, body, secret=SECRET)
                want = outcome(wire._submit_general, status, body, None, SECRET)
                assert got == want, (status, body)
    finally:
        wire.use_orjson()


def test_parse_submit_direct_pass_takes_the_usual_answer() -> None:
    # The corpus above must reach both paths: the usual answer never calls `decode`
    # (watched by a profile hook, not by replacing it), an unusual one does.
    decoded: list[int] = []

    def watch(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is wire.decode.__code__:
            decoded.append(1)

    sys.setprofile(watch)
    try:
        usual = parse_submit(200, b'{"code":200,"data":[{"task_id":"task_01"}]}')
        documented = parse_submit(
            200, b'{"code": 200, "data": [{"status": "submitted", "task_id": "task_01"}]}')
        seen_usual = len(decoded)
        unusual = outcome(parse_submit, 200, b'{"code":200,"data":[{"task_id":"a b"}]}')
    finally:
        sys.setprofile(None)
    assert usual == documented == "task_01" and seen_usual == 0
    assert unusual[0] == "error" and decoded


@pytest.mark.parametrize("secret", ["process", "complete", "sora"])
def test_a_secret_inside_a_known_status_or_model_is_still_scrubbed(secret: str) -> None:
    # The direct pass reuses the status's own string: not when the key is inside it.
    for data in (PROCESSING, COMPLETED):
        body = json.dumps({"code": 200, "data": data}).encode()
        got = outcome(parse_task, 200, body, secret=secret)
        assert got == outcome(_general_parse_task, 200, body, secret=secret)
        task = parse_task(200, body, secret=secret)
        assert secret not in task.raw_status and secret not in (task.model or "")


@pytest.mark.parametrize("bad", ["x\x1b]0;t\x07", "a\x00b", "a\u200bb", "a" * 201, "\u00e9" * 101])
def test_an_id_with_control_characters_or_too_long_for_a_file_name_is_refused(bad: str) -> None:
    # Review 11: such an id from an answer reached the terminal (an escape sequence
    # acting there) and the download's file name (a bare ValueError or OSError).
    with pytest.raises(ValidationError) as info:
        wire.check_task_id(bad)
    assert info.value.field == "task_id"
    with pytest.raises(ValidationError):
        wire.task_path(bad)
    assert wire.check_task_id("a" * 200) == "a" * 200


def test_an_answer_refused_for_its_task_id_does_not_say_its_body_is_empty() -> None:
    # Review 12: such errors quote no body (the id is the problem), and said
    # "body starts ''", as if the answer had been empty.
    body = b'{"code": 200, "data": [{"status": "submitted", "task_id": ".."}]}'
    with pytest.raises(DecodeError) as info:
        parse_submit(200, body)
    assert info.value.snippet == "" and str(info.value).endswith("(HTTP 200)")
    assert "body starts" in str(DecodeError("x", status=200, snippet="{"))
