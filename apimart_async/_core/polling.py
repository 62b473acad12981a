"""When to poll a task next: a pure function of what was observed.

The server gives two signals, both unreliable: `estimated_time` (often far off, and
blind to the queue) and `progress` (an integer that may stay at 0, move along an
s-curve, jump in coarse steps or sit at 99 %). The policy combines them:

- Progress is measured from when the task was last seen without it (pending, or at
  0 %), never from submission: time spent queued says nothing about the render.
- Two readings of rising progress give a rate and a trusted completion time; one
  reading, or the estimate alone, only an untrusted one, so the policy goes half-way
  to the earliest such time to learn more. An untrusted wait never exceeds the task's
  age, so a wrong guess costs a bounded share of the time already spent; except that
  when one reading and the estimate agree, nothing credible ends before the estimate's
  earliest credible end, and the second reading waits for it.
- Progress that does not move is a stall, not fresh evidence: once a task may end at
  any moment, it is polled every `watch_interval`, or a fraction of its age for long
  tasks (never faster: no poll storm, never slower: bounded lag).
- Readings are truncated integers (or coarse steps): the middle of each step is used.
- What a session learns about a model's tasks (`ModelStats`: queue times, render times,
  how the estimate compares with the real duration, the spread of durations, whether
  they sit at 99 %, failures) places the first poll of later tasks, polls a pending
  task at a share of the model's short renders however long it has queued (so long
  queues cost polls in proportion to the queue, never lag), watches a first 99 % as a
  stall for a model whose tasks sit there, and holds a model that had a task fail to
  `failure_interval` (a 1-s loop's pace) while its tasks render.

Every exponential goes through `backoff`, which is capped for any number of misses.
"""

from __future__ import annotations

import math
from array import array
from collections import deque

import attrs

from .errors import ValidationError
from .models import Task, TaskStatus

__all__ = [
    "ModelStats",
    "PollColumns",
    "PollPolicy",
    "PollState",
    "backoff",
    "missed",
    "next_delay",
    "observe",
    "predict_completion",
]

# How far off the estimate may be before anything is learned (actual / estimated).
_ESTIMATE_LOW, _ESTIMATE_HIGH = 0.6, 1.6
# Samples kept per model: enough for stable quantiles, bounded memory per session.
_SAMPLES = 256
_MIN_SAMPLES = 5
# The estimate's credible window, learned: the first tasks seen ending are those whose
# estimate was short (they were polled first), so a few samples overstate the ratio.
_RATIO_SAMPLES = 20


def backoff(base: float, misses: int, cap: float) -> float:
    """``base * 2 ** misses``, capped at `cap`: safe for any number of misses (no overflow)."""
    if misses <= 0:
        return min(base, cap)
    # 2**64 times any sane base is far above any cap; the exponent itself stays small.
    return min(cap, base * 2.0 ** min(misses, 64))


