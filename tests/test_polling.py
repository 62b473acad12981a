"""The adaptive poll policy, driven by synthetic observations (pure).

Scenario tests poll tasks drawn from the emulator's timing profiles (the same pure
progress model the emulator serves) and compare with a fixed 1-s loop on the same tasks.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random

import pytest

from apimart_async import PollPolicy, Task, TaskStatus, ValidationError
from apimart_async._core.polling import (
    ModelStats,
    PollState,
    backoff,
    next_delay,
    observe,
    predict_completion,
)
from apimart_async.testing import PROFILES
from apimart_async.testing._profiles import progress_at

POLICY = PollPolicy()
LATENCY = 0.02


def task(progress: int, *, status: TaskStatus = TaskStatus.PROCESSING,
         estimate: float | None = None) -> Task:
    return Task(id="t", status=status, progress=progress, estimated_time=estimate)


def answer(plan: dict[str, object], t: float) -> Task:
    """What the emulator answers for a task with `plan`, `t` seconds after submission."""
    duration, queue = float(plan["duration"]), float(plan["queue_time"])  # type: ignore[arg-type]
    estimate = max(1, round(float(plan["estimated_time"])))  # type: ignore[arg-type]
    if t >= duration:
        status = TaskStatus.COMPLETED if plan["outcome"] == "completed" else TaskStatus.FAILED
        return task(100 if status is TaskStatus.COMPLETED else 0, status=status,
                    estimate=estimate)
    if t < queue:
        return task(0, status=TaskStatus.PENDING, estimate=estimate)
    fraction = (t - queue) / float(plan["render_time"])  # type: ignore[arg-type]
    progress = progress_at(str(plan["progress_mode"]), fraction,
                           stall_at=float(plan["stall_at"]),  # type: ignore[arg-type]
                           step=int(plan["step"]))  # type: ignore[call-overload]
    return task(progress, estimate=estimate)


def draw(profile: str, n: int = 100, seed: int = 7) -> list[dict[str, object]]:
    return [PROFILES[profile].draw(random.Random(f"{seed}:{profile}:{i}")) for i in range(n)]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def run_sdk(plans: list[dict[str, object]], policy: PollPolicy = POLICY,
            stats: ModelStats | None = None) -> tuple[list[int], list[float]]:
    """Poll every task (all submitted at 0) in time order; learn into `stats` as they end."""
    states = [PollState(started_at=0.0) for _ in plans]
    heap = [(next_delay(policy, s, 0.0, stats), i) for i, s in enumerate(states)]
    heapq.heapify(heap)
    polls, lags = [0] * len(plans), [0.0] * len(plans)
    while heap:
        now, i = heapq.heappop(heap)
        polls[i] += 1
        assert polls[i] < 300, "runaway polling"
        got = answer(plans[i], now)
        if got.is_terminal:
            lags[i] = now - float(plans[i]["duration"]) + LATENCY  # type: ignore[arg-type]
            if stats is not None:
                stats.learn(states[i], now, got)
            continue
        observe(states[i], now, got)
        if stats is not None:
            stats.note(states[i])
        delay = next_delay(policy, states[i], now, stats)
        assert policy.min_interval <= delay <= policy.max_interval
        heapq.heappush(heap, (now + delay, i))
    return polls, lags


def run_loop(plans: list[dict[str, object]], interval: float = 1.0
             ) -> tuple[list[int], list[float]]:
    polls, lags = [], []
    for plan in plans:
        duration = float(plan["duration"])  # type: ignore[arg-type]
        k = max(1, math.ceil(duration / interval - 1e-12))
        polls.append(k)
        lags.append(k * interval - duration + LATENCY)
    return polls, lags


def versus_loop(profile: str, seed: int = 7, **kw: object) -> tuple[float, float, float]:
    """(polls, completion lag p95, failure lag p95) as ratios to the 1-s loop's."""
    plans = draw(profile, seed=seed)
    sdk, loop = run_sdk(plans, **kw), run_loop(plans)  # type: ignore[arg-type]
    done = [i for i, p in enumerate(plans) if p["outcome"] == "completed"]
    failed = [i for i, p in enumerate(plans) if p["outcome"] == "failed"]

    def ratio(i: int, pick: list[int]) -> float:
        if not pick:
            return 0.0
        return p95([sdk[i][k] for k in pick]) / p95([loop[i][k] for k in pick])

    return sum(sdk[0]) / sum(loop[0]), ratio(1, done), ratio(1, failed)


