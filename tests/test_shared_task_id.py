"""A task's answers carry the id the session already holds, not an equal copy (#14).

A caller that keeps each final update's `task_id` (a set of ended tasks, a list of
finals) next to its Submissions kept a second 80-byte string per task whenever the
final answer took the converter's path: a failed task's, and, with orjson, any answer
with a field that is not modelled (the emulator's ``usage``). At 100,000 tasks that was
7.6 MB of the peak RSS of ``benchmarks/bench_watch_scale.py --case worst``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from apimart_async import Submission, VideoRequest
from apimart_async._core import wire
from apimart_async._core.wire import parse_task
from apimart_async.testing import EmulatorConfig

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio

COMPLETED: dict[str, Any] = {
    "id": "task_0123456789abcdef0123456789", "status": "completed", "progress": 100,
    "created": 1763174000, "completed": 1763174019, "actual_time": 19,
    "result": {"videos": [{"url": ["https://files.example/v.mp4"], "expires_at": 1763260419}]},
    "model": "sora-2", "usage": {"credits": 1, "cost": 1.0},
}
FAILED: dict[str, Any] = {
    "id": "task_0123456789abcdef0123456789", "status": "failed", "progress": 0,
    "error": {"code": 500, "message": "upstream error"},
}
PROCESSING: dict[str, Any] = {
    "id": "task_0123456789abcdef0123456789", "status": "processing", "progress": 40,
}


@pytest.fixture(params=[False, True], ids=["stdlib", "orjson"])
def decoder(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.param and not wire.use_orjson(True):
        wire.use_orjson()
        pytest.skip("orjson is not installed")
    wire.use_orjson(request.param)
    try:
        yield
    finally:
        wire.use_orjson()


@pytest.mark.usefixtures("decoder")
@pytest.mark.parametrize("answer", [PROCESSING, COMPLETED, FAILED],
                         ids=["processing", "completed-with-usage", "failed"])
def test_the_parsed_task_holds_the_id_asked_for(answer: dict[str, Any]) -> None:
    asked = "".join(["task_0123456789abcdef", "0123456789"])  # a string of its own
    body = json.dumps({"code": 200, "data": answer}).encode()
    task = parse_task(200, body, expected_id=asked)
    assert task.id == answer["id"]
    assert task.id is asked


async def test_every_update_of_a_watch_carries_the_submissions_id(
        make_server: MakeServer) -> None:
    # Half the tasks fail: both final answers (completed with `usage`, failed with an
    # error) go through the converter's path under the default decoder.
    server = await make_server(EmulatorConfig(fail_rate=0.5, seed=7))
    async with session_for(server) as session:
        outcomes = await session.submit_many([VideoRequest(f"clip {i}") for i in range(8)])
        subs = {s.task_id: s for s in outcomes if isinstance(s, Submission)}
        assert len(subs) == 8
        statuses = set()
        async for update in session.watch(list(subs.values())):
            held = subs[update.task_id].task_id
            assert update.task_id is held
            assert update.task is None or update.task.id is held
            if update.final:
                statuses.add(update.status.value)
    assert statuses == {"completed", "failed"}
