"""Request pacing under a per-key rate limit, sans I/O: pure state on the caller's clock.

The server is modelled as what rate limits almost always are, a token bucket: `rate`
tokens a second, at most `burst` kept. A 429 says the bucket held less than one token
when that request arrived; an accepted request says it held one. So between two 429s
sent at `t0` and `t1`, with `A` requests accepted in between, the bucket refilled
``A + x`` tokens for some ``x`` in (-1, 1): ``rate ~ (A + 0.5) / (t1 - t0)``, closer the
longer the span, whatever the rate's scale. (Unless the bucket overflowed meanwhile,
which only a pace below the rate allows; the accepts then show it: k requests accepted
within a span `d` need ``rate >= (k - burst) / d``.)

`RateLearner` runs in three phases:

- *rate given* (`rate=`, and `burst=` if known): a mirror token bucket paces every
  request: the burst (less one token kept spare for the network's jitter) goes at once,
  and the pace starts from its first answer, a hair (`margin`) under the rate. A 429
  then can only be jitter: the margin widens (up to 10 %); the rate is not relearned.
- *slow start* (nothing known): requests in flight are capped by a window that starts at
  `initial_window` and grows by `growth` per accepted request, so the burst is spent
  within a few dozen round trips while few requests are on the wire when it runs out
  (those few meet the 429s learning costs). A server without a limit sees the window
  outgrow the concurrency cap.
- *tracking* (after the first 429): until the next 429 the pace doubles every `ramp`
  seconds of sending from a first guess (``1 / Retry-After``, or the burst per second);
  from then on it is the estimate from the first 429 to the latest, clamped by what the
  latest accepts prove (``rate < 1 / gap`` for a 429 a gap after the last accept), and
  intersected with what earlier 429s taught. Between 429s the pace rises by `drift`
  times the square of the estimate's uncertainty per second, over the burst (a bigger
  bucket absorbs a longer lag), so a rate learned too low is raised back before the
  bucket overflows; the next 429 then comes after a span several times longer and
  narrows the estimate again. The 429s this costs grow with the logarithm of the batch's
  length. An estimate under `min_rate` (429s with nothing accepted between them: a
  gateway's storm, likelier than a bucket that slow) starts learning afresh, as after a
  first 429, at most once a minute. A bucket of one or two tokens has none spare for
  the network's jitter, so there each 429 also widens the pace's berth from the rate
  (`margin`, up to 5 %).

A *storm* is the server refusing everything for a while (a gateway, an outage), which
no token bucket does: 429s in a row with nothing accepted between them, from the second
with a rate given, from the third on a learned pace once the rate was known within a
fifth when the run began (or the run lasted long enough for the least rate the accepts
before it proved to refill `_STORM_TOKENS`). Read as a bucket, each would drag the
estimate down towards the floor; instead the whole session pauses, 0.25 s doubling to
2 s, the margin stays, and on a learned pace the first accept after the storm starts
learning afresh, as at the start (the bucket refilled meanwhile). This runs only when a
429 comes, and on that one accept.

A storm *early* in the run (the rate not yet known within a fifth: before any accept, or
after the first burst) is no storm to the rules above: its 429s come down the ramp with
growing gaps, as a slow bucket's first guesses do. But when such a run lasted half a
second or more (span `S`) and an accept ends it, a bucket that slow (under ``1 / S``)
holds under ``g / S`` tokens after it (`g` since the run's latest 429): the next
``floor(g / (S - 0.1)) + 1`` requests go 0.1 s apart, and if all are accepted it was a
storm: learning starts afresh, as after one. One refused: the estimate stands, and no
such probe is tried again (a probe a minute at most before that).

At a bucket of one token (given or learned) a request whose wait for its slot ended
late (`sent`) pushes the next slot an interval past when it went: with nothing spare,
a late request followed by an on-time one would reach the server too close together.

A `Retry-After` hint longer than the header's one-second granularity pauses every
request until it passes; a hint of one second is what any token bucket answers (the next
token is less than a second away), so it only seeds the first guess of the rate (and
the request that met it waits for its paced slot: `Limits.retry_delay`).

Times are the caller's clock readings; a request's ticket is the time its slot was
claimed for (`jitter` allows for how far apart the server may see two requests sent
together).
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RateLearner"]

# Seconds between two fresh starts of learning from under the floor (a storm of 429s).
_RESTART_EVERY = 60.0
# 429s in a row, nothing accepted between them, that make a storm (learned pace; with a
# rate given, the second is one already): a token bucket paced near its rate accepts
# again within a 429 or two.
_STORM_STREAK = 3
# How well the rate must be known (its uncertainty, a fraction of it) before a run of
# 429s is read as a storm.
_SETTLED = 0.2
# ... or a run of 429s lasting long enough for the least rate the accepts before it
# proved to have refilled this many tokens.
_STORM_TOKENS = 1.5
# A run of 429s, nothing accepted between them, begun before the rate was known, that
# lasted this long (seconds) may have been a storm: its first accept starts a probe.
# (The ramp's first guesses overshoot a bucket of 2/s or more for a quarter of a second
# at most; a shorter storm is not told from that.)
_FRESH_SPAN = 0.5
# The probe's requests go this far apart (seconds): a bucket of 10/s or more refills a
# token between two, so a storm with a bucket of one token is told too.
_PROBE_AFTER = 0.1
# The session's pause after each further 429 of a storm: doubling from the first, capped.
_STORM_FIRST = 0.25
_STORM_MAX = 2.0


class RateLearner:
    """What the session knows of the API host's rate limit, and when a request may go.

    Pure state driven by the caller's clock readings (seconds). Before sending, the
    caller checks `window` (a cap on requests in flight, or None) and claims a slot with
    `claim(now)`, which returns when the request may go and its ticket; it reports each
    answer with `on_accepted(ticket)` or `on_throttled(ticket, now, retry_after)`. A
    slot claimed before `epoch` changed is claimed again: the pace changed meanwhile.
    """

    def __init__(
        self,
        *,
        rate: float | None = None,
        burst: int | None = None,
        max_window: int = 1 << 30,
        initial_window: int = 4,
        growth: float = 0.125,
        ramp: float = 0.05,
        drift: float = 2.0,
        min_rate: float = 0.2,
        jitter: float = 0.002,
        margin: float = 0.005,
    ) -> None:
        #: The rate the user gave (trusted: paced at, never relearned), or None.
        self.given = rate
        self.growth = growth
        self.ramp = ramp
        self.drift = drift
        self.min_rate = min_rate
        # How far apart the server may see two requests sent together (seconds).
        self.jitter = jitter
        # How far under the rate the pace keeps (a fraction): a request right on a
        # token's edge meets a 429.
        self.margin = margin
        self.max_window = max_window
        self._initial_window = initial_window
        #: Requests accepted so far, and 429s met.
        self.accepted = 0
        self.throttled = 0
        #: The server's burst as known: given, or what was accepted before the first 429.
        self.burst = burst if burst is not None else 1
        #: The learned rate (None until a second 429 bounds it).
        self.rate: float | None = None
        #: Bumped whenever the pace changes at a 429: slots claimed before are claimed again.
        self.epoch = 0
        # (A window no smaller than the concurrency cap would hold nothing back.)
        self._window: float | None = (
            float(initial_window) if initial_window < max_window else None)
        # With a rate given, the burst goes at once and the pace starts at its first
        # answer: the server's bucket stays full (its refill lost) until the burst
        # arrives, which a new connection can delay by tens of milliseconds.
        self._anchor = rate is not None
        if rate is not None:
            self._window = float(max(1, self.burst - 1))
        # The mirror bucket (GCRA): the time the next request may go at the pace.
        self._tat = -math.inf
        self._paused_until = -math.inf
        # The reference 429 (send time) and the accepts sent since: the long span.
        self._ref: float | None = None
        self._since_ref = 0
        # The latest 429 used, the span from the reference to it, the accepts since.
        self._last = -math.inf
        self._span = 0.0
        self._uncertainty = 0.0
        self._recent: deque[float] = deque()
        # 429s for requests sent before this were already on the wire when the session
        # reacted to a 429: they say nothing new.
        self._reacted_at = -math.inf
        # Until the second 429: the ramp's pace.
        self._ramp_pace = 1.0
        # The latest accept since the latest 429 (send time), and the longest pause
        # between slots since the reference (in which the bucket may have overflowed).
        self._last_accept = -math.inf
        self._prev_slot = -math.inf
        self._max_gap = 0.0
        # When learning last started afresh from under the floor (a storm of 429s).
        self._restarted_at = -math.inf
        # 429s reacted to in a row with nothing accepted between them, and `accepted`
        # at the latest: a storm (the server refusing everything) is told from a bucket
        # that is merely empty by this, read only when a 429 comes.
        self._streak = 0
        self._accepted_at_429 = -1
        self._calm = False
        # When the run of 429s started, and the least rate the accepts before it proved.
        self._run_start, self._run_floor = -math.inf, 0.0
        # Pauses so far in this run (each twice the one before).
        self._pauses = 0
        # Set during a storm on a learned pace: the first accept after it starts
        # learning afresh (the estimate the storm's 429s taught is no token bucket's).
        self._storm = False
        # When the first accept after an early run of 429s last started a probe (+inf
        # once a probe was refused), that accept's ticket while the probe runs, and the
        # probe's accepts still needed to tell a storm from a slow bucket.
        self._fresh_at = -math.inf
        self._probe: float | None = None
        self._probes = 0
        # `accepted` when learning last started afresh: the burst counts from there.
        self._accepted_before = 0

    # -- what the caller asks ------------------------------------------------------------

    @property
    def window(self) -> int | None:
        """How many requests may be in flight while the burst is being found (None: no cap)."""
        return None if self._window is None else int(self._window)

    @property
    def free(self) -> bool:
        """Whether a request may go at once, unpaced (no limit given, met or paused for)."""
        return (self._window is None and self._ref is None and self.given is None
                and self._paused_until == -math.inf)

    def pace(self, now: float) -> float | None:
        """The rate requests are paced at, at time `now` (None: not paced)."""
        if self._ref is None:
            return self.given
        if self.rate is None:
            p = self._ramp_pace
        else:
            # Probe upward: fast enough that a rate learned `uncertainty` too low is
            # caught up with before the bucket overflows, slow enough that the next 429
            # comes after a span several times longer.
            u = self._uncertainty
            p = self.rate + self.drift * u * u * max(0.0, now - self._last) / (self.burst + 1)
        return max(p, self.min_rate)

    def claim(self, now: float) -> tuple[float, float, int]:
        """Claim the next slot: (when it may go, its ticket, the epoch it was paced under).

        The ticket is the send time; pass it back with the answer.
        """
        start = max(now, self._paused_until)
        p = self.pace(start)
        if p is None:
            return start, start, self.epoch
        start = max(start, self._tat - self._tolerance(p))
        # The gap to the next slot is at the pace of this slot's time (it may drift).
        p = self.pace(start) or p
        if self._ref is not None:
            self._max_gap = max(self._max_gap, start - max(self._prev_slot, self._ref))
            self._prev_slot = start
        self._tat = max(self._tat, start) + self._interval(p)
        if self._ramping:
            self._ramp_pace = p + math.log(2.0) / self.ramp
        return start, start, self.epoch

    def sent(self, ticket: float, now: float) -> None:
        """The request claimed for `ticket` went at `now` (its wait ended late).

        A bucket of one token keeps nothing spare: a request that went late and the
        next one going on time would reach the server closer than one interval apart,
        and the second would meet a 429. So there the next slot is an interval after
        the late one, not after its ticket (the time lost is not caught up). A bigger
        bucket's spare token absorbs the lateness: nothing changes.
        """
        if self.burst <= 1 and now > ticket:
            p = self.pace(now)
            if p is not None:
                self._tat = max(self._tat, now + self._interval(p))

    def _tolerance(self, p: float) -> float:
        # Before any 429 the mirror bucket holds `burst` tokens: the server's burst.
        # (Less one, when it has more: a spare token absorbs the network's jitter.)
        if self._ref is not None:
            return 0.0
        spare = 2 if self.burst > 2 else 1
        return (self.burst - spare) / p

    @property
    def _ramping(self) -> bool:
        return self._ref is not None and self.rate is None

    def _interval(self, p: float) -> float:
        if not self._ramping:
            # A hair under the rate: a request right on the token's edge meets a 429.
            return 1.0 / (p * (1.0 - self.margin))
        # A pace doubling every `ramp` seconds: the next slot is where its integral
        # reaches one request (and the pace there is `ln 2 / ramp` higher).
        growth = math.log(2.0) / self.ramp
        return math.log1p(growth / p) / growth

    # -- what the caller reports ---------------------------------------------------------

    def on_accepted(self, ticket: float, now: float | None = None) -> None:
        """The request sent at `ticket` was accepted (it took a token), answered at `now`
        (needed while `window` is not None)."""
        self.accepted += 1
        if self._anchor:
            self._anchor = False
            self._window = None
            answered = ticket if now is None else now
            p = self.pace(answered) or 1.0
            # The server's bucket was full until the burst arrived, by the answer at the
            # latest: the next token (the spare one kept aside) is due an interval later.
            self._tat = max(self._tat, answered + self._interval(p) + self._tolerance(p))
        elif self._window is not None:
            self._window += self.growth
            if self._window >= self.max_window:
                self._window = None  # no limit met while filling the concurrency cap
        if self._ref is None:
            return
        if ticket > self._ref:
            self._since_ref += 1
        if ticket > self._last:
            if self._probe is not None and ticket >= self._probe:
                self._probes -= 1
                if self._probes <= 0:
                    # More accepted than a bucket that slow could have held: a storm.
                    self._probe = None
                    self._after_storm()
                    return
                self._tat, self.epoch = ticket + _PROBE_AFTER, self.epoch + 1
            elif self._storm:
                self._after_storm()
                return
            elif (self._last_accept == -math.inf and self._streak >= _STORM_STREAK
                    and not self._calm and self._last - self._run_start >= _FRESH_SPAN
                    and ticket - self._fresh_at >= _RESTART_EVERY):
                # The first accept after a run of 429s, nothing accepted between them,
                # that began before the rate was known and lasted `span`: a storm early
                # in the run (the bucket refilled meanwhile), or a bucket slower than
                # 1 / span (it refilled under a token in the run) whose first guesses
                # were coming down. Such a bucket holds under `gap / span` tokens after
                # this accept (`gap` since the run's latest 429), and gains under 0.1 /
                # span in each 0.1 s: probe with that many requests and one more, 0.1 s
                # apart. All accepted: a storm, learn afresh as after one. One refused:
                # the bucket is that slow, its estimate stands (and no probe again).
                span = self._last - self._run_start
                self._fresh_at = self._probe = ticket
                self._probes = math.floor((ticket - self._last) / (span - _PROBE_AFTER)) + 1
                self._tat, self.epoch = ticket + _PROBE_AFTER, self.epoch + 1
            self._last_accept = max(self._last_accept, ticket)
            recent = self._recent
            recent.append(ticket)
            while len(recent) > 4 * self.burst + 16:
                recent.popleft()

    def _recent_floor(self) -> float:
        # k accepts within a span d needed at least k - burst tokens refilled in it.
        recent = self._recent
        best = 0.0
        for i, first in enumerate(recent):
            k = len(recent) - i
            d = recent[-1] - first
            if k > self.burst and d > 0:
                best = max(best, (k - self.burst) / (d + self.jitter))
        return best

    def on_throttled(self, ticket: float, now: float, retry_after: float | None) -> None:
        """The request sent at `ticket` met a 429 answered at `now` (hint in seconds)."""
        self.throttled += 1
        if self._probe is not None and ticket >= self._probe:
            # A probe refused: the run was a bucket that slow, not a storm; probing
            # again would cost a 429 a minute (a bucket under the floor meets many).
            self._probe, self._fresh_at = None, math.inf
        if retry_after is not None and retry_after > 1.0:
            # Longer than the header's granularity: the server means it; nobody sends
            # before it passes.
            self._paused_until = max(self._paused_until, ticket + retry_after)
            self.epoch += 1
        if ticket < self._reacted_at:
            return
        self._reacted_at = now
        if self.given is not None:
            # (Nothing else counts accepts at a given rate: `accepted` tells.)
            quiet = self.accepted == self._accepted_at_429
            self._accepted_at_429 = self.accepted
        else:
            # Nothing sent after the latest 429 was accepted.
            quiet = self._ref is not None and self._last_accept == -math.inf
        if quiet:
            self._streak += 1
        else:
            # A run starts: was the rate known before it? (A run that starts while it
            # is still being found is the estimate coming down, not a storm.)
            self._streak, self._calm = 1, self._settled
            self._run_start, self._run_floor, self._pauses = ticket, 0.0, 0
        if self._streak >= (2 if self.given is not None else _STORM_STREAK) and (
                self.given is not None or self._calm
                or (ticket - self._run_start) * self._run_floor >= _STORM_TOKENS):
            # A storm: the server refused every request for a while (a gateway, an
            # outage), not a bucket paced a little fast. The pace says nothing about
            # it: back off, the whole session at once, so a storm shorter than the
            # retries' budget costs a few 429s and no request its last attempt.
            self._storm_pause(ticket)
            return
        if self.given is not None:
            # The rate was given: trust it. A 429 at it is the network bunching requests
            # (jitter): keep a wider berth from the rate, up to a tenth, and let the
            # bucket refill one token before the next request.
            self.margin = min(0.1, self.margin + 0.01)
            self._anchor, self._window = False, None
            # (Slots claimed before are claimed again: the epoch changes.)
            self._tat = ticket + self._interval(self.given) + self._tolerance(self.given)
            self.epoch += 1
            return
        if self._ref is None:
            # The burst is spent: what was accepted so far is about its size.
            self._window = None
            self.burst = max(1, self.accepted - self._accepted_before)
            self._ref, self._since_ref = ticket, 0
            hint = retry_after if retry_after is not None and retry_after > 0 else 1.0
            # A first guess: a burst is often about a second's worth of the rate.
            self._ramp_pace = max(self.min_rate, 1.0 / hint, float(self.burst))
            self._settle(ticket)
            return
        if ticket <= self._ref:
            return
        if self.burst <= 2:
            # No token spare: a 429 near the rate may be the network bunching two
            # requests, so keep a wider berth from the rate, as with a rate given.
            self.margin = min(0.05, self.margin + 0.005)
        # Above: since the latest accept (or 429) the bucket held under one token more
        # than it refilled, and it cannot have overflowed (a full bucket accepts).
        since = ticket - max(self._last_accept, self._last)
        high = 1.0 / (since - self.jitter) if since > self.jitter else math.inf
        low = self._recent_floor()
        span = ticket - self._ref
        count = self._since_ref
        estimate = (count + 0.5) / span
        # (Pacing a hair under the rate lets a small bucket overflow by `margin` a
        # request: the count may undershoot by that much.)
        lo = max(low, (count - 1) / span)
        hi = min(high, (count + 1 + 2 * self.margin * count) / span)
        valid = True
        if self._streak == 1 and self.rate is not None:
            # (Not at the ramp's end: its count includes what the bucket held.)
            self._run_floor = max(0.0, lo)
        if lo > hi or self._max_gap * min(high, 2 * hi) >= self.burst + 1:
            # The span had a pause long enough for the bucket to overflow, or it
            # disagrees with the latest accepts: its count undershoots. Measure from
            # this 429 on, and estimate from the latest accepts alone.
            self._ref, self._since_ref, self._max_gap = ticket, 0, 0.0
            lo, hi, span, valid = low, high, 0.0, False
            estimate = 0.5 * (max(lo, 0.5 * hi) + hi) if math.isfinite(hi) else lo
        if self.rate is not None:
            # What earlier 429s taught still holds where it agrees with this one.
            old_lo, old_hi = self.rate - self._uncertainty, self.rate + self._uncertainty
            if max(lo, old_lo) <= min(hi, old_hi):
                lo, hi = max(lo, old_lo), min(hi, old_hi)
        estimate = min(max(estimate, lo), hi)
        if not estimate >= self.min_rate and ticket - self._restarted_at >= _RESTART_EVERY:
            # Under the floor: 429s with (nearly) nothing accepted between them, each a
            # longer gap after the one before. A bucket that slow is below what the
            # session paces at anyway; far likelier the server refused everything for a
            # while (a gateway's storm), which the growing gaps have waited out. Learn
            # afresh from here, as after a first 429 (a ramp from the floor), instead of
            # pacing at the floor and creeping up from it at the square of a tiny rate.
            # (Once a minute at most: a bucket truly under the floor pays a ramp's
            # 429s a minute, not one every few requests.)
            self._restarted_at = ticket
            self.rate = None
            self._uncertainty = 0.0
            self._ref, self._since_ref, self._max_gap = ticket, 0, 0.0
            self._ramp_pace = self.min_rate
            self._settle(ticket)
            return
        self.rate = estimate
        # How far off the estimate may be sets how fast the pace probes upward.
        self._span = span
        width = 0.5 * (hi - lo) if hi < math.inf else estimate
        if valid:
            width = min(width, 1.0 / span)
        # (Bounds from a few accepts alone are at the mercy of the network's jitter.)
        self._uncertainty = max(width, (0.01 if valid else 0.025) * estimate)
        self._uncertainty = min(self._uncertainty, estimate)
        self._settle(ticket)

    @property
    def _settled(self) -> bool:
        # The rate is known within a fifth: a run of 429s is then no overshoot of it.
        # (Early on, the first guesses may overshoot a slow bucket by far, and a few
        # 429s in a row are how the estimate comes down.)
        rate = self.rate
        return rate is not None and self._uncertainty <= _SETTLED * rate

    def _storm_pause(self, ticket: float) -> None:
        step = min(_STORM_MAX, _STORM_FIRST * 2.0 ** self._pauses)
        self._pauses += 1
        self._paused_until = max(self._paused_until, ticket + step)
        self.epoch += 1
        if self.given is None:
            self._storm = True

    def _after_storm(self) -> None:
        # The storm is over (a request sent after its latest 429 was accepted). Its
        # 429s taught nothing of the bucket, which refilled meanwhile: learn afresh as
        # at the start (spend the burst, then measure), not from an estimate the storm
        # dragged down (once that sat just above the floor, the pace crept back up at
        # the square of a tiny uncertainty: 100 requests took 50 s instead of 5).
        self._storm = False
        self._streak = 0
        self._accepted_before = self.accepted - 1  # this accept is the burst's first
        self._window = (float(self._initial_window)
                        if self._initial_window < self.max_window else None)
        self.rate = None
        self._uncertainty = 0.0
        self._ref, self._since_ref, self._max_gap = None, 0, 0.0
        self._last = self._last_accept = self._prev_slot = -math.inf
        self._recent.clear()
        self._tat = -math.inf
        self.epoch += 1

    def _settle(self, ticket: float) -> None:
        # The bucket was empty at `ticket`: the next token comes about one interval later.
        self.epoch += 1
        self._last = ticket
        self._recent.clear()
        self._last_accept = -math.inf
        self._prev_slot = ticket
        p = self.pace(ticket) or self.min_rate
        self._tat = ticket + self._interval(p)
        if self._ramping:
            self._ramp_pace = p + math.log(2.0) / self.ramp