# -- the exponential: one capped function -----------------------------------------------


def test_backoff_is_capped_for_any_number_of_misses() -> None:
    assert backoff(0.25, 0, 30.0) == 0.25
    assert backoff(0.25, 1, 30.0) == 0.5
    assert backoff(0.25, 3, 30.0) == 2.0
    # 2.0 ** 1100 overflows a float; the cap must hold long before.
    for misses in (7, 100, 1_024, 1_100, 10**9):
        assert backoff(0.25, misses, 30.0) == 30.0
    delays = [backoff(0.25, m, 30.0) for m in range(2_100)]
    assert all(a <= b for a, b in itertools.pairwise(delays))


# -- single decisions ---------------------------------------------------------------------


def test_first_poll_uses_first_delay() -> None:
    assert next_delay(POLICY, PollState(started_at=0.0), 0.0) == 2.0


def test_two_readings_give_a_confident_prediction() -> None:
    state = PollState(started_at=0.0)
    observe(state, 2.0, task(21, estimate=60))
    observe(state, 6.0, task(61, estimate=60))
    when, confident = predict_completion(state)  # type: ignore[misc]
    # 10 %/s; 61.5 % (the middle of the reported step) at 6 s: done at 9.85 s.
    assert confident and when == pytest.approx(9.85)
    # Just past it: the readings are 40 points apart, so the end is known within 0.1 s.
    assert next_delay(POLICY, state, 6.0) == pytest.approx(
        3.85 * (1 + POLICY.margin) + 3.85 / 40 / 2)
    # Readings closer together leave the end vaguer: read again just before it.
    close = PollState(started_at=0.0)
    observe(close, 2.0, task(21))
    observe(close, 3.0, task(31))
    # 10 %/s, the end 6.85 s away, known within 6.85 / 10 points of rise.
    assert next_delay(POLICY, close, 3.0) == pytest.approx(6.85 - 0.685)


def test_rate_is_measured_from_when_last_seen_pending() -> None:
    # Submitted at 0, pending until 3, then a 5-s render: 20 % at 4 s.
    state = PollState(started_at=0.0)
    observe(state, 2.0, task(0, status=TaskStatus.PENDING))
    observe(state, 4.0, task(20))
    when, confident = predict_completion(state)  # type: ignore[misc]
    # From submission the rate would be 5 %/s and the end 19.5 s away; measured from
    # the last pending answer (2 s) it is at most 11.8 s: the render began after it.
    assert not confident and when == pytest.approx(2 + 2 * 100 / 20.5)


def test_one_reading_goes_half_way_to_the_earliest_credible_end() -> None:
    state = PollState(started_at=0.0)
    observe(state, 2.0, task(10))
    # Progress alone says 2 / 0.105 = 19 s: half-way is 8.5 s off.
    assert next_delay(POLICY, state, 2.0) == pytest.approx(2.0)  # ... but bounded by age
    with_estimate = PollState(started_at=0.0)
    observe(with_estimate, 2.0, task(10, estimate=6))
    # The estimate (6 s) is the earlier credible end: half-way to it.
    assert next_delay(POLICY, with_estimate, 2.0) == pytest.approx(2.0)
    observe(with_estimate, 3.0, task(10, estimate=5))
    close = PollState(started_at=0.0)
    observe(close, 4.0, task(10, estimate=5))
    assert next_delay(POLICY, close, 4.0) == pytest.approx(0.5)  # (5 - 4) / 2


def test_untrusted_waits_are_bounded_by_the_tasks_age() -> None:
    # An estimate of 10 minutes does not buy a 5-minute wait on a 3-s-old pending task.
    pending = PollState(started_at=0.0)
    observe(pending, 3.0, task(0, status=TaskStatus.PENDING, estimate=600))
    assert next_delay(POLICY, pending, 3.0) <= 3.0
    # One slow reading: half-way to its far end, but no more than the age so far.
    slow = PollState(started_at=0.0)
    observe(slow, 3.0, task(1, estimate=600))
    assert next_delay(POLICY, slow, 3.0) <= 3.0


