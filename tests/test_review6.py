"""Review 6's defects: strings that are not Unicode, a request's `extra` changed after
it was validated, untyped errors where `ValidationError` is promised, and small ones.
Real client, real sockets, the embedded emulator."""

from __future__ import annotations

import copy
import json
import math
import pickle
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import attrs
import pytest

from apimart_async import BatchItem, EventKind, Session, ValidationError, VideoRequest
from apimart_async._core import wire
from apimart_async._core.wire import check_task_id
from apimart_async.testing import EmulatorServer

from .conftest import cli, session_for

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


# -- 1. lone surrogates ---------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "field"), [
    ({"prompt": "a fox \ud800"}, "prompt"),
    ({"prompt": "x", "model": "my-model-\udfff"}, "model"),
    ({"prompt": "x", "model": "my-model", "aspect_ratio": "16:9\ud800"}, "aspect_ratio"),
    ({"prompt": "x", "image_urls": ["https://e.example/a.png", "https://e.example/\udc00"]},
     "image_urls[1]"),
    ({"prompt": "x", "extra": {"style": "\ud83c"}}, "extra['style']"),
    ({"prompt": "x", "extra": {"opts": ["ok", "b\ud800d"]}}, "extra['opts'][1]"),
    ({"prompt": "x", "extra": {"opts": {"deep": [{"k": "\udfff"}]}}},
     "extra['opts']['deep'][0]['k']"),
    ({"prompt": "x", "extra": {"\ud800": 1}}, "extra key '\\ud800'"),
    ({"prompt": "x", "extra": {"opts": {"\ud800": 1}}}, "extra['opts'] key '\\ud800'"),
])
def test_a_string_that_is_not_unicode_is_refused_naming_its_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        VideoRequest(**kwargs)
    assert info.value.field == field
    assert "lone surrogate U+D" in info.value.problem
    str(info.value).encode("utf-8")  # the message itself can be printed and logged


def test_non_ascii_unicode_is_still_accepted_everywhere() -> None:
    request = VideoRequest("a café 🎬", model="m-é", aspect_ratio="16:9",
                           image_urls=["https://e.example/é.png"],
                           extra={"tags": ["🎬", {"ключ": "значение"}]})
    assert json.loads(wire.encode_json(request.to_body()))["tags"][1] == {"ключ": "значение"}


async def test_a_surrogate_never_reaches_the_wire_nor_the_journal(
    server: EmulatorServer, tmp_path: Path
) -> None:
    # Refused at construction: neither `submit` nor `run_batch` (whose journal digest
    # crashed on it) is ever handed one.
    with pytest.raises(ValidationError, match="prompt"):
        VideoRequest("a fox \ud800")
    async with session_for(server) as s:
        report = await s.run_batch([VideoRequest("a fox é")], out_dir=tmp_path)
    assert report.ok and not [r for r in server.emulator.request_log
                              if r.route == "submit" and r.status != 200]


# -- 2. `extra` read-only all the way down ---------------------------------------------

def test_nested_extra_cannot_be_changed_through_the_request() -> None:
    request = VideoRequest("x", model="m", extra={"opts": {"v": 1, "l": [1, {"k": 2}]}})
    opts = request.extra["opts"]  # type: ignore[index]
    attempts = [
        lambda: opts.__setitem__("v", math.nan),
        lambda: opts.update(me=opts),
        lambda: opts.setdefault("s", {1}),
        lambda: opts.pop("v"),
        lambda: opts["l"].append({1, 2}),
        lambda: opts["l"].__setitem__(0, math.inf),
        lambda: opts["l"][1].__setitem__("k", math.nan),
        # The body handed out shares the request's nested values: read-only too.
        lambda: request.to_body()["opts"].__setitem__("v", math.nan),
    ]
    for attempt in attempts:
        with pytest.raises(TypeError, match="read-only"):
            attempt()
    assert request.to_body()["opts"] == {"v": 1, "l": [1, {"k": 2}]}
    # Still a dict and a list to read (and to compare, and for both encoders).
    assert isinstance(opts, dict) and isinstance(opts["l"], list)


def test_a_request_with_nested_extra_copies_pickles_and_evolves() -> None:
    request = VideoRequest("x", model="m", extra={"opts": {"l": [1, {"k": 2}]}})
    for twin in (pickle.loads(pickle.dumps(request)), copy.copy(request),
                 copy.deepcopy(request), attrs.evolve(request, prompt="x"),
                 VideoRequest("x", model="m", extra=request.extra)):
        assert twin == request and twin.to_body() == request.to_body()
        with pytest.raises(TypeError, match="read-only"):
            twin.extra["opts"]["l"].append(3)  # type: ignore[index]
    inner = copy.deepcopy(request.extra["opts"])  # type: ignore[index]
    assert inner == {"l": [1, {"k": 2}]}


