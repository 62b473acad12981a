"""The emulator's seed (fresh per instance unless set), its clock on every answer, and
injected 429s counted as 429s on both sides."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from apimart_async import VideoRequest
from apimart_async.testing import Emulator, EmulatorConfig, Fault

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio


def _first_tasks(config: EmulatorConfig, n: int = 3) -> list[tuple[str, float, str]]:
    emulator = Emulator(config)
    out = []
    for i in range(n):
        task_id, _ = emulator.accept({"model": "sora-2", "prompt": f"p{i}"}, None)  # type: ignore[misc]
        plan = emulator.task(task_id).plan
        out.append((task_id, plan.duration, plan.outcome))
    return out


async def test_unseeded_emulators_differ_and_their_seed_replays() -> None:
    a, b = Emulator(), Emulator()
    assert a.seed != b.seed
    assert _first_tasks(EmulatorConfig(seed=a.seed)) != _first_tasks(EmulatorConfig(seed=b.seed))
    # Unseeded, two instances do not share task ids (nor plans)...
    assert set(_first_tasks(EmulatorConfig())).isdisjoint(_first_tasks(EmulatorConfig()))
    # ...and an explicit seed replays exactly.
    assert _first_tasks(EmulatorConfig(seed=a.seed)) == _first_tasks(EmulatorConfig(seed=a.seed))
    assert a.config.seed == a.seed


async def test_first_task_outcome_is_not_fixed_at_a_low_fail_rate() -> None:
    # It used to be: seed 0 made the first task fail at fail_rate=0.1, every time.
    outcomes = {_first_tasks(EmulatorConfig(fail_rate=0.1), n=1)[0][2] for _ in range(40)}
    assert "completed" in outcomes


async def test_fault_draws_follow_the_seed() -> None:
    def draws(seed: int | None) -> list[str | None]:
        emulator = Emulator(EmulatorConfig(seed=seed, poll_faults=0.5))
        return [f.describe() if (f := emulator.next_fault("task")) else None for _ in range(40)]

    assert draws(11) == draws(11)
    assert draws(None) != draws(None)


async def test_every_answer_carries_the_emulator_time(make_server: MakeServer) -> None:
    server = await make_server()
    clock = server.emulator.clock
    async with aiohttp.ClientSession() as http:
        before = clock.now()
        headers = {"Authorization": "Bearer sk-any-key-0123456789"}
        async with http.get(f"{server.base_url}/v1/tasks/task_nope", headers=headers) as resp:
            assert resp.status == 404
            stamped = float(resp.headers["X-Emulator-Time"])
        assert before <= stamped <= clock.now()
        server.emulator.inject("submit", Fault.http(503))
        async with http.post(f"{server.base_url}/v1/videos/generations", headers=headers,
                             json={"model": "sora-2", "prompt": "p"}) as resp:
            assert resp.status == 503 and "X-Emulator-Time" in resp.headers
        async with http.get(f"{server.file_base_url}/files/nothing.mp4") as resp:
            assert resp.status == 404 and "X-Emulator-Time" in resp.headers
        async with http.get(f"{server.base_url}/_emulator/clock") as resp:
            body = await resp.json()
        assert body["speed"] == clock.speed
        assert before <= body["now"] <= clock.now()
        assert abs(body["wall"] - clock.wall()) < clock.speed  # within a real second


async def test_injected_429s_are_counted_by_session_and_emulator(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = await make_server()
    emulator = server.emulator
    emulator.inject("submit", Fault.http(429), Fault.body_status(429))
    async with session_for(server) as session:
        task = await session.wait(await session.submit(VideoRequest("fox")))
        assert session.stats.rate_limited == 2
        emulator.inject("download", Fault.http(429))
        await session.download(task, tmp_path)
        assert session.stats.rate_limited == 3  # the file host's 429 too
    assert server.stats.rate_limited == 3


async def test_standalone_emulator_seed_is_fresh_unless_given() -> None:
    from apimart_async.testing import emulator_process

    async def first_id(*flags: str) -> str:
        headers = {"Authorization": "Bearer sk-any-key-0123456789"}
        async with emulator_process(*flags) as url, aiohttp.ClientSession() as http, \
                http.post(f"{url}/v1/videos/generations", headers=headers,
                          json={"model": "sora-2", "prompt": "p"}) as resp:
            body = await resp.json()
        return str(body["data"][0]["task_id"])

    seeded = await first_id("--seed", "9")
    assert await first_id("--seed", "9") == seeded
    assert await first_id() != await first_id()