def test_a_second_reading_waits_for_the_estimates_earliest_credible_end() -> None:
    # 6 % after 2 s of a task estimated at 30 s: the reading says it ends by ~31 s at
    # the latest, the estimate not before 0.6 x 30 = 18 s. They agree, so nothing can
    # end before 18 s: the second reading waits for it (not for the age, 2 s), late
    # enough for two readings to pin the end.
    state = PollState(started_at=0.0)
    observe(state, 2.0, task(6, estimate=30))
    assert next_delay(POLICY, state, 2.0) == pytest.approx(0.6 * 30 - 2.0)
    # They disagree (49 % after 2 s: done by ~4 s at the latest; the estimate: not
    # before 6 s): the render may have begun just before the reading, so half-way to
    # the reading's latest end, not to it (that would be late whenever it began late).
    late = PollState(started_at=0.0)
    observe(late, 2.0, task(49, estimate=10))
    assert next_delay(POLICY, late, 2.0) == pytest.approx((2 * 100 / 49.5 - 2.0) / 2)


def test_a_model_seen_failing_is_watched_at_the_failure_interval() -> None:
    stats = ModelStats()
    failed = PollState(started_at=0.0)
    observe(failed, 2.0, task(0, status=TaskStatus.FAILED))
    stats.learn(failed, 2.0, task(0, status=TaskStatus.FAILED))
    # Failed before it was ever seen rendering: still a failure nothing announced.
    assert stats.fails_mid_run
    state = PollState(started_at=0.0)
    observe(state, 1.0, task(2, estimate=60))
    observe(state, 5.0, task(10, estimate=60))  # the end is ~45 s away
    assert next_delay(POLICY, state, 5.0) > 10
    assert next_delay(POLICY, state, 5.0, stats) == POLICY.failure_interval
    slower = PollPolicy(failure_interval=2.0)
    assert next_delay(slower, state, 5.0, stats) == 2.0
    # The first poll of a later task of that model comes at the same pace.
    assert next_delay(POLICY, PollState(started_at=0.0), 0.0, stats) == 1.0


def test_a_watched_failing_model_aims_past_the_latest_credible_end() -> None:
    # Watched at a loop's pace anyway: a poll just before the end would cost one poll
    # more than the loop's, so it aims past the end the latest reading allows (it may
    # be up to a step behind), not at the middle of the prediction.
    stats = ModelStats()
    stats.learn(PollState(started_at=0.0), 2.0, task(0, status=TaskStatus.FAILED))
    state = PollState(started_at=0.0)
    observe(state, 1.0, task(12))
    observe(state, 6.0, task(87))  # 15 %/s: 87.5 % at 6 s, done at ~6.83 s
    remaining = (100 - 87.5) / 15
    spread = remaining / 75
    plain = next_delay(POLICY, state, 6.0)
    assert plain == pytest.approx(remaining * (1 + POLICY.margin) + spread / 2)
    watched = next_delay(POLICY, state, 6.0, stats)
    assert watched == pytest.approx(remaining * (1 + POLICY.margin) + spread + 0.5 / 15)


def test_unchanged_progress_is_a_stall_with_age_proportional_backoff() -> None:
    state = PollState(started_at=0.0)
    observe(state, 2.0, task(50))
    observe(state, 3.0, task(99))
    now, delays = 3.0, []
    for _ in range(40):
        delay = next_delay(POLICY, state, now)
        delays.append(delay)
        now += delay
        observe(state, now, task(99))
    stalled = delays[1:]
    # Never a poll storm: at least the watch interval, and growing with the task's age.
    assert min(stalled) >= POLICY.watch_interval
    assert all(a <= b for a, b in itertools.pairwise(stalled))
    assert stalled[-1] == pytest.approx(min(POLICY.max_interval, POLICY.age_fraction
                                            * (now - stalled[-1])), rel=0.01)
    assert now > 100 and len(delays) < 40 + 1


def test_a_model_whose_tasks_sit_at_99_is_watched_from_the_first_99() -> None:
    def at_99(stats: ModelStats | None) -> float:
        state = PollState(started_at=0.0)
        observe(state, 2.0, task(73))
        observe(state, 2.7, task(99))  # 37 %/s: "done in 0.01 s"
        return next_delay(POLICY, state, 2.7, stats)

    # Untaught, 99 % at this pace means the end is due at once: a quick poll.
    assert at_99(None) < 0.3
    stats = ModelStats()
    for _ in range(5):  # tasks read again just after 99 %, still at 99 %
        state = PollState(started_at=0.0)
        for t in (2.0, 2.7, 2.95):
            observe(state, t, task(99 if t > 2 else 73))
            stats.note(state)
    assert stats.stalls_at_top
    # Taught that this model's tasks sit there: watched as a stall at once.
    assert at_99(stats) == POLICY.watch_interval
    # A model whose tasks mostly end right after 99 % is not taught that.
    for _ in range(5):
        done = PollState(started_at=0.0)
        observe(done, 2.7, task(99))
        stats.learn(done, 2.95, task(100, status=TaskStatus.COMPLETED))
    assert not stats.stalls_at_top


