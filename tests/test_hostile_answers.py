"""Answers are bounded and total (#12 item 2): a huge or gzip-bombed task answer, an
answer about another task, a null status, one task id handed to two submissions. Each
fault is the emulator's (`Fault.huge_answer`, `gzip`, `answer_id`, `task_status`,
`repeat_id`), over real sockets; each test has a timeout so a hang is a failure.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import anyio
import pytest

from apimart_async import DecodeError, RetryPolicy, Session, TaskStatus, VideoRequest
from apimart_async.testing import EmulatorServer, Fault

from .conftest import session_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

ONCE = RetryPolicy(max_attempts=1)
HANG = 15.0


async def submitted(s: Session, prompt: str = "a fox") -> str:
    return (await s.submit(VideoRequest(prompt))).task_id


async def refused_at_the_cap(s: Session, task_id: str, match: str) -> int:
    """`get_task` raises the cap's `DecodeError` (within HANG): the peak traced bytes."""
    tracemalloc.start()
    try:
        with anyio.fail_after(HANG), pytest.raises(DecodeError, match=match):
            await s.get_task(task_id)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_100_mb_answer_is_refused_at_the_cap_without_reading_it(
    server: EmulatorServer,
) -> None:
    async with session_for(server, retry=ONCE) as s:
        task_id = await submitted(s)
        server.emulator.inject("task", Fault.huge_answer(100 << 20))
        peak = await refused_at_the_cap(s, task_id, "1048576-byte cap")
    # The whole answer would be 100 MB in one bytes object; the cap keeps it to ~1 MB.
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


async def test_a_gzip_bomb_answer_is_capped_after_inflation(server: EmulatorServer) -> None:
    async with session_for(server, retry=ONCE) as s:
        task_id = await submitted(s)
        server.emulator.inject("task", Fault.gzip(bomb=True))
        peak = await refused_at_the_cap(s, task_id, "cap")
    # ~1 MB on the wire inflates to 1 GiB: only the cap's worth is ever held.
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


async def test_a_stated_length_over_the_cap_is_refused_unread(server: EmulatorServer) -> None:
    # The usual answer states its length: one over the cap is refused before a byte of
    # its body is read (not read to the cap, nor whole).
    async with session_for(server, retry=ONCE) as s:
        task_id = await submitted(s)
        server.emulator.inject("task", Fault.huge_answer(100 << 20, framed=True))
        peak = await refused_at_the_cap(s, task_id, "1048576-byte cap")
    assert peak < 2 << 20, f"peak {peak / 2**20:.1f} MiB"


async def test_a_gzip_bomb_under_the_cap_on_the_wire_is_capped_after_inflation(
    server: EmulatorServer,
) -> None:
    # ~270 KB on the wire, stated, under the cap: only what it inflates to is counted.
    async with session_for(server, retry=ONCE) as s:
        task_id = await submitted(s)
        server.emulator.inject("task", Fault.gzip(bomb=True, inflated=256 << 20))
        peak = await refused_at_the_cap(s, task_id, "cap")
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


async def test_a_small_gzipped_answer_is_read(server: EmulatorServer) -> None:
    async with session_for(server, retry=ONCE) as s:
        task_id = await submitted(s)
        server.emulator.inject("task", Fault.gzip())
        task = await s.get_task(task_id)
    assert task.id == task_id


async def test_an_answer_about_another_task_is_a_decode_error_naming_both(
    server: EmulatorServer,
) -> None:
    async with session_for(server, retry=ONCE) as s:
        task_id = await submitted(s)
        server.emulator.inject("task", Fault.answer_id("task_someone_else"))
        with pytest.raises(DecodeError) as caught:
            await s.get_task(task_id)
    assert "task_someone_else" in str(caught.value) and task_id in str(caught.value)


async def test_a_wrong_id_once_is_retried_not_taken_as_this_tasks_update(
    server: EmulatorServer,
) -> None:
    async with session_for(server) as s:
        task_id = await submitted(s)
        server.emulator.complete_all()
        server.emulator.inject("task", Fault.answer_id("task_someone_else"))
        task = await s.get_task(task_id)
    assert task.id == task_id and task.status is TaskStatus.COMPLETED
    assert server.stats.requests["task"] == 2


@pytest.mark.parametrize("status", [None, "", "  "])
async def test_a_null_or_empty_status_is_a_decode_error(
    server: EmulatorServer, status: str | None
) -> None:
    async with session_for(server, retry=ONCE) as s:
        task_id = await submitted(s)
        server.emulator.inject("task", Fault.task_status(status))
        with pytest.raises(DecodeError, match="status"):
            await s.get_task(task_id)


async def test_one_task_id_for_two_submissions_both_end_in_a_stream(
    server: EmulatorServer,
) -> None:
    async with session_for(server) as s:
        await submitted(s, "a heron")
        server.emulator.inject("submit", Fault.repeat_id(), Fault.repeat_id())
        finals = {}
        with anyio.fail_after(HANG):
            async with s.stream([VideoRequest("a fox"), VideoRequest("an owl")]) as events:
                async for event in events:
                    if event.final:
                        finals[event.index] = event
    assert sorted(finals) == [0, 1]
    assert finals[0].task_id == finals[1].task_id


async def test_one_task_id_for_two_batch_items_both_end_never_hang(
    server: EmulatorServer, tmp_path: Path
) -> None:
    async with session_for(server) as s:
        await submitted(s, "a heron")
        server.emulator.inject("submit", Fault.repeat_id(), Fault.repeat_id())
        with anyio.fail_after(HANG):
            report = await s.run_batch(
                [VideoRequest("a fox"), VideoRequest("an owl")], out_dir=tmp_path / "out"
            )
    states = [item.state.value for item in report.items]
    assert len(states) == 2 and all(st in ("downloaded", "failed") for st in states), states


def test_the_new_fault_options_are_checked_and_described() -> None:
    assert Fault.huge_answer(70000, framed=True).describe() == (
        "Fault.huge_answer(70000, framed=True)")
    assert Fault.huge_answer(70000).describe() == "Fault.huge_answer(70000)"
    assert Fault.gzip(bomb=True).describe() == "Fault.gzip(bomb=True)"
    assert Fault.gzip(bomb=True, inflated=256 << 20).describe() == (
        f"Fault.gzip(bomb=True, inflated={256 << 20})")
    with pytest.raises(ValueError, match="inflated must be whole MiB"):
        Fault.gzip(bomb=True, inflated=(1 << 20) + 1)
    for bad in (lambda: Fault.huge_answer(0), lambda: Fault.huge_answer(10),
                lambda: Fault.huge_answer(1 << 20, framed="no"),  # type: ignore[arg-type]
                lambda: Fault.gzip(inflated=256 << 20),  # no bomb: it would do nothing
                lambda: Fault.gzip(bomb="no"),  # type: ignore[arg-type]
                lambda: Fault.gzip(bomb=True, inflated=1 << 40)):
        with pytest.raises(ValueError, match="Fault"):
            bad()
