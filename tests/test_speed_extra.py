"""The `speed` extra: the CLI on uvloop when installed (``--loop``); the plain install
without it. (orjson decoding, on and off, is pinned in tests/test_fast_path.py.)"""

from __future__ import annotations

import json
import logging
import math
import sys

import pytest

from apimart_async import Session, VideoRequest
from apimart_async._cli.main import loop_options
from apimart_async._core import wire
from apimart_async.testing import EmulatorServer

from .conftest import KEY, cli, session_for

pytestmark = pytest.mark.anyio


def test_loop_choice_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a plain install
    assert loop_options("auto") == {}
    assert loop_options("asyncio") == {}
    assert loop_options("uvloop") is None


def test_loop_choice_with_uvloop() -> None:
    pytest.importorskip("uvloop")
    assert loop_options("auto") == {"use_uvloop": True}
    assert loop_options("uvloop") == {"use_uvloop": True}
    assert loop_options("asyncio") == {}


@pytest.mark.parametrize(("choice", "loop"), [
    ("uvloop", "uvloop.Loop"), ("auto", "uvloop.Loop"), ("asyncio", "asyncio"),
])
async def test_cli_runs_on_the_loop_asked_for(
    server: EmulatorServer, capsys: pytest.CaptureFixture[str], cli_env: None,
    caplog: pytest.LogCaptureFixture, choice: str, loop: str,
) -> None:
    pytest.importorskip("uvloop")
    async with session_for(server) as s:
        sub = await s.submit(VideoRequest("x"))
    caplog.set_level(logging.DEBUG, logger="apimart_async")
    status, out, err = await cli(capsys, "status", sub.task_id, "--base-url", server.base_url,
                                 "--loop", choice)
    assert status == 0, err
    assert out.startswith(sub.task_id)
    used = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event loop")]
    assert len(used) == 1 and used[0].startswith(f"event loop: {loop}"), used


async def test_cli_refuses_uvloop_when_not_installed(
    capsys: pytest.CaptureFixture[str], cli_env: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(SystemExit) as info:
        await cli(capsys, "status", "task_1", "--loop", "uvloop")
    assert info.value.code == 2
    assert "uvloop is not installed" in capsys.readouterr().err


async def test_plain_install_decodes_with_the_standard_library(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without orjson, `use_orjson` falls back and the session works the same.
    monkeypatch.setitem(sys.modules, "orjson", None)
    try:
        assert wire.use_orjson() is False
        async with Session(KEY, base_url=server.base_url, clock=server.emulator.clock) as s:
            sub = await s.submit(VideoRequest("x"))
            task = await s.wait(sub, timeout=60)
        assert task.is_terminal
    finally:
        monkeypatch.delitem(sys.modules, "orjson")
        wire.use_orjson()


@pytest.mark.parametrize("orjson", [False, True], ids=["stdlib-json", "orjson"])
async def test_a_submission_arrives_as_the_same_json_on_both_encoders(
    server: EmulatorServer, orjson: bool
) -> None:
    # orjson writes UTF-8 where json.dumps escapes, and refuses integers past 64 bits
    # (those go to the standard encoder): the server reads the same value either way.
    if orjson:
        pytest.importorskip("orjson")
    extra = {"seed": 2**70, "tags": ["café", "🎬"], "nested": {"k": [1, 2.5, None, True]}}
    request = VideoRequest("a café at dusk 🎬", extra=extra)
    try:
        assert wire.use_orjson(orjson) is orjson
        async with session_for(server) as s:
            sub = await s.submit(request)
            plain = await s.submit(VideoRequest("x", extra={"resolution": "720p"}))
    finally:
        wire.use_orjson()
    body = server.emulator.task(sub.task_id).body  # as the emulator keeps it: frozen
    assert body["prompt"] == "a café at dusk 🎬" and body["seed"] == 2**70
    assert body["tags"] == ("café", "🎬")
    assert dict(body["nested"]) == {"k": (1, 2.5, None, True)}
    assert dict(server.emulator.task(plain.task_id).body)["resolution"] == "720p"
    assert wire.encode_json({"n": 2**70}) == b'{"n": 1180591620717411303424}'


def test_a_request_keeps_its_own_copy_of_extra() -> None:
    # Changing the caller's nested dict after the request was built (to NaN, a datetime)
    # cannot reach the request: it would make the body invalid JSON on one encoder and
    # a silently different value on the other.
    import datetime

    inner: dict[str, object] = {"v": 1.5, "tags": ["a"]}
    request = VideoRequest("x", extra={"inner": inner})
    inner["v"] = math.nan
    inner["when"] = datetime.datetime(2026, 1, 1)
    inner["tags"].append("b")  # type: ignore[attr-defined]
    assert request.to_body()["inner"] == {"v": 1.5, "tags": ["a"]}
    for orjson in (False, True):
        wire.use_orjson(orjson)
        assert json.loads(wire.encode_json(request.to_body()))["inner"] == {"v": 1.5, "tags": ["a"]}
    wire.use_orjson()