@pytest.mark.parametrize("orjson", [False, True], ids=["stdlib-json", "orjson"])
async def test_nested_extra_arrives_as_built_on_both_encoders(
    server: EmulatorServer, orjson: bool
) -> None:
    if orjson:
        pytest.importorskip("orjson")
    request = VideoRequest("x", model="m", extra={"opts": {"v": 1.5, "l": [1, None]}})
    with pytest.raises(TypeError):
        request.extra["opts"]["v"] = math.nan  # type: ignore[index]
    try:
        assert wire.use_orjson(orjson) is orjson
        # The bytes are the standard library's own, byte for byte.
        assert wire.encode_json(request.to_body()) == (
            json.dumps(request.to_body()).encode() if not orjson
            else wire.encode_json(json.loads(json.dumps(request.to_body()))))
        async with session_for(server) as s:
            sub = await s.submit(request)
    finally:
        wire.use_orjson()
    body = server.emulator.task(sub.task_id).body
    assert dict(body["opts"]) == {"v": 1.5, "l": (1, None)}


def _bypassed(value: object) -> VideoRequest:
    # What the read-only `extra` prevents, done around it: the second line of defence.
    request = VideoRequest("x", model="m", extra={"a": 1})
    object.__setattr__(request, "extra", types.MappingProxyType({"a": value}))
    return request


def _circular() -> dict[str, Any]:
    me: dict[str, Any] = {}
    me["me"] = me
    return me


@pytest.mark.parametrize("value", [{1, 2}, _circular()], ids=["set", "circular"])
async def test_an_extra_that_cannot_be_encoded_at_submit_time_is_a_validation_error(
    server: EmulatorServer, value: object, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        with pytest.raises(ValidationError) as info:
            await s.submit(_bypassed(value))
        assert info.value.field == "request.extra"
        [outcome] = await s.submit_many([_bypassed(value)])
        assert isinstance(outcome, ValidationError) and outcome.field == "request.extra"
        async with s.stream([_bypassed(value)]) as events:
            finals = [e async for e in events if e.final]
        assert [e.kind for e in finals] == [EventKind.SUBMIT_FAILED]
        assert isinstance(finals[0].error, ValidationError)
        assert finals[0].error.field == "request.extra"
        with pytest.raises(ValidationError) as info:
            await s.run_batch([VideoRequest("y"), _bypassed(value)], out_dir=tmp_path)
        assert info.value.field == "requests[1].extra"
    assert not [r for r in server.emulator.request_log if r.route == "submit"]


# -- 3. untyped errors ----------------------------------------------------------------

def _nested(levels: int) -> list[Any]:
    top: list[Any] = []
    here = top
    for _ in range(levels - 1):
        deeper: list[Any] = []
        here.append(deeper)
        here = deeper
    return top


def test_extra_nested_too_deep_or_in_a_circle_is_refused_naming_the_place() -> None:
    VideoRequest("x", model="m", extra={"d": _nested(63)})  # 64 levels with extra itself
    for levels in (64, 3000):
        with pytest.raises(ValidationError, match="deeper than 64 levels") as info:
            VideoRequest("x", model="m", extra={"d": _nested(levels)})
        assert info.value.field.startswith("extra['d'][0][0]")
    with pytest.raises(ValidationError, match="contains itself") as info:
        VideoRequest("x", model="m", extra={"o": {"l": [_circular()]}})
    assert info.value.field == "extra['o']['l'][0]['me']"


@pytest.mark.parametrize("key", [123, b"sk-canary-bytes-key", 4.5])
def test_a_key_that_is_not_a_string_is_refused_without_echoing_it(key: object) -> None:
    with pytest.raises(ValidationError) as info:
        Session(key)  # type: ignore[arg-type]
    assert info.value.field == "api_key"
    assert "must be a string" in str(info.value)
    assert repr(key) not in str(info.value) and "canary" not in str(info.value)


async def test_timeouts_too_large_are_refused_naming_the_parameter(
    server: EmulatorServer
) -> None:
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x"))
        with pytest.raises(ValidationError, match="out of range") as info:
            await s.wait(sub, timeout=10**400)
        assert info.value.field == "timeout"
        for name in ("timeout", "task_timeout"):
            with pytest.raises(ValidationError, match="out of range") as info:
                s.watch([sub], **{name: 10**400})
            assert info.value.field == name
        with pytest.raises(ValidationError) as info:
            Session("k", rps=-(10**5000))
        assert info.value.field == "rps"
        with pytest.raises(ValidationError) as info:
            await s.wait(sub, timeout=0)
        assert info.value.field == "timeout"  # `wait` has no `task_timeout`
        # Infinity (no limit) and the largest float still go.
        assert (await s.wait(sub, timeout=math.inf)).is_terminal
        assert (await s.wait(sub, timeout=1e308)).is_terminal


async def test_one_item_or_no_iterable_where_many_go_is_refused(
    server: EmulatorServer, tmp_path: Path
) -> None:
    request = VideoRequest("x")
    async with session_for(server) as s:
        with pytest.raises(ValidationError, match=r"iterable of task ids.*got NoneType") as info:
            s.watch(None)  # type: ignore[arg-type]
        assert info.value.field == "tasks"
        for single in (request, BatchItem(request=request)):
            with pytest.raises(ValidationError, match=r"pass \[it\]") as info:
                await s.run_batch(single, out_dir=tmp_path)  # type: ignore[arg-type]
            assert info.value.field == "requests"
        with pytest.raises(ValidationError, match="got one NoneType") as info:
            await s.run_batch(None, out_dir=tmp_path)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"pass \[it\]"):
            s.stream(request)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir()) and not server.emulator.tasks


