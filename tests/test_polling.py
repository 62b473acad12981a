"""The adaptive poll policy, driven by synthetic observations (pure)."""

from __future__ import annotations

import itertools

import pytest

from apimart_async import PollPolicy, Task, TaskStatus, ValidationError
from apimart_async._core.polling import PollState, next_delay, observe, predict_completion

POLICY = PollPolicy(first_delay=2.0, min_interval=0.25, max_interval=30.0, margin=0.0)


def task(progress: int, *, status: TaskStatus = TaskStatus.PROCESSING,
         estimate: float | None = None) -> Task:
    return Task(id="t", status=status, progress=progress, estimated_time=estimate)


def simulate(duration: float, estimate: float, *, queue: float = 0.0, progress: bool = True,
             policy: PollPolicy = POLICY) -> tuple[int, float]:
    """Poll a linear-progress task; return (polls, detection lag)."""
    state = PollState(started_at=0.0)
    now = 0.0
    while True:
        now += next_delay(policy, state, now)
        if now >= duration:
            return state.polls + 1, now - duration
        if now < queue or not progress:
            pct = 0
        else:
            pct = min(99, int(100 * (now - queue) / (duration - queue)))
        observe(state, now, task(pct, estimate=estimate,
                                 status=TaskStatus.PENDING if now < queue else TaskStatus.PROCESSING))
        assert state.polls < 100, "runaway polling"


def test_first_poll_uses_first_delay() -> None:
    assert next_delay(POLICY, PollState(started_at=0.0), 0.0) == 2.0


def test_two_readings_give_a_confident_prediction() -> None:
    state = PollState(started_at=0.0)
    observe(state, 2.0, task(20, estimate=60))
    observe(state, 4.0, task(40, estimate=60))
    when, confident = predict_completion(state)  # type: ignore[misc]
    assert confident and when == pytest.approx(10.0)
    assert next_delay(POLICY, state, 4.0) == pytest.approx(6.0)


def test_one_reading_is_half_trusted() -> None:
    state = PollState(started_at=0.0)
    observe(state, 2.0, task(10, estimate=60))
    when, confident = predict_completion(state)  # type: ignore[misc]
    assert not confident and when == pytest.approx(20.0)
    assert next_delay(POLICY, state, 2.0) == pytest.approx(9.0)  # half-way


@pytest.mark.parametrize(("duration", "estimate"), [(19, 60), (6, 6), (4, 8), (8, 4), (120, 30)])
def test_linear_tasks_cost_few_polls_and_little_lag(duration: float, estimate: float) -> None:
    polls, lag = simulate(duration, estimate, queue=0.2)
    assert polls <= 5
    assert lag <= max(0.5, 0.05 * duration)


def test_estimate_far_too_long_is_caught_by_progress() -> None:
    # The documented example: estimated 60 s, done in 19 s.
    polls, lag = simulate(19, 60)
    assert lag < 1.0 and polls <= 4


def test_estimate_far_too_short_without_progress_backs_off_bounded() -> None:
    state = PollState(started_at=0.0)
    now, delays = 0.0, []
    for _ in range(12):
        delay = next_delay(POLICY, state, now)
        delays.append(delay)
        now += delay
        observe(state, now, task(0, estimate=5))
    # Up to the estimate, then exponential backoff that never exceeds max_interval.
    tail = delays[3:]
    assert all(b >= a for a, b in itertools.pairwise(tail))
    assert max(delays) == POLICY.max_interval
    assert tail[0] <= 1.0


def test_no_signal_at_all_backs_off() -> None:
    polls, lag = simulate(100, estimate=0, progress=False)
    assert polls <= 12 and lag <= POLICY.max_interval


def test_policy_bounds_are_validated() -> None:
    with pytest.raises(ValidationError, match="min_interval"):
        PollPolicy(min_interval=10, max_interval=5)
    with pytest.raises(ValidationError, match="first_delay"):
        PollPolicy(first_delay=0)
