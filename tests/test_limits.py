"""`Limits` and `AIMDRate` as pure objects: exact expectations on an injected clock.

Nothing here sleeps: `Limits.claim` says when a slot may go, and the clock is a
number the test moves.
"""

from __future__ import annotations

import pytest

from apimart_async._core.aimd import AIMDRate
from apimart_async._io.limits import Limits


class FakeClock:
    """A stepped clock: time moves only when the test moves it; sleeping steps it."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds

    def delay_length(self, seconds: float) -> float:
        return seconds


# -- AIMDRate ------------------------------------------------------------------------------

def test_a_429_multiplies_the_rate_by_decrease() -> None:
    aimd = AIMDRate(ceiling=10.0)
    assert (aimd.rate, aimd.epoch) == (10.0, 0)
    aimd.on_throttled(0, now=0.0)
    assert aimd.rate == pytest.approx(7.0)
    assert aimd.epoch == 1


def test_a_burst_of_429s_costs_one_decrease() -> None:
    aimd = AIMDRate(ceiling=10.0)
    # Five requests paced under epoch 0 all meet a 429: one decrease, not five.
    for _ in range(5):
        aimd.on_throttled(0, now=0.0)
    assert aimd.rate == pytest.approx(7.0)
    assert aimd.epoch == 1
    # A request paced at the new rate that still meets a 429 decreases it again.
    aimd.on_throttled(1, now=0.5)
    assert aimd.rate == pytest.approx(4.9)
    assert aimd.epoch == 2


def test_the_rate_never_falls_below_the_floor() -> None:
    aimd = AIMDRate(ceiling=1.0, floor=0.5)
    for epoch in range(10):
        aimd.on_throttled(epoch, now=float(epoch))
    assert aimd.rate == pytest.approx(0.5)


def test_successes_recover_fast_then_slowly_up_to_the_ceiling() -> None:
    aimd = AIMDRate(ceiling=10.0)
    aimd.on_throttled(0, now=0.0)  # 10 -> 7
    # Below 85 % of where the 429 was met: fast, 30 % of the rate per second.
    aimd.on_success(1.0)
    assert aimd.rate == pytest.approx(7.0 + 0.3 * 7.0)  # 9.1
    # Past 85 % (8.5): slow, 3 % per second.
    aimd.on_success(1.0)
    assert aimd.rate == pytest.approx(9.1 + 0.03 * 9.1)
    for _ in range(100):
        aimd.on_success(1.0)
    assert aimd.rate == 10.0  # never above the ceiling


def test_recovery_is_proportional_to_the_time_since_the_last_success() -> None:
    aimd = AIMDRate(ceiling=10.0)
    aimd.on_throttled(0, now=0.0)
    aimd.on_success(0.5)
    assert aimd.rate == pytest.approx(7.0 + 0.3 * 7.0 * 0.5)


def test_without_a_ceiling_the_first_429_starts_from_the_measured_rate() -> None:
    aimd = AIMDRate()
    for i in range(20):
        aimd.observe_start(i * 0.05)  # 20 requests in one second
    aimd.on_success(1.0)
    assert aimd.rate is None  # no limit known yet: nothing to recover
    aimd.on_throttled(0, now=1.0)
    assert aimd.measured(1.0) == pytest.approx(20.0)
    assert aimd.rate == pytest.approx(14.0)
    aimd.on_success(1.0)
    assert aimd.rate == pytest.approx(14.0 + 0.3 * 14.0)


def test_a_short_burst_does_not_read_as_thousands_per_second() -> None:
    aimd = AIMDRate()
    for _ in range(10):
        aimd.observe_start(5.0)
    # Ten starts at one instant count over a quarter window, not over zero seconds.
    assert aimd.measured(5.0) == pytest.approx(40.0)


# -- Limits --------------------------------------------------------------------------------

def test_slots_are_spaced_at_the_rate() -> None:
    clock = FakeClock(100.0)
    limits = Limits(max_concurrency=4, rps=10.0, clock=clock)
    starts = [limits.claim()[0] for _ in range(3)]
    assert starts == pytest.approx([100.0, 100.1, 100.2])


def test_retry_after_pauses_every_sender_until_it_passes() -> None:
    clock = FakeClock(100.0)
    limits = Limits(max_concurrency=4, rps=10.0, clock=clock)
    _, epoch = limits.claim()
    limits.throttled(epoch, retry_after=5.0)
    start, new_epoch = limits.claim()
    assert start == pytest.approx(105.0)
    assert new_epoch == epoch + 1
    # The next one is spaced at the decreased rate (7/s) after the pause.
    assert limits.claim()[0] == pytest.approx(105.0 + 1 / 7.0)
    # A shorter hint later does not cut the pause short.
    clock.t = 101.0
    limits.throttled(new_epoch, retry_after=1.0)
    assert limits.claim()[0] >= 105.0


@pytest.mark.anyio
async def test_retry_after_pauses_an_unpaced_session_too() -> None:
    # async only because the semaphore in try_acquire wants an event loop
    clock = FakeClock(100.0)
    limits = Limits(max_concurrency=4, clock=clock)
    epoch = limits.try_acquire()
    assert epoch == 0  # no rate known: a free slot goes at once
    limits.release()
    limits.throttled(epoch, retry_after=3.0)
    assert limits.try_acquire() is None  # must wait now
    assert limits.claim()[0] == pytest.approx(103.0)


def test_no_hint_means_no_pause_only_the_new_spacing() -> None:
    clock = FakeClock(100.0)
    limits = Limits(max_concurrency=4, rps=10.0, clock=clock)
    for _ in range(5):
        limits.claim()  # slots claimed up to 100.4 at the old rate
    limits.throttled(0, retry_after=None)
    # Slots claimed at the old rate are re-claimed one new interval from now.
    assert limits.claim()[0] == pytest.approx(100.0 + 1 / 7.0)


def test_successes_recover_the_rate_by_elapsed_clock_time() -> None:
    clock = FakeClock(100.0)
    limits = Limits(max_concurrency=4, rps=10.0, clock=clock)
    limits.throttled(0, retry_after=None)
    assert limits.rate.rate == pytest.approx(7.0)
    clock.t = 101.0  # one second after the Limits was made
    limits.succeeded()
    assert limits.rate.rate == pytest.approx(9.1)