def test_coarse_steps_read_again_at_the_earliest_credible_end() -> None:
    state = PollState(started_at=0.0)
    observe(state, 2.0, task(30))
    observe(state, 3.5, task(50))
    # Steps of 10: 30-40 % and 50-60 %, so 6.7-20 %/s: the end is between 5.5 and 11 s.
    delay = next_delay(POLICY, state, 3.5)
    midpoint = 3.5 + (100 - 55) / (20 / 1.5) - 3.5
    assert delay < midpoint - 1.0


def test_progress_slowing_down_doubles_the_time_left() -> None:
    state = PollState(started_at=0.0)
    observe(state, 1.0, task(11))
    observe(state, 2.0, task(41))
    observe(state, 3.0, task(61))  # 30 %/s, then 20 %/s: slowing
    when, confident = predict_completion(state)  # type: ignore[misc]
    assert confident and when == pytest.approx(3.0 + 2 * 38.5 / 20)


def test_an_s_curve_closing_in_on_100_is_not_a_stall() -> None:
    state = PollState(started_at=0.0)
    for t, p in ((2.0, 26), (3.0, 55), (4.59, 93), (4.85, 97), (5.10, 99), (5.35, 99)):
        observe(state, t, task(p))
    # 99 % for 0.25 s after 30 %/s on average and 8 %/s lately: the curve's last step,
    # due any moment, not a stall to watch every watch_interval.
    assert next_delay(POLICY, state, 5.35) < 0.5
    stuck = PollState(started_at=0.0)
    for t, p in ((2.0, 73), (2.74, 99), (3.0, 99)):
        observe(stuck, t, task(p))
    assert next_delay(POLICY, stuck, 3.0) == POLICY.watch_interval


# -- scenario classes against the 1-s loop on the same tasks --------------------------------

SCENARIOS = ["linear", "pending-15", "pending-30-60", "queue-2-10", "s-curve", "long-tail",
             "stall-99", "no-progress", "fail-10", "minutes", "steps-10"]


@pytest.mark.parametrize("profile", SCENARIOS)
def test_no_scenario_is_worse_than_a_one_second_loop(profile: str) -> None:
    # A batch in a fresh session, which learns from its tasks as they run and end.
    polls, lag, failure_lag = versus_loop(profile, stats=ModelStats())
    assert polls <= 1.0, f"{profile}: {polls:.2f} x the 1-s loop's polls"
    assert failure_lag <= 1.0, f"{profile}: {failure_lag:.2f} x the 1-s loop's failure lag"
    # Lag p95 never above the loop's (the watch keeps a margin for the request's time).
    assert lag <= 1.0, f"{profile}: {lag:.2f} x the 1-s loop's lag p95"


@pytest.mark.parametrize(("profile", "max_polls", "max_lag"), [
    ("linear", 0.5, 0.35),
    ("pending-15", 0.5, 0.35),
    ("pending-30-60", 0.5, 0.35),
    ("queue-2-10", 0.6, 0.35),
    ("long-tail", 0.45, 0.35),
    ("minutes", 0.15, 0.45),  # the issue: polls <= 0.2x, lag p95 <= 0.5x
    ("steps-10", 0.75, 0.6),
    ("s-curve", 0.95, 0.4),
])
def test_scenarios_with_a_signal_cost_a_fraction_of_the_loop(
    profile: str, max_polls: float, max_lag: float
) -> None:
    polls, lag, _ = versus_loop(profile)
    assert polls <= max_polls and lag <= max_lag, (polls, lag)


def test_a_fresh_session_learns_from_its_first_failures() -> None:
    # fail-10 in a session that knows nothing yet: the batch's first failures (seen at
    # the first poll) put the model's other tasks on the loop's pace at once.
    polls, _, failure_lag = versus_loop("fail-10", stats=ModelStats())
    assert 0 < failure_lag <= 1.0 and polls <= 0.9, (polls, failure_lag)


def test_a_model_failing_mid_run_is_watched_like_a_one_second_loop() -> None:
    stats = ModelStats()
    run_sdk(draw("fail-10", seed=1), stats=stats)  # earlier tasks of the session
    assert stats.fails_mid_run
    _, _, failure_lag = versus_loop("fail-10", stats=stats)
    assert 0 < failure_lag <= 1.0