def test_the_blocking_session_refuses_them_the_same(tmp_path: Path) -> None:
    from anyio.from_thread import start_blocking_portal

    from apimart_async.sync import Session as SyncSession

    with start_blocking_portal("asyncio") as portal:
        server = EmulatorServer()
        with portal.wrap_async_context_manager(server):
            _blocking_refusals(SyncSession("k", base_url=server.base_url), tmp_path)
        assert not server.emulator.request_log


def _blocking_refusals(session: Any, tmp_path: Path) -> None:
    with session as s:
        with pytest.raises(ValidationError, match="got NoneType"):
            s.watch(None)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"pass \[it\]"):
            s.stream(VideoRequest("x"))  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"pass \[it\]"):
            s.run_batch(VideoRequest("x"), out_dir=tmp_path)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="out of range") as info:
            s.wait("task_1", timeout=10**400)
        assert info.value.field == "timeout"


# -- 4. small ones --------------------------------------------------------------------

async def test_several_none_idempotency_keys_are_each_a_new_random_key(
    server: EmulatorServer
) -> None:
    async with session_for(server) as s:
        outcomes = await s.submit_many([VideoRequest("a"), VideoRequest("b"),
                                        VideoRequest("c")], idempotency_keys=[None, "k1", None])
        with pytest.raises(ValidationError, match=r"repeats idempotency_keys\[1\]"):
            await s.submit_many([VideoRequest("a")] * 3, idempotency_keys=[None, "k", "k"])
    keys = [o.idempotency_key for o in outcomes if not isinstance(o, Exception)]
    assert len(keys) == 3 and len(set(keys)) == 3 and keys[1] == "k1"


@pytest.mark.parametrize("task_id", [".", ".."])
async def test_dot_task_ids_are_refused_before_anything_is_sent(
    server: EmulatorServer, task_id: str
) -> None:
    with pytest.raises(ValidationError) as info:
        check_task_id(task_id)
    assert info.value.field == "task_id"
    async with session_for(server) as s:
        with pytest.raises(ValidationError):
            await s.get_task(task_id)
        with pytest.raises(ValidationError):
            await s.wait(task_id)
    assert not server.emulator.request_log
    assert check_task_id("...") == "..." and check_task_id("a.b") == "a.b"


async def test_a_missing_key_file_is_a_usage_error_about_the_key_file(
    capsys: pytest.CaptureFixture[str], cli_env: None, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-key"
    status, _out, err = await cli(capsys, "status", "t", "--api-key-file", str(missing))
    assert status == 2, err
    assert "--api-key-file" in err and str(missing) in err
    assert "--out" not in err and "re-run" not in err


def test_sim_polling_with_no_failure_figures_prints_n_a() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/sim_polling.py", "--tasks", "10", "--seeds", "1",
         "--scenarios", "linear"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| median |" in done.stdout and "n/a" in done.stdout
