"""When to poll a task next: a pure function of what was observed.

The server gives two signals: `estimated_time` (often far off) and `progress`.
Progress measured at two moments gives a rate, and the rate gives a completion time
we can trust; a single reading or the estimate alone give one we only half trust,
so we poll half-way to it to get a second reading. Once past a prediction without
completion, the policy stops guessing and backs off, bounded by `max_interval`.
"""

from __future__ import annotations

import attrs

from .models import Task, TaskStatus
from .validation import require_positive_or_none

__all__ = ["PollPolicy", "PollState", "next_delay", "observe", "predict_completion"]


def _check(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    require_positive_or_none(attribute.name, value)


def _check_margin(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    require_positive_or_none(attribute.name, value, allow_zero=True)


@attrs.frozen(kw_only=True)
class PollPolicy:
    """Bounds for the adaptive poller, in API seconds.

    - `first_delay`: the first poll after submission, before anything is known.
    - `min_interval`, `max_interval`: no two polls of a task closer or further apart.
    - `margin`: how far past a confident prediction to poll, as a fraction of the
      time still to go when the prediction was made (a little late beats a wasted poll).
    """

    first_delay: float = attrs.field(default=2.0, validator=_check)
    min_interval: float = attrs.field(default=0.25, validator=_check)
    max_interval: float = attrs.field(default=30.0, validator=_check)
    margin: float = attrs.field(default=0.02, validator=_check_margin)

    def __attrs_post_init__(self) -> None:
        if self.min_interval > self.max_interval:
            from .errors import ValidationError

            raise ValidationError(
                "min_interval", f"must not exceed max_interval ({self.max_interval})"
            )


@attrs.define
class PollState:
    """What the poller has learned about one task (mutable; owned by one poller)."""

    started_at: float
    polls: int = 0
    # (time, progress) of the first reading with progress > 0, and of the latest one.
    first_progress: tuple[float, int] | None = None
    last_progress: tuple[float, int] | None = None
    estimated_time: float | None = None
    last_status: TaskStatus | None = None
    # Consecutive polls scheduled with no prediction ahead: the backoff exponent.
    misses: int = 0


def observe(state: PollState, now: float, task: Task) -> None:
    """Fold one poll's answer into `state`."""
    state.polls += 1
    state.last_status = task.status
    if task.estimated_time is not None and task.estimated_time > 0:
        state.estimated_time = float(task.estimated_time)
    if task.progress > 0 and not task.is_terminal:
        reading = (now, task.progress)
        if state.first_progress is None:
            state.first_progress = reading
        elif task.progress > state.first_progress[1]:
            state.last_progress = reading


def predict_completion(state: PollState) -> tuple[float, bool] | None:
    """(predicted completion time, confident?) from the readings, or None."""
    first, last = state.first_progress, state.last_progress
    if first is not None and last is not None and last[0] > first[0]:
        rate = (last[1] - first[1]) / (last[0] - first[0])
        if rate > 0:
            return last[0] + (100 - last[1]) / rate, True
    if first is not None and first[0] > state.started_at:
        # One reading: assume progress ran from the start; time queued makes this late.
        rate = first[1] / (first[0] - state.started_at)
        return first[0] + (100 - first[1]) / rate, False
    if state.estimated_time is not None:
        return state.started_at + state.estimated_time, False
    return None


def next_delay(policy: PollPolicy, state: PollState, now: float) -> float:
    """Seconds from `now` until the next poll of the task described by `state`."""
    if state.polls == 0:
        return min(policy.max_interval, max(policy.min_interval, policy.first_delay))
    prediction = predict_completion(state)
    if prediction is None or prediction[0] <= now:
        # Past the prediction, or none at all: bounded exponential backoff.
        state.misses += 1
        delay = policy.min_interval * 2.0**state.misses
    else:
        state.misses = 0
        when, confident = prediction
        remaining = when - now
        if confident:
            delay = remaining * (1 + policy.margin)
        elif remaining >= 8 * policy.min_interval:
            # Half-trusted: go half-way, to catch an estimate that is far too long
            # and to get a second progress reading for a trusted rate.
            delay = remaining / 2
        else:
            delay = remaining
    return min(policy.max_interval, max(policy.min_interval, delay))