# -- learning across the tasks of a session -----------------------------------------------


def test_later_tasks_start_where_earlier_ones_say() -> None:
    stats = ModelStats()
    run_sdk(draw("minutes", n=30, seed=2), stats=stats)
    first = next_delay(POLICY, PollState(started_at=0.0), 0.0, stats)
    # 30-60 s tasks: the first poll comes well into the render, not after 2 s.
    assert 9.0 <= first <= 20.0
    cold = run_sdk(draw("minutes", n=50))[0]
    warm = run_sdk(draw("minutes", n=50), stats=stats)[0]
    assert sum(warm) < sum(cold)


def test_long_queues_are_polled_on_the_learned_queue_and_render() -> None:
    # Queued 30-60 s, then 4-8 s renders; the estimate includes the queue, so it says
    # nothing of when the render begins. Untaught, a pending task is polled at half its
    # age: at 40 s, next at 60 s, past most renders.
    stats = ModelStats()
    run_sdk(draw("queue-30-60", seed=1), stats=stats)  # an earlier batch of the session
    polls, lag, _ = versus_loop("queue-30-60", stats=stats)
    # The target for tasks of 30-60 s: polls <= 0.2x, lag p95 <= 0.5x.
    assert polls <= 0.2 and lag <= 0.5, (polls, lag)


def test_a_pending_task_is_polled_at_a_share_of_the_models_short_renders() -> None:
    stats = ModelStats()
    for queue in (10.0, 15.0, 20.0, 25.0, 30.0):
        state = PollState(started_at=0.0)
        observe(state, queue - 1, task(0, status=TaskStatus.PENDING))
        observe(state, queue + 1, task(20))
        observe(state, queue + 3, task(60))
        stats.learn(state, queue + 5, task(100, status=TaskStatus.COMPLETED))
    assert stats.quantile("queues", 0.05) == pytest.approx(10.0, abs=0.1)
    assert stats.quantile("renders", 0.1) == pytest.approx(4.5, abs=0.1)
    # The first poll: where the shortest queues end, part-way into a short render.
    assert next_delay(POLICY, PollState(started_at=0.0), 0.0, stats) == pytest.approx(
        10.0 + 0.8 * 4.5, abs=0.1)
    pending = PollState(started_at=0.0)
    observe(pending, 24.0, task(0, status=TaskStatus.PENDING))
    assert next_delay(POLICY, pending, 24.0) == pytest.approx(12.0)  # half its age
    assert next_delay(POLICY, pending, 24.0, stats) == pytest.approx(0.8 * 4.5, abs=0.1)
    # One reading 5 % in: the render began after 24 s and a short one ends by 28.5 s,
    # whatever the estimate (queue included) says: the second reading comes then.
    observe(pending, 26.0, task(5, estimate=40))
    assert next_delay(POLICY, pending, 26.0) > 5.0
    assert next_delay(POLICY, pending, 26.0, stats) == pytest.approx(2.5, abs=0.1)


def test_learned_estimate_bias_places_the_watch() -> None:
    # The estimate is always twice the real duration; no progress is reported.
    stats = ModelStats()
    for _ in range(20):
        state = PollState(started_at=0.0)
        observe(state, 1.0, task(0, estimate=20))
        stats.learn(state, 10.0, task(100, status=TaskStatus.COMPLETED, estimate=20))
    cold, warm = PollState(started_at=0.0), PollState(started_at=0.0)
    for state in (cold, warm):
        observe(state, 8.0, task(0, estimate=20))
    # Untaught: nothing due before 60 % of the estimate (12 s); taught: before the
    # learned ratio, 0.475 of it (9.5 s).
    assert next_delay(POLICY, cold, 8.0) == pytest.approx(4.0)
    assert next_delay(POLICY, warm, 8.0, stats) == pytest.approx(1.5)


def test_a_few_early_samples_do_not_move_the_estimates_window() -> None:
    # The first tasks seen ending are those whose estimate was short (they were polled
    # first): five of them, each 1.125x its estimate, must not push the watch of a task
    # without progress past its own estimate's earliest credible end.
    stats = ModelStats()
    for _ in range(5):
        done = PollState(started_at=0.0)
        observe(done, 4.0, task(0, estimate=4))
        stats.learn(done, 5.0, task(100, status=TaskStatus.COMPLETED, estimate=4))
    assert stats.ratios[0] == pytest.approx(1.125)
    state = PollState(started_at=0.0)
    observe(state, 4.8, task(0, estimate=8))
    assert next_delay(POLICY, state, 4.8, stats) == next_delay(POLICY, state, 4.8)
    assert next_delay(POLICY, state, 4.8, stats) < 1.0  # not at 1.125 x 8 s = 9 s