def _number(field: str, value: object, *, zero: bool = False, infinite: bool = False,
            what: str = "a number of seconds") -> float:
    """`value` if it is a real number (not a bool, not NaN) > 0 (>= 0 with `zero`), and
    finite unless `infinite`; else a `ValidationError` naming `field`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValidationError(field, f"must be {what}, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ValidationError(field, f"must be {'>= 0' if zero else '> 0'}, got {value!r}")
    if math.isinf(value) and not infinite:
        raise ValidationError(field, f"must be finite, got {value!r}")
    return float(value)


def _check(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    _number(attribute.name, value)


def _check_cap(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    _number(attribute.name, value, infinite=True)


def _check_margin(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    if _number(attribute.name, value, zero=True, what="a fraction") > 1:
        raise ValidationError(attribute.name, f"must be <= 1 (a fraction), got {value!r}")


def _check_fraction(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    if _number(attribute.name, value, what="a fraction") > 1:
        raise ValidationError(attribute.name, f"must be <= 1, got {value!r}")


def _check_give_up(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    if value is not None:
        _number(attribute.name, value, infinite=True)


def _within(policy: PollPolicy, default: float) -> float:
    """An interval's default, brought within the policy's bounds when they exclude it
    (``PollPolicy(min_interval=5, max_interval=5)`` polls every 5 s); the bounds' own
    checks come after, so anything not a number here is left for them to name."""
    lo, hi = policy.min_interval, policy.max_interval
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
        return min(max(default, lo), hi) if lo <= hi else default
    return default


@attrs.frozen(kw_only=True)
class PollPolicy:
    """Bounds for the adaptive poller, in API seconds.

    - `first_delay`: the first poll after submission, before anything is known about
      the task's model (later tasks of a model start from what earlier ones showed).
    - `min_interval`, `max_interval`: no two polls of a task closer or further apart.
    - `margin`: how far past a confident prediction to poll, as a fraction of the
      time still to go when the prediction was made (a little late beats a wasted poll).
    - `watch_interval`: the longest gap between polls once a task may end at any moment
      (past its predicted end, stalled, or rendering without progress); the default
      keeps a 1-s loop's worst-case lag with a margin for the time a request takes and
      for timing noise.
    - `age_fraction`: for long tasks that gap grows to this fraction of the task's age.
    - `failure_interval`: the longest gap between polls of a rendering task once the
      session has seen a task of its model fail: a failure comes unannounced, so it is
      seen as soon as a 1-s loop would see it, at the loop's pace (never faster).
    - `watch_interval` and `failure_interval` lie within [`min_interval`,
      `max_interval`]: their defaults (0.9 and 1.0) are brought within bounds that
      exclude them; a value given outside them is refused. `margin` is at most 1.
    - `give_up_after`: how long one task's polls may keep failing (5xx, 429, no
      connection, unreadable answers, each after the transport's own retries) before
      watching it gives up: its final update then carries the last poll's error, and
      `Session.wait` raises it. Counted from the first failed poll of a run of
      failures; a poll that succeeds starts the count over. None never gives up.
    """

    first_delay: float = attrs.field(default=2.0, validator=_check)
    min_interval: float = attrs.field(default=0.25, validator=_check)
    max_interval: float = attrs.field(default=30.0, validator=_check_cap)
    margin: float = attrs.field(default=0.01, validator=_check_margin)
    watch_interval: float = attrs.field(
        default=attrs.Factory(lambda self: _within(self, 0.9), takes_self=True),
        validator=_check,
    )
    failure_interval: float = attrs.field(
        default=attrs.Factory(lambda self: _within(self, 1.0), takes_self=True),
        validator=_check,
    )
    age_fraction: float = attrs.field(default=0.12, validator=_check_fraction)
    give_up_after: float | None = attrs.field(default=600.0, validator=_check_give_up)

    def __attrs_post_init__(self) -> None:
        lo, hi = self.min_interval, self.max_interval
        if lo > hi:
            raise ValidationError("min_interval", f"must not exceed max_interval ({hi!r}), "
                                  f"got {lo!r}")
        # Intervals outside [min_interval, max_interval] would be clamped away silently.
        for name in ("watch_interval", "failure_interval"):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValidationError(
                    name, f"must be between min_interval ({lo!r}) and max_interval "
                          f"({hi!r}), got {value!r}",
                )


Reading = tuple[float, int]
"""(time, progress as reported: the int read)."""


# No weak-reference slot: 176 bytes a running task instead of 192.
@attrs.define(weakref_slot=False)
class PollState:
    """What the poller has learned about one task (mutable; owned by one poller)."""

    started_at: float
    polls: int = 0
    # The last poll that saw no progress (pending, or 0 %): the render began after it.
    zero_at: float | None = None
    # Readings since then: the first, the one before the latest rise, the latest rise.
    first: Reading | None = None
    previous: Reading | None = None
    last: Reading | None = None
    # The rate between the two readings before the latest rise: is progress slowing?
    rate_before: float | None = None
    # How many distinct progress values were read.
    readings: int = 0
    # When the current progress value was first seen, and the time of the latest poll.
    since: float | None = None
    seen_at: float | None = None
    progress: int = 0
    # The progress step the server reports in (1, or e.g. 10 for coarse steps).
    quantum: int = 0
    estimated_time: float | None = None
    last_status: TaskStatus | None = None
    processing_seen: bool = False
    # Consecutive failed polls: the exponent of `backoff`; when the first of them was sent.
    misses: int = 0
    failing_since: float | None = None
    # Consecutive polls that read the last step before 100 (99 %, or 90 % in steps of 10).
    top_reads: int = 0


# A status as a small int in `PollColumns` (-1: none yet).
STATUSES: tuple[TaskStatus, ...] = tuple(TaskStatus)
STATUS_INDEX: dict[TaskStatus, int] = {status: i for i, status in enumerate(STATUSES)}
# The float columns of one slot; NaN stands for None (no time or rate is ever NaN).
_FLOATS = 9  # zero_at first[0] previous[0] last[0] rate_before since seen_at
#              estimated_time failing_since (started_at: the caller keeps it, see `load`)
_INTS = 9  # polls first[1] previous[1] last[1] readings progress quantum misses top_reads
_SMALL = 2  # last_status processing_seen
_NAN = math.nan


class PollColumns:
    """The `PollState`s of many tasks, in columns: one slot number per task, its fields
    as C doubles and ints, not a 208-byte object with boxed floats and reading tuples
    (#14: 100,000 tasks running at once). `load` fills a `PollState` the policy works
    on, `save` writes it back: the policy's functions see exactly the state they would
    have kept (the same values; a time kept as a C double is the float it was).

    A slot is taken by `new` and given back by `free`; a free slot is handed out again
    only by a later `new`, which sets every field afresh. A state's `started_at` is not
    kept here: its owner has it already (the poller's table keeps it from submission,
    before any poll), and gives it to `load`; it never changes.
    """

    __slots__ = ("_floats", "_free", "_ints", "_live", "_small")

    def __init__(self) -> None:
        self._floats = array("d")
        self._ints = array("i")
        self._small = array("b")
        # Free slots as C ints: once 100,000 tasks have ended, a list held 100,000 int
        # objects (~40 bytes each, 4 MB) where this holds 4 bytes each.
        self._free = array("i")
        self._live = 0

    def __len__(self) -> int:
        """How many slots are taken."""
        return self._live

    def new(self) -> int:
        """A slot with a fresh state's fields."""
        self._live += 1
        if self._free:
            slot = self._free.pop()
            f, i, b = slot * _FLOATS, slot * _INTS, slot * _SMALL
            self._floats[f:f + _FLOATS] = _FRESH_FLOATS
            self._ints[i:i + _INTS] = _FRESH_INTS
            self._small[b:b + _SMALL] = _FRESH_SMALL
        else:
            slot = len(self._small) // _SMALL
            self._floats.extend(_FRESH_FLOATS)
            self._ints.extend(_FRESH_INTS)
            self._small.extend(_FRESH_SMALL)
            self._grown(slot + 1)
        return slot

    def _grown(self, slots: int) -> None:
        """Hook: the columns now hold `slots` slots (a subclass grows its own)."""

    def free(self, slot: int) -> None:
        """Give `slot` back; once none is taken, the columns' memory goes too."""
        self._live -= 1
        if self._live == 0:
            self._floats, self._ints, self._small = array("d"), array("i"), array("b")
            self._free = array("i")
            self._grown(0)
        else:
            self._free.append(slot)

    def load(self, slot: int, state: PollState, started_at: float) -> PollState:
        """Fill `state` with `slot`'s fields, for a task submitted at `started_at`;
        return it."""
        f, i, b = slot * _FLOATS, slot * _INTS, slot * _SMALL
        floats, ints = self._floats, self._ints
        state.started_at = started_at
        (zero_at, first_at, previous_at, last_at, rate_before, since,
         seen_at, estimated_time, failing_since) = floats[f:f + _FLOATS]
        (state.polls, first, previous, last, state.readings, state.progress,
         state.quantum, state.misses, state.top_reads) = ints[i:i + _INTS]
        status, seen = self._small[b:b + _SMALL]
        # x != x: NaN, the column's None.
        state.zero_at = None if zero_at != zero_at else zero_at
        state.first = None if first_at != first_at else (first_at, first)
        state.previous = None if previous_at != previous_at else (previous_at, previous)
        state.last = None if last_at != last_at else (last_at, last)
        state.rate_before = None if rate_before != rate_before else rate_before
        state.since = None if since != since else since
        state.seen_at = None if seen_at != seen_at else seen_at
        state.estimated_time = None if estimated_time != estimated_time else estimated_time
        state.failing_since = None if failing_since != failing_since else failing_since
        state.last_status = None if status < 0 else STATUSES[status]
        state.processing_seen = bool(seen)
        return state

    def save(self, slot: int, state: PollState) -> None:
        """Write `state` into `slot` (all but `started_at`, which `load` is given)."""
        f, i, b = slot * _FLOATS, slot * _INTS, slot * _SMALL
        first, previous, last = state.first, state.previous, state.last
        status = state.last_status
        self._floats[f:f + _FLOATS] = array("d", (
            _nan(state.zero_at),
            _NAN if first is None else first[0], _NAN if previous is None else previous[0],
            _NAN if last is None else last[0], _nan(state.rate_before), _nan(state.since),
            _nan(state.seen_at), _nan(state.estimated_time), _nan(state.failing_since)))
        self._ints[i:i + _INTS] = array("i", (
            state.polls, 0 if first is None else first[1],
            0 if previous is None else previous[1], 0 if last is None else last[1],
            state.readings, state.progress, state.quantum, state.misses, state.top_reads))
        self._small[b] = -1 if status is None else STATUS_INDEX[status]
        self._small[b + 1] = state.processing_seen


def _nan(value: float | None) -> float:
    return _NAN if value is None else value


_FRESH_FLOATS = array("d", [_NAN] * _FLOATS)
_FRESH_INTS = array("i", [0] * _INTS)
_FRESH_SMALL = array("b", [-1, 0])


def observe(state: PollState, now: float, task: Task) -> None:
    """Fold one poll's answer into `state`."""
    state.polls += 1
    state.last_status = task.status
    state.misses = 0
    state.failing_since = None
    if task.estimated_time is not None and task.estimated_time > 0:
        state.estimated_time = float(task.estimated_time)
    if task.is_terminal:
        return
    state.seen_at = now
    if task.status is TaskStatus.PROCESSING:
        state.processing_seen = True
    progress = task.progress
    if progress < 100 - _step(state) or progress <= 0:
        state.top_reads = 0
    if progress <= 0:
        if state.last is None:
            state.zero_at = now
        if state.since is None or state.progress != 0:
            state.since = now
        state.progress = 0
        return
    if progress != state.progress or state.since is None:
        state.since = now
    if progress < state.progress:
        return  # progress never goes back; ignore a stale answer
    state.quantum = math.gcd(state.quantum, progress)
    if progress > state.progress:
        state.readings += 1
    # The int as read, not a float of it: the same arithmetic (small ints are exact as
    # floats), without a 32-byte float per reading (up to three kept per running task).
    reading = (now, progress)
    if state.first is None:
        state.first = state.last = reading
    elif progress > state.progress:
        if state.previous is not None and state.last is not None \
                and state.last[1] - state.previous[1] >= _SLOWING_RISE:
            state.rate_before = (state.last[1] - state.previous[1]) / (
                state.last[0] - state.previous[0])
        state.previous, state.last = state.last, reading
    state.progress = progress
    if progress >= 100 - _step(state):
        state.top_reads += 1


def missed(policy: PollPolicy, state: PollState, sent_at: float, now: float) -> float | None:
    """A poll sent at `sent_at` failed (a transient error, seen at `now`): seconds until
    the next one, backing off; None once polls have failed for `give_up_after`."""
    if state.misses == 0 or state.failing_since is None:
        state.failing_since = sent_at
    state.misses += 1
    delay = backoff(policy.min_interval, state.misses, policy.max_interval)
    if policy.give_up_after is None:
        return delay
    deadline = state.failing_since + policy.give_up_after
    if now >= deadline:
        return None
    # The last try lands on the deadline, not a whole backoff past it.
    return min(delay, deadline - now)


def _render_start(state: PollState) -> float:
    """The earliest the render can have begun: when last seen without progress."""
    return state.zero_at if state.zero_at is not None else state.started_at


def predict_completion(state: PollState) -> tuple[float, bool] | None:
    """(predicted completion time, confident?) from progress readings, or None.

    Confident needs two readings of rising progress; the rate comes from the latest
    two (an s-curve slows down near the end). With one reading the rate is measured
    from when the task was last seen without progress: the latest plausible end.
    """
    last = state.last
    if last is None:
        return None
    # A reported value stands for anywhere in its step: take the middle.
    done = last[1] + _step(state) / 2
    previous, first = state.previous, state.first
    if previous is not None and first is not None and last[0] > previous[0] \
            and last[1] > previous[1]:
        rate = (last[1] - previous[1]) / (last[0] - previous[0])
        if _slowing(state, rate):
            # Slowing down, as an s-curve does near its end: progress that closes in on
            # 100 along a parabola takes twice what the current rate says.
            return last[0] + 2 * max(0.0, 100 - done) / rate, True
        # Otherwise the widest span of readings gives the steadiest rate.
        rate = (last[1] - first[1]) / (last[0] - first[0])
        return last[0] + max(0.0, 100 - done) / rate, True
    start = _render_start(state)
    if last[0] > start:
        rate = done / (last[0] - start)
        return last[0] + max(0.0, 100 - done) / rate, False
    return None


# Rates over smaller rises are too coarse to tell an s-curve slowing down.
_SLOWING_RISE = 5


def _step(state: PollState) -> int:
    """The step progress is reported in: 1, unless every reading so far is a multiple
    of 10 (two readings at least) or 5 (three): one round number proves nothing."""
    if state.readings >= 2 and state.quantum % 10 == 0:
        return 10
    if state.readings >= 3 and state.quantum % 5 == 0:
        return 5
    return 1


@attrs.define
class ModelStats:
    """What a session learned about one model's tasks, from the tasks it saw end.

    Bounded: the latest `_SAMPLES` of each measure. Pure bookkeeping; `learn` is called
    by the poller with a task's final state.
    """

    ended: int = 0
    failed_mid_run: int = 0
    # Tasks read again just after reaching the last step: still there, or ended.
    top_stalls: int = 0
    top_ends: int = 0
    durations: deque[float] = attrs.field(factory=lambda: deque(maxlen=_SAMPLES))
    queues: deque[float] = attrs.field(factory=lambda: deque(maxlen=_SAMPLES))
    # Render times (the duration less the queue), per task whose render start is known.
    renders: deque[float] = attrs.field(factory=lambda: deque(maxlen=_SAMPLES))
    # actual duration / estimated_time, per task that had an estimate.
    ratios: deque[float] = attrs.field(factory=lambda: deque(maxlen=_SAMPLES))
    # Each measure sorted, until the next task ends: several quantiles are read per poll.
    _sorted: dict[str, list[float]] = attrs.field(factory=dict, init=False, repr=False,
                                                  eq=False)

    def learn(self, state: PollState, now: float, task: Task) -> None:
        """Fold in a task that ended (`task` is its final answer, seen at `now`)."""
        self.ended += 1
        self._sorted.clear()
        if task.status is TaskStatus.FAILED:
            # Seen rendering or not: it failed after submission, at a moment nothing
            # announced, and its model's next failure will be no better announced.
            self.failed_mid_run += 1
            return
        if task.status is not TaskStatus.COMPLETED:
            return
        if state.top_reads == 1:
            self.top_ends += 1
        # It ended between the previous poll and this one, usually just before this one
        # (polls aim just past predicted ends); the middle of a long gap otherwise.
        gap = now - state.seen_at if state.seen_at is not None else 0.0
        end = now - 0.5 * min(1.0, gap)
        duration = end - state.started_at
        if duration <= 0:
            return
        self.durations.append(duration)
        if state.estimated_time:
            self.ratios.append(duration / state.estimated_time)
        prediction = _start_from_readings(state)
        if prediction is not None:
            queue = max(0.0, prediction - state.started_at)
            self.queues.append(queue)
            if duration > queue:
                self.renders.append(duration - queue)

    def quantile(self, which: str, q: float, least: int = _MIN_SAMPLES) -> float | None:
        """The `q` quantile of `which` ('durations', 'queues', 'renders' or 'ratios'), or
        None if few."""
        ordered = self._sorted.get(which)
        if ordered is None:
            values: deque[float] = getattr(self, which)
            if len(values) < _MIN_SAMPLES:
                return None
            ordered = self._sorted[which] = sorted(values)
        if len(ordered) < least:
            return None
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def note(self, state: PollState) -> None:
        """Fold in a poll of a task still running (`state` as `observe` left it): learns,
        while the tasks still run, whether they sit at the last step."""
        if state.top_reads == 2:
            self.top_stalls += 1

    @property
    def stalls_at_top(self) -> bool:
        """True once this model's tasks, read again just after reaching the last step,
        were mostly still there: they sit at 99 % (post-processing) rather than end."""
        return self.top_stalls >= _MIN_SAMPLES and self.top_stalls > 2 * self.top_ends

    @property
    def fails_mid_run(self) -> bool:
        """True once a task of this model failed after it was submitted (seen rendering
        first or not: either way the failure came unannounced)."""
        return self.failed_mid_run > 0


def _start_from_readings(state: PollState) -> float | None:
    first, last = state.first, state.last
    if first is None or last is None or last[0] <= first[0] or last[1] <= first[1]:
        return None
    rate = (last[1] - first[1]) / (last[0] - first[0])
    return max(_render_start(state), first[0] - first[1] / rate)


def _first_delay(policy: PollPolicy, stats: ModelStats | None) -> float:
    short = stats.quantile("durations", 0.1) if stats is not None else None
    if stats is not None and stats.fails_mid_run:
        # A render may fail at any point: start watching as early as a 1-s loop would.
        return min(policy.failure_interval, short or policy.first_delay)
    if short is None:
        return policy.first_delay
    queue = (stats.quantile("queues", 0.5) if stats is not None else None) or 0.0
    # A first reading part-way into the shortest renders: early enough not to miss
    # them, late enough for the reading to say something.
    first = max(0.4 * short, queue + 0.3 * max(0.0, short - queue))
    learned = _queue_and_render(stats)
    if learned is not None:
        # Long queues vary more than renders: a render may begin as early as the
        # shortest queues end, and a first poll aimed past the typical queue would
        # miss the tasks that start early and render quickly.
        first = min(first, learned[0] + _PENDING_SHARE * learned[1])
    return first


# While a task may begin rendering, it is polled at this share of its model's short
# renders: one poll at least lands in every render, whose reading places the end.
_PENDING_SHARE = 0.8


def _queue_and_render(stats: ModelStats | None) -> tuple[float, float] | None:
    """(a short queue, a short render) of this model's tasks (5th and 10th
    percentiles), once learned."""
    if stats is None:
        return None
    queue, render = stats.quantile("queues", 0.05), stats.quantile("renders", 0.1)
    return (queue, render) if queue is not None and render is not None else None


def next_delay(policy: PollPolicy, state: PollState, now: float,
               stats: ModelStats | None = None) -> float:
    """Seconds from `now` until the next poll of the task described by `state`.

    `stats` is what the session learned about the task's model, if anything.
    """
    lo, hi = policy.min_interval, policy.max_interval
    if state.polls == 0:
        return min(hi, max(lo, _first_delay(policy, stats)))
    age = max(0.0, now - state.started_at)
    # The gap once the task may end (or fail) at any moment.
    watch = min(hi, max(policy.watch_interval, policy.age_fraction * age))
    rendering = state.last_status is TaskStatus.PROCESSING
    if rendering and stats is not None and stats.fails_mid_run:
        # This model's tasks fail unannounced: see a failure as soon as a 1-s loop would.
        watch = cap = policy.failure_interval
    else:
        cap = hi
    # Untrusted waits are bounded by the age of the task: a wrong guess costs a share
    # of the time already spent, however far off the guess.
    untrusted = min(cap, max(policy.watch_interval, age))

    estimate = _estimate_window(state, stats)
    prediction = predict_completion(state)
    if prediction is not None:
        when, confident = prediction
        if _stalled(state, now) or (state.top_reads and stats is not None
                                    and stats.stalls_at_top):
            # (A task at the last step of a model whose tasks sit there: a stall already,
            # not an end due at once that a quick poll would catch.)
            # Backoff in proportion to age, but a fresh stall (often the last step of a
            # long render) is watched closely first; not before this model's tasks
            # usually end, though.
            assert state.since is not None
            delay = min(watch, max(policy.watch_interval, now - state.since))
            shortest = _shortest_end(state, stats)
            if shortest is not None and shortest - now > delay:
                delay = min(untrusted, shortest - now)
        elif confident:
            delay = _confident_delay(policy, state, when - now, cap, watch)
        else:
            # One reading: half-way to the earliest plausible end, to get a second one
            # (straight to it when it is no further off than a watch would be).
            latest = when
            if estimate is not None and estimate[1] > now:
                when = min(when, estimate[1])
            remaining = when - now
            if state.estimated_time is not None and state.last is not None:
                # The render may have begun long after the task was last seen without
                # progress; the estimate bounds what a render has left.
                left = (1 - state.last[1] / 100) * state.estimated_time * _ratio(stats)
                remaining = min(remaining, max(policy.min_interval, left))
            learned = _queue_and_render(stats)
            if learned is not None:
                # This model's short renders end this soon after the render began (no
                # earlier than the last poll without progress): the second reading
                # must come before such an end, whatever a queue-blind estimate says.
                remaining = min(remaining, max(policy.min_interval,
                                               _render_start(state) + learned[1] - now))
            if remaining <= 0:
                delay = watch
            elif remaining <= watch:
                delay = remaining
            else:
                delay = min(untrusted, remaining / 2)
                if estimate is not None and estimate[0] <= latest:
                    # The estimate and the reading agree (the estimate's earliest credible
                    # end is no later than the reading's latest plausible one), and no
                    # credible end comes before that: the second reading can wait for
                    # it, late enough to pin the end closely.
                    delay = max(delay, min(cap, estimate[0] - now))
    elif state.last_status is TaskStatus.PENDING or not state.processing_seen:
        # Not started: nothing to catch until it renders; the estimate (if any) says
        # roughly how long a render is, so the whole render is never skipped.
        delay = min(untrusted, max(lo, 0.5 * age))
        if estimate is not None:
            delay = min(delay, max(watch, 0.5 * (estimate[0] - state.started_at)))
        learned = _queue_and_render(stats)
        if learned is not None:
            # However long it has queued (the queue's length is no clue to the
            # render's), a poll lands in its render: bounded lag at any age.
            delay = min(delay, max(policy.watch_interval, _PENDING_SHARE * learned[1]))
    else:
        # Rendering, no progress reported: nothing can be due before the earliest
        # credible end the estimate (or this model's earlier tasks) gives; from then on,
        # watch.
        earliest = max(estimate[0] if estimate else now, _shortest_end(state, stats) or now)
        delay = min(untrusted, earliest - now) if earliest > now else watch
    return min(hi, max(lo, delay))


# A confident prediction closer than this (API seconds) is polled just after it; a
# vaguer one gets a poll just before it, whose reading makes the next one exact.
_PRECISION = 0.25


def _confident_delay(policy: PollPolicy, state: PollState, remaining: float, cap: float,
                     watch: float) -> float:
    first, last = state.first, state.last
    assert first is not None
    assert last is not None
    rise = last[1] - first[1]
    # Each reading is off by up to half a step: the rate, so the end, by this much.
    ahead = remaining + (state.seen_at or last[0]) - last[0]
    spread = max(0.0, ahead) * _step(state) / rise
    if remaining <= 0:
        # Just past the prediction and progress still moving: at this rate it ends no
        # later than this; a stall is handled by the caller.
        latest = last[0] + (100 - last[1]) * (last[0] - first[0]) / rise + spread
        per_step = _step(state) * (last[0] - first[0]) / rise
        due = latest - (state.seen_at or last[0])
        return min(watch, max(policy.min_interval, due if due > 0 else per_step))
    if spread > _PRECISION:
        # Vague (coarse steps, or readings close together): read again at the earliest
        # credible end; that reading makes the next prediction sharp.
        return min(cap, max(policy.min_interval, remaining - spread))
    if cap <= watch:
        # Watched at a loop's pace anyway (a model seen failing): a poll that comes too
        # early costs one more than the loop's, one a little late costs nothing. Aim at
        # the latest credible end, the latest reading being up to a step behind.
        per_step = _step(state) * (last[0] - first[0]) / rise
        return min(cap, remaining * (1 + policy.margin) + spread + per_step / 2)
    return min(cap, remaining * (1 + policy.margin) + spread / 2)


def _shortest_end(state: PollState, stats: ModelStats | None) -> float | None:
    """When this model's tasks rarely end before (the 5th percentile of durations)."""
    shortest = stats.quantile("durations", 0.05) if stats is not None else None
    return state.started_at + shortest if shortest is not None else None


def _ratio(stats: ModelStats | None) -> float:
    """The typical actual / estimated duration for the model (1 until learned)."""
    learned = stats.quantile("ratios", 0.5) if stats is not None else None
    return learned if learned is not None else 1.0


def _stalled(state: PollState, now: float) -> bool:
    """Progress has not moved for longer than one reporting step should take."""
    if state.since is None or state.since >= now or state.last is None:
        return False
    step = _step(state)
    previous, last = state.previous, state.last
    if previous is not None and last[0] > previous[0] and last[1] > previous[1]:
        rate = (last[1] - previous[1]) / (last[0] - previous[0])
        per_step = step / rate
        first = state.first
        if first is not None and _step(state) == 1 and last[0] > first[0] \
                and rate < 0.5 * (last[1] - first[1]) / (last[0] - first[0]):
            # Closing in on 100 along a curve (far slower now than on average): each
            # step takes longer than the last, so unchanged progress is not a stall yet.
            per_step *= 4
        return now - state.since > per_step
    return True


def _slowing(state: PollState, rate: float) -> bool:
    previous, last = state.previous, state.last
    return (_step(state) == 1 and state.rate_before is not None
            and previous is not None and last is not None
            and last[1] - previous[1] >= _SLOWING_RISE and rate < 0.8 * state.rate_before)


def _estimate_window(state: PollState, stats: ModelStats | None
                     ) -> tuple[float, float, float] | None:
    """(earliest credible, likely, latest credible) end times from `estimated_time`."""
    if state.estimated_time is None:
        return None
    low, mid, high = _ESTIMATE_LOW, 1.0, _ESTIMATE_HIGH
    if stats is not None:
        learned = (stats.quantile("ratios", 0.05, _RATIO_SAMPLES),
                   stats.quantile("ratios", 0.5, _RATIO_SAMPLES),
                   stats.quantile("ratios", 0.95, _RATIO_SAMPLES))
        if learned[0] is not None and learned[1] is not None and learned[2] is not None:
            low, mid, high = learned[0], learned[1], learned[2]
    base = state.started_at
    return (base + low * state.estimated_time, base + mid * state.estimated_time,
            base + high * state.estimated_time)
