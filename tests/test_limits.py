"""`RateLearner` and `Limits` as pure objects: exact expectations on an injected clock.

Nothing here sleeps: `claim` says when a slot may go, and the clock is a number the
test moves. The last tests run the learner against a model server (a token bucket on
the same numbers) to pin what it is for: a batch at the floor with few 429s.
"""

from __future__ import annotations

import itertools
import math

import pytest

from apimart_async._core.pacing import RateLearner
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


class Bucket:
    """The model server: `rate` tokens a second, at most `burst` kept, full at 0."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def run_batch(learner: RateLearner, server: Bucket, n: int,
              storm: tuple[float, float] = (0.0, 0.0)) -> tuple[float, int]:
    """Send `n` requests as the learner allows: as many at once as its window lets
    (one at a time once it has none), each answered the moment it arrives; a 429'd
    request goes again in a later slot; every request sent within `storm` is refused
    before the bucket (a gateway's outage in front of the bucket, which keeps refilling). Returns (makespan, 429s)."""
    now, done, throttled = 0.0, 0, 0
    while done < n:
        wave = [learner.claim(now) for _ in range(min(learner.window or 1, n - done))]
        for start, ticket, _ in wave:
            now = max(now, start)
            if not storm[0] <= now < storm[1] and server.take(now):
                learner.on_accepted(ticket, now)
                done += 1
            else:
                throttled += 1
                learner.on_throttled(ticket, now, 1.0)
    return now, throttled


# -- rate given -----------------------------------------------------------------------------

def test_a_given_rate_spaces_the_slots() -> None:
    learner = RateLearner(rate=10.0, margin=0.0)
    starts = [learner.claim(100.0)[0] for _ in range(3)]
    assert starts == pytest.approx([100.0, 100.1, 100.2])


def test_a_given_burst_goes_at_once_less_one_spare_token() -> None:
    learner = RateLearner(rate=10.0, burst=10, margin=0.0)
    starts = [learner.claim(0.0)[0] for _ in range(12)]
    # Nine at once (one token kept for the network's jitter), then one per 0.1 s.
    assert starts[:9] == [0.0] * 9
    assert starts[9:] == pytest.approx([0.1, 0.2, 0.3])


def test_a_given_pace_starts_from_the_bursts_first_answer() -> None:
    # The server's bucket stays full (its refill lost) until the burst arrives, which a
    # new connection can delay: pacing from the claim would run ahead of the server.
    learner = RateLearner(rate=50.0, burst=30, margin=0.0)
    assert learner.window == 29  # the burst, and no more until an answer
    starts = [learner.claim(0.0)[0] for _ in range(29)]
    assert max(starts) < 0.01
    learner.on_accepted(0.0, now=0.030)  # the first answer, 30 ms later
    assert learner.window is None
    assert learner.claim(0.031)[0] == pytest.approx(0.030 + 1 / 50)


def test_a_429_at_a_given_rate_widens_the_margin_and_keeps_the_rate() -> None:
    learner = RateLearner(rate=20.0, burst=1, margin=0.0)
    _, ticket, epoch = learner.claim(0.0)
    learner.on_accepted(ticket, now=0.01)
    _, ticket, _ = learner.claim(0.01)
    learner.on_throttled(ticket, 0.07, 1.0)
    assert learner.epoch != epoch and learner.pace(1.0) == 20.0
    start = learner.claim(0.08)[0]
    assert start == pytest.approx(ticket + 1 / (20.0 * 0.99))  # one interval, 1 % wider


@pytest.mark.parametrize(("rate", "burst"), [(5, 10), (20, 10), (50, 30), (10, 1)])
def test_a_given_rate_and_burst_reach_the_floor_without_a_429(rate: int, burst: int) -> None:
    n = 300
    makespan, throttled = run_batch(RateLearner(rate=rate, burst=burst), Bucket(rate, burst), n)
    assert throttled == 0
    assert makespan <= 1.02 * (n - burst) / rate


# -- slow start -----------------------------------------------------------------------------

def test_slow_start_grows_the_window_per_accept_until_the_first_429() -> None:
    learner = RateLearner(initial_window=2, growth=0.25, max_window=100)
    assert learner.free is False and learner.window == 2
    for i in range(8):
        learner.on_accepted(float(i))
    assert learner.window == 4  # 2 + 8 * 0.25
    learner.on_throttled(8.0, 8.1, None)
    assert learner.window is None  # pacing from here on
    assert learner.burst == 8  # what went through before the first 429


def test_without_a_limit_the_window_opens_past_the_concurrency_cap() -> None:
    assert RateLearner(max_window=4).window is None  # a cap of 4 holds nothing back
    learner = RateLearner(max_window=6)
    for i in range(24):
        learner.on_accepted(float(i))
    assert learner.window is None and learner.free
    start, _, _ = learner.claim(50.0)
    assert start == 50.0


# -- Retry-After ------------------------------------------------------------------------------

def test_a_long_retry_after_pauses_every_sender_until_it_passes() -> None:
    learner = RateLearner(rate=10.0)
    _, ticket, epoch = learner.claim(100.0)
    learner.on_throttled(ticket, 100.01, 5.0)
    assert learner.epoch != epoch  # slots claimed before are claimed again
    assert learner.claim(100.02)[0] >= 105.0
    # A shorter hint later does not cut the pause short.
    learner.on_throttled(101.0, 101.01, 2.0)
    assert learner.claim(101.02)[0] >= 105.0


def test_a_one_second_hint_is_a_token_bucket_talking_and_does_not_stall_everyone() -> None:
    learner = RateLearner(rate=10.0)
    _, ticket, _ = learner.claim(100.0)
    learner.on_throttled(ticket, 100.01, 1.0)
    assert learner.claim(100.02)[0] < 100.5


def test_the_first_guess_of_the_rate_comes_from_the_hint() -> None:
    def first_slot(hint: float) -> float:
        learner = RateLearner()  # nothing accepted before the 429: a burst of 1
        learner.on_throttled(0.0, 0.0, hint)
        return learner.claim(0.0)[0]

    # The pace ramps up from 1 / hint: the next token is at most that far away.
    assert 0.0 < first_slot(0.1) < first_slot(0.5) < first_slot(1.0)


# -- the estimate -----------------------------------------------------------------------------

def test_accepts_between_two_429s_give_the_rate() -> None:
    learner = RateLearner(rate=None, jitter=0.0)
    learner.on_throttled(0.0, 0.0, None)  # the burst is spent at t=0
    learner.on_throttled(0.5, 0.5, None)  # the ramp's end: estimate from the latest accepts
    # 40 accepts in the next 2 s, then a 429: the bucket refilled 40 +- 1 tokens.
    for i in range(40):
        learner.on_accepted(0.5 + (i + 1) * 0.05)
    learner.on_throttled(2.55, 2.56, None)
    assert learner.rate == pytest.approx(20.0, rel=0.05)


def test_429s_already_on_the_wire_when_one_was_heard_teach_nothing_new() -> None:
    learner = RateLearner()
    learner.on_throttled(1.0, 1.01, None)
    epoch, pace = learner.epoch, learner.pace(1.0)
    for ticket in (1.001, 1.002, 1.005):  # sent before the first 429 was answered
        learner.on_throttled(ticket, 1.02, None)
    assert (learner.epoch, learner.pace(1.0)) == (epoch, pace)
    assert learner.throttled == 4


def test_a_rate_learned_too_low_is_raised_back_between_429s() -> None:
    learner = RateLearner(jitter=0.0)
    learner.on_throttled(0.0, 0.0, None)
    learner.on_throttled(0.5, 0.5, None)
    for i in range(10):
        learner.on_accepted(0.5 + (i + 1) * 0.1)
    learner.on_throttled(1.55, 1.55, None)
    learned = learner.rate
    assert learned is not None
    # No 429 since: the pace creeps above the estimate, faster the longer it lasts.
    assert learner.pace(1.55) == pytest.approx(learned)
    assert learned < learner.pace(2.55) < learner.pace(4.55)  # type: ignore[operator]


@pytest.mark.parametrize("rate", [5, 10, 20, 50])
@pytest.mark.parametrize("burst", [10, 30])
def test_a_batch_against_an_unknown_limit_runs_at_the_floor(rate: int, burst: int) -> None:
    n = 300
    makespan, throttled = run_batch(RateLearner(), Bucket(rate, burst), n)
    floor = (n - burst) / rate
    assert throttled <= 10
    assert makespan <= 1.05 * floor


@pytest.mark.parametrize("rate", [5, 10, 20, 50])
def test_without_a_burst_learning_costs_a_little_more(rate: int) -> None:
    # A bucket of one token overflows at any pace under the rate, so the ramp's count
    # says less, and with no token spare each 429 widens the pace's berth from the
    # rate (jitter would bunch requests): looser bounds, still near.
    n = 300
    makespan, throttled = run_batch(RateLearner(), Bucket(rate, 1), n)
    assert throttled <= 10
    assert makespan <= 1.10 * (n - 1) / rate


def test_the_learned_rate_converges_on_the_servers() -> None:
    learner = RateLearner()
    run_batch(learner, Bucket(20.0, 10), 300)
    assert learner.rate == pytest.approx(20.0, rel=0.02)


def test_after_a_storm_of_429s_the_pace_comes_back_within_a_few_requests() -> None:
    # A gateway refused six requests in a row, none accepted between them, after a
    # caller had sent nine at ~3/s; every request is accepted after. Read as a token
    # bucket, each 429 said "slower than 1 / gap": the estimate fell under the 0.2/s
    # floor, and the pace stayed there (a request every 5 s for minutes).
    learner, now = RateLearner(), 0.0

    def send(accepted: bool) -> float:
        nonlocal now
        start, ticket, _ = learner.claim(now)
        now = max(now, start)
        if accepted:
            learner.on_accepted(ticket, now)
        else:
            learner.on_throttled(ticket, now, None)
        return now

    for _ in range(9):
        send(True)
        now += 0.33
    for _ in range(6):
        send(False)
    gaps = []
    for _ in range(10):
        before = now
        gaps.append(send(True) - before)
    assert max(gaps[2:]) < 0.1, gaps


def calm_and_stormy(rate: int, burst: int, starts: float, lasts: float
                    ) -> tuple[float, float, int]:
    """100 requests against a bucket of `rate` and `burst`: the makespan without a storm,
    and with one refusing everything from `starts` for `lasts` seconds (and its 429s)."""
    calm, _ = run_batch(RateLearner(), Bucket(rate, burst), 100)
    stormy, throttled = run_batch(RateLearner(), Bucket(rate, burst), 100,
                                  (starts, starts + lasts))
    return calm, stormy, throttled


@pytest.mark.parametrize(("rate", "burst"), [(20, 10), (5, 30), (50, 30), (20, 1)])
@pytest.mark.parametrize("starts", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("lasts", [1.0, 3.0, 10.0])
def test_after_a_storm_of_429s_the_learned_pace_is_back_within_seconds(
    rate: int, burst: int, starts: float, lasts: float
) -> None:
    # The server refuses everything for `lasts` seconds, then its bucket is as before.
    # The storm's 429s drove the estimate down (each said "slower than one request a
    # gap"): it sat just above the floor, and the pace crept back at the square of a
    # tiny uncertainty (a 3-s storm: +6.6 s at 20/s, +34 s at 20/s with a burst of 1).
    # Now the session backs off while it lasts (pauses doubling to 2 s at most) and
    # learns afresh after: the batch ends at most a pause and a bit later than the
    # storm's own length.
    calm, stormy, throttled = calm_and_stormy(rate, burst, starts, lasts)
    assert stormy <= calm + lasts + 2.5
    assert throttled <= 30  # backing off: a few 429s a storm, not one per request


@pytest.mark.parametrize(("rate", "burst"), [(20, 10), (20, 5), (5, 30), (50, 30), (20, 1)])
@pytest.mark.parametrize("starts", [0.0, 1e-4])
@pytest.mark.parametrize("lasts", [1.0, 3.0, 10.0])
def test_a_storm_early_in_the_run_is_recovered_from_as_quickly_as_a_late_one(
    rate: int, burst: int, starts: float, lasts: float
) -> None:
    # A storm before the first accept (starts at 0), or right after the slow start's
    # first wave (the burst's worth, all sent at 0), comes before any rate is known:
    # its 429s were read as a bucket's, the estimate fell to the floor and crept back
    # (100 requests at 20/s, burst 10, 3 s storm at 0: 49.6 s; burst 5, 2 s storm
    # after the 5 accepts: 66 s). Now the first accept after it, with the probes sent
    # 0.1 s apart after it accepted too, learns afresh. No pause during it (it is no
    # storm yet), so the gaps grow and the first request after it goes up to a few
    # seconds late: the storm's length and 3.5 to 4.5 s added, not tens.
    calm, stormy, throttled = calm_and_stormy(rate, burst, starts, lasts)
    assert stormy <= calm + lasts + 4.5
    assert throttled <= 30


@pytest.mark.parametrize("probe_accepted", [True, False])
def test_the_first_accept_after_an_early_run_of_429s_probes_before_learning_afresh(
    probe_accepted: bool,
) -> None:
    # 429s from the first request on, nothing accepted, for over half a second: an
    # early storm, or a slow bucket's first guesses coming down. The first accept
    # cannot tell them apart; the next requests, 0.1 s apart, can: accepted too, the
    # bucket held tokens a bucket that slow could not have (a storm: learn afresh);
    # one refused, it was the slow bucket, and its estimate stands.
    learner, now = RateLearner(jitter=0.0), 0.0

    def send(accepted: bool) -> float:
        nonlocal now
        start, ticket, _ = learner.claim(now)
        now = max(now, start)
        if accepted:
            learner.on_accepted(ticket, now)
        else:
            learner.on_throttled(ticket, now, 1.0)
        return now

    while now < 1.0:
        send(False)  # 0, 0.2, 0.6, 1.8 s: the gaps grow, as for a bucket that slow
    last = send(True)  # ~3.5 s after the latest 429
    assert learner.window is None  # not yet: one accept says nothing of a storm
    if not probe_accepted:
        assert send(False) == pytest.approx(last + 0.1)
        for _ in range(5):
            send(True)
        assert learner.window is None and learner.rate is not None
        return
    # A bucket under 1 / 1.8 s could have refilled under 3 tokens by then: 3 probes.
    for _ in range(3):
        assert learner.window is None
        at = send(True)
        assert at == pytest.approx(last + 0.1)
        last = at
    assert learner.window is not None and learner.rate is None  # learning afresh


def test_a_storm_on_a_learned_pace_backs_off_doubling_then_learns_afresh() -> None:
    learner = RateLearner(jitter=0.0)
    now, _ = run_batch(learner, Bucket(20.0, 10), 60)  # settled near 20/s
    assert learner.rate == pytest.approx(20.0, rel=0.1)
    slots: list[float] = []
    for _ in range(6):  # refused: every one
        start, ticket, _ = learner.claim(now)
        now = max(now, start)
        slots.append(now)
        learner.on_throttled(ticket, now, 1.0)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    # Two 429s in a row are a bucket paced a little fast (a slot at the pace); from
    # the third, a pause that doubles (0.25 s first, 2 s at most).
    assert gaps[:2] == pytest.approx([1 / 20, 1 / 20], rel=0.2)
    assert gaps[2:] == pytest.approx([0.25, 0.5, 1.0], abs=0.01)
    start, ticket, _ = learner.claim(now)
    learner.on_accepted(ticket, start)  # the storm is over
    # Learning starts afresh: no pace, the slow-start window, the burst found again.
    assert learner.rate is None and learner.window is not None
    assert learner.pace(start) is None


@pytest.mark.parametrize(("rate", "burst"), [(0.5, 2), (1, 5), (2, 30), (5, 60)])
def test_429s_in_a_row_while_the_rate_is_being_found_are_no_storm(
    rate: float, burst: int
) -> None:
    # A slow bucket's first guesses overshoot by far: several 429s in a row, nothing
    # accepted between them, are the estimate coming down, not a storm: no pause.
    learner = RateLearner()
    pauses = []
    original = learner._storm_pause

    def spy(ticket: float) -> None:
        pauses.append(ticket)
        original(ticket)

    learner._storm_pause = spy  # type: ignore[method-assign]
    run_batch(learner, Bucket(rate, burst), 200)
    assert pauses == []


@pytest.mark.parametrize("lasts", [0.5, 2.0, 3.5])
def test_a_storm_at_a_given_rate_pauses_the_session_and_keeps_the_margin(
    lasts: float,
) -> None:
    # A 429 at a given rate is jitter: the margin widens a little. A second in a row,
    # nothing accepted between, is the server refusing everything: the session
    # pauses, doubling (0.25 s, 0.5 s, 1 s, 2 s at most), and the margin stays.
    learner = RateLearner(rate=20.0, burst=10)
    server = Bucket(20.0, 10)
    makespan, throttled = run_batch(learner, server, 40, (0.5, 0.5 + lasts))
    # The retries' budget (5 attempts) is never spent by the whole session: a storm
    # costs a 429 per doubling, each on another request.
    assert throttled <= 3 + math.log2(lasts / 0.25) + 1
    assert learner.margin <= 0.005 + 0.01
    assert makespan <= (40 - 10) / 20 + lasts + 2.0


@pytest.mark.parametrize(("rate", "burst"), [(0.5, 1), (0.5, 5), (1.0, 3)])
def test_a_slow_bucket_above_the_floor_is_still_learned(rate: float, burst: int) -> None:
    # Zero-accept spans against a truly slow bucket must not be mistaken for a storm
    # for ever: the batch still finishes near the floor, with few 429s.
    n = 40
    makespan, throttled = run_batch(RateLearner(), Bucket(rate, burst), n)
    assert makespan <= 1.25 * (n - burst) / rate
    assert throttled <= 15


def test_a_bucket_under_the_floor_restarts_learning_at_most_once_a_minute() -> None:
    # 0.1/s is under the 0.2/s floor: every fresh start ramps into a few 429s, so they
    # are a minute apart (restarting at every sub-floor estimate cost 76 429s here).
    makespan, throttled = run_batch(RateLearner(), Bucket(0.1, 1), 10)
    assert throttled <= 30
    assert makespan <= 1.25 * 9 / 0.1


# -- Limits -------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_limits_pace_on_the_clock_and_reclaim_a_slot_after_a_429() -> None:
    clock = FakeClock(100.0)
    limits = Limits(max_concurrency=4, rps=10.0, clock=clock)
    first = await limits.acquire()
    limits.release()
    limits.succeeded(first)
    second = await limits.acquire()  # paced: slept until its slot
    assert second - first == pytest.approx(0.1, rel=0.01)
    assert clock.slept
    limits.release()
    limits.throttled(second, retry_after=3.0)
    assert limits.try_acquire() is None
    third = await limits.acquire()
    assert third >= second + 3.0


@pytest.mark.anyio
async def test_an_unlimited_session_takes_the_fast_path_once_the_window_is_open() -> None:
    clock = FakeClock(100.0)
    limits = Limits(max_concurrency=8, clock=clock)
    assert limits.try_acquire() is None  # slow start: the window decides
    for _ in range(40):
        ticket = await limits.acquire()
        limits.release()
        limits.succeeded(ticket)
    ticket = limits.try_acquire()
    assert ticket == 100.0 and not clock.slept
    limits.release()


@pytest.mark.anyio
async def test_done_counts_every_answer_on_the_fast_path_too() -> None:
    # `done` (one call per answered attempt) skips the pacing bookkeeping when nothing is
    # paced, but still counts the accept: the first 429 takes the burst from the count.
    clock = FakeClock(100.0)
    limits = Limits(max_concurrency=8, clock=clock)
    for _ in range(40):
        limits.done(await limits.acquire())
    assert limits.rate.window is None and limits.try_acquire() is not None  # fast path
    limits.done(100.0)
    assert limits.rate.accepted == 41
    limits.rate.on_throttled(100.0, 100.0, None)
    assert limits.rate.burst == 41


def test_no_sleep_at_all_when_the_clock_is_already_past_the_slot() -> None:
    clock = FakeClock(100.0)
    limits = Limits(max_concurrency=4, rps=10.0, clock=clock)
    start, _, _ = limits.claim()
    clock.t = 200.0
    later, _, _ = limits.claim()
    assert (start, later) == (100.0, 200.0)
    assert math.isfinite(later)


def test_a_429d_request_waits_for_its_paced_slot_not_a_one_second_hint() -> None:
    limits = Limits(max_concurrency=4, clock=FakeClock())
    # Whole seconds are all Retry-After can say: "1" from a token bucket means "soon".
    assert limits.retry_delay(1.0, 1.0) == 0.0
    assert limits.retry_delay(None, 0.4) == 0.0
    # A longer hint is the server's word, and the retry policy's delay honours it.
    assert limits.retry_delay(5.0, 5.0) == 5.0


class LateClock(FakeClock):
    """A stepped clock whose every other sleep ends `late` seconds after it was due: the
    event loop busy elsewhere when the timer fired."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late, self.sleeps = late, 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        await super().sleep(seconds + (self.late if self.sleeps % 2 else 0.0))


@pytest.mark.anyio
@pytest.mark.parametrize("burst", [1, 10])
async def test_a_late_wake_is_not_caught_up_where_no_token_is_spare(burst: int) -> None:
    # A bucket of one token: a request that went 10 ms late and the next going on time
    # would reach the server 40 ms apart at 20/s, and the second would meet a 429. A
    # bigger bucket's spare token absorbs that, so there the pace catches up.
    clock = LateClock(late=0.010)
    limits = Limits(max_concurrency=1, rps=20, burst=burst, clock=clock)
    sent = []
    for _ in range(burst + 8):
        ticket = await limits.acquire()
        sent.append(clock.now())
        limits.done(ticket)
    gaps = [b - a for a, b in zip(sent[burst:-1], sent[burst + 1:], strict=True)]
    if burst == 1:
        assert min(gaps) >= 1 / 20
    else:
        assert min(gaps) < 1 / 20  # caught up: the spare token covers it
        # ... and the whole run is no later than the schedule (plus one late wake).
        assert sent[-1] - sent[burst] <= 7 / (20 * (1 - limits.rate.margin)) + 0.011
