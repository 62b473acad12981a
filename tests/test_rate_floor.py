"""A batch against the emulator's rate limit, on a stepped clock: the pace is learned.

The emulator's token bucket runs on the same `SteppedClock` as the session
(`rate_limit_clock`), so pacing waits and the server's refills are exact and nothing
sleeps: time moves to the next send slot each step. Retry delays are zero (test
mode), so a 429'd submission goes again in the next slot.
"""

from __future__ import annotations

import anyio
import pytest

from apimart_async import RateLimitError, Session, Submission, ValidationError, VideoRequest
from apimart_async.testing import EmulatorConfig, EmulatorServer, Fault, SteppedClock

from .conftest import KEY

N = 60


async def run(limit: float, size: int, *, n: int = N, storm: tuple[int, float] | None = None,
              **session: object) -> tuple[float, int, int]:
    """Submit `n` requests; return (makespan on the clock, 429s the server sent, ok).

    `storm` (after, seconds): once `after` submissions were accepted, the API host
    refuses everything for `seconds` (`Fault.storm`), its bucket refilling meanwhile.
    """
    clock = SteppedClock()
    config = EmulatorConfig(rate_limit=limit, burst=size, rate_limit_clock=True)
    outcomes: list[object] = []
    async with EmulatorServer(config, clock=clock) as server:
        session_ = Session(KEY, base_url=server.base_url, clock=clock, max_concurrency=32,
                           **session)  # type: ignore[arg-type]
        async with session_ as s, anyio.create_task_group() as tg:
            async def go() -> None:
                outcomes.extend(await s.submit_many(
                    [VideoRequest(f"clip {i}") for i in range(n)]))

            tg.start_soon(go)
            for _ in range(40 * n):
                if outcomes:
                    break
                if storm is not None and server.stats.submissions >= storm[0]:
                    server.emulator.inject("submit", Fault.storm(storm[1]))
                    storm = None
                await clock.step()
        throttled = server.stats.rate_limited
    assert all(isinstance(o, (Submission, RateLimitError)) for o in outcomes), outcomes
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


@pytest.mark.anyio
@pytest.mark.parametrize(("rate", "burst", "after"), [(20, 10, 25), (5, 30, 35)])
async def test_after_a_storm_of_429s_a_learned_pace_comes_back_within_seconds(
    rate: float, burst: int, after: int
) -> None:
    # 3 s of 429s to everything, mid-batch, then the bucket as before. The storm's
    # 429s read as a token bucket's had dragged the learned pace down to near the
    # 0.2/s floor, where it crept back at the square of a tiny uncertainty: 100
    # submissions took 16.7 s instead of 4.6 (and 5 were lost: every 429'd retry went
    # in the next paced slot, inside the storm; here, 5 of 60). Now the session backs off while it
    # lasts and learns afresh after: about the storm's length added, nothing lost.
    # (At 5/s the storm comes while the rate is still being found, and the senders
    # asleep until slots of the dragged-down pace must claim again when it ends:
    # 17.0 s without that.)
    makespan, throttled, ok = await run(rate, burst, n=N, storm=(after, 3.0))
    floor = (N - burst) / rate
    assert ok == N
    assert makespan <= floor + 3.0 + 1.5
    assert throttled <= 30


@pytest.mark.anyio
@pytest.mark.parametrize(("after", "seconds"), [(0, 3.0), (5, 2.0)])
async def test_after_an_early_storm_a_learned_pace_comes_back_within_seconds(
    after: int, seconds: float
) -> None:
    # A storm before the first submission, or after 5, comes before the rate is known:
    # its 429s were read as a slow bucket's, and the pace crept up from the floor (100
    # at 20/s, 3 s before the first: 49.6 s; 60, 2 s after 5: 72.5 s, on the real
    # clock). Now the first accept after it probes, and learns afresh: the storm's
    # length and a few seconds added (the gaps grown during it), nothing lost.
    makespan, throttled, ok = await run(20, 10, n=N, storm=(after, seconds))
    floor = (N - 10) / 20
    assert ok == N
    assert makespan <= floor + seconds + 4.5
    assert throttled <= 30


@pytest.mark.anyio
@pytest.mark.parametrize("seconds", [1.0, 2.0])
async def test_a_storm_at_a_given_rate_loses_no_item(seconds: float) -> None:
    # With `rps=` a 429 was only jitter: each retry went in its next paced slot, 50 ms
    # later, so a request's five attempts burned out within the storm (3 and 7 of 20
    # lost). Now a second 429 in a row pauses the whole session, doubling: a storm
    # costs a 429 per doubling, each on another request.
    makespan, throttled, ok = await run(20, 10, n=20, storm=(5, seconds), rps=20, burst=10)
    assert ok == 20
    assert throttled <= 3 + 3
    assert makespan <= (20 - 10) / 20 + seconds + 2.0


def test_a_burst_needs_a_rate_and_is_a_whole_number() -> None:
    with pytest.raises(ValidationError, match=r"burst.*needs rps"):
        Session(KEY, burst=10)
    with pytest.raises(ValidationError, match="burst"):
        Session(KEY, rps=5, burst=0)
    session = Session(KEY, rps=5, burst=10)
    assert (session.rps, session.burst) == (5, 10)