@pytest.mark.parametrize("seed", range(1, 9))
@pytest.mark.parametrize("profile", ["no-progress", "stall-99"])
def test_signal_less_scenarios_stay_under_the_loop_for_every_seed(profile: str,
                                                                  seed: int) -> None:
    polls, lag, _ = versus_loop(profile, seed=seed, stats=ModelStats())
    assert polls <= 1.0 and lag <= 1.0, (polls, lag)


def test_a_stall_is_not_watched_before_the_models_tasks_usually_end() -> None:
    stats = ModelStats()
    for _ in range(10):
        done = PollState(started_at=0.0)
        stats.learn(done, 20.0, task(100, status=TaskStatus.COMPLETED))
    state = PollState(started_at=0.0)
    observe(state, 4.0, task(50))
    observe(state, 5.0, task(99))
    observe(state, 6.0, task(99))  # stuck at 99 % after 6 s; this model takes ~20 s
    assert next_delay(POLICY, state, 6.0) == POLICY.watch_interval
    assert next_delay(POLICY, state, 6.0, stats) == pytest.approx(6.0)  # bounded by age


def test_learned_quantiles_follow_new_samples() -> None:
    stats = ModelStats()
    for duration in (10.0, 10.0, 10.0, 10.0, 10.0):
        stats.learn(PollState(started_at=0.0), duration, task(100, status=TaskStatus.COMPLETED))
    assert stats.quantile("durations", 0.5) == 10.0  # read once, kept sorted
    for _ in range(10):
        stats.learn(PollState(started_at=0.0), 30.0, task(100, status=TaskStatus.COMPLETED))
    assert stats.quantile("durations", 0.5) == 30.0


def test_learning_is_bounded() -> None:
    stats = ModelStats()
    state = PollState(started_at=0.0)
    observe(state, 1.0, task(0, estimate=5))
    for _ in range(5_000):
        stats.learn(state, 6.0, task(100, status=TaskStatus.COMPLETED))
    assert len(stats.durations) <= 256 and len(stats.ratios) <= 256


def test_policy_bounds_are_validated() -> None:
    with pytest.raises(ValidationError, match="min_interval"):
        PollPolicy(min_interval=10, max_interval=5)
    with pytest.raises(ValidationError, match="first_delay"):
        PollPolicy(first_delay=0)
    with pytest.raises(ValidationError, match="age_fraction"):
        PollPolicy(age_fraction=2)


_FIELDS = ("first_delay", "min_interval", "max_interval", "margin", "watch_interval",
           "failure_interval", "age_fraction", "give_up_after")


@pytest.mark.parametrize("field", _FIELDS)
@pytest.mark.parametrize("value", [None, "1", True, math.nan, -1.0, 0])
def test_every_policy_field_refuses_what_is_not_a_usable_number(field: str, value: object) -> None:
    if (field == "give_up_after" and value is None) or (field == "margin" and value == 0):
        return  # None: never give up; margin 0: poll right at a confident prediction
    with pytest.raises(ValidationError) as caught:
        PollPolicy(**{field: value})
    assert caught.value.field == field, caught.value


@pytest.mark.parametrize(("changes", "field"), [
    ({"watch_interval": 31.0}, "watch_interval"),
    ({"watch_interval": 0.1}, "watch_interval"),
    ({"failure_interval": 0.1}, "failure_interval"),
    ({"failure_interval": 45.0}, "failure_interval"),
    ({"margin": 1.5}, "margin"),
    ({"first_delay": math.inf}, "first_delay"),
])
def test_policy_fields_must_agree_with_each_other(changes: dict[str, float], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PollPolicy(**changes)
    assert caught.value.field == field, caught.value


def test_interval_defaults_follow_the_bounds_and_none_never_gives_up() -> None:
    fixed = PollPolicy(min_interval=5.0, max_interval=5.0)
    assert fixed.watch_interval == fixed.failure_interval == 5.0
    fast = PollPolicy(min_interval=0.001, max_interval=0.002)
    assert fast.watch_interval == fast.failure_interval == 0.002
    assert PollPolicy(give_up_after=None).give_up_after is None
    assert PollPolicy(margin=0).margin == 0
