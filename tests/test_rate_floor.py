"""A batch against the emulator's rate limit, on a stepped clock: the pace is learned.

The emulator's token bucket runs on the same `SteppedClock` as the session
(`rate_limit_clock`), so pacing waits and the server's refills are exact and nothing
sleeps: time moves to the next send slot each step. Retry delays are zero (test
mode), so a 429'd submission goes again in the next slot.
"""

from __future__ import annotations

import anyio
import pytest

from apimart_async import Session, Submission, ValidationError, VideoRequest
from apimart_async.testing import EmulatorConfig, EmulatorServer, SteppedClock

from .conftest import KEY

N = 60


async def run(limit: float, size: int, **session: object) -> tuple[float, int, int]:
    """Submit N requests; return (makespan on the clock, 429s the server sent, ok)."""
    clock = SteppedClock()
    config = EmulatorConfig(rate_limit=limit, burst=size, rate_limit_clock=True)
    outcomes: list[object] = []
    async with EmulatorServer(config, clock=clock) as server:
        session_ = Session(KEY, base_url=server.base_url, clock=clock, max_concurrency=32,
                           **session)  # type: ignore[arg-type]
        async with session_ as s, anyio.create_task_group() as tg:
            async def go() -> None:
                outcomes.extend(await s.submit_many(
                    [VideoRequest(f"clip {i}") for i in range(N)]))

            tg.start_soon(go)
            for _ in range(20 * N):
                if outcomes:
                    break
                await clock.step()
        throttled = server.stats.rate_limited
    return clock.now(), throttled, sum(isinstance(o, Submission) for o in outcomes)


@pytest.mark.anyio
@pytest.mark.parametrize(("rate", "burst"), [(20, 10), (5, 30)])
async def test_a_batch_learns_an_unstated_limit_and_runs_near_the_floor(
    rate: float, burst: int
) -> None:
    makespan, throttled, ok = await run(rate, burst)
    floor = (N - burst) / rate
    assert ok == N
    assert 1 <= throttled <= 12  # learning costs a few, not one per coroutine
    assert floor <= makespan <= 1.08 * floor


@pytest.mark.anyio
async def test_a_given_rate_and_burst_meet_no_429_and_reach_the_floor() -> None:
    makespan, throttled, ok = await run(20, 10, rps=20, burst=10)
    floor = (N - 10) / 20
    assert (ok, throttled) == (N, 0)
    # One token of the burst is kept spare (the network's jitter), and the pace is a
    # hair (0.5 %) under the rate: over 300 requests that is within 1.01x the floor.
    assert floor <= makespan <= 1.01 * (floor + 1 / 20)


def test_a_burst_needs_a_rate_and_is_a_whole_number() -> None:
    with pytest.raises(ValidationError, match=r"burst.*needs rps"):
        Session(KEY, burst=10)
    with pytest.raises(ValidationError, match="burst"):
        Session(KEY, rps=5, burst=0)
    session = Session(KEY, rps=5, burst=10)
    assert (session.rps, session.burst) == (5, 10)
