"""Task timing profiles for the emulator: how long tasks queue, render and report progress.

Real generation jobs queue for seconds to minutes, report progress unevenly and vary
in length; a client tuned against perfectly linear 4-8 s tasks can be badly wrong
against them. A `TimingProfile` draws each task's `TaskPlan` from such a world, and
`progress_at` turns a plan and a moment into the (status, progress) the API reports:
a pure function, so a task's answers depend only on its plan and the time.

Named profiles (`PROFILES`): the presets ``kind`` (today's defaults: short queues,
linear progress), ``realistic`` and ``hostile``, and one profile per benchmark scenario
(``pending-15``, ``s-curve``, ``stall-99``, ...), so an app can be tested against one bad
case at a time.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

import attrs

__all__ = [
    "PROFILES",
    "PRESETS",
    "DurationDistribution",
    "ProgressMode",
    "TimingProfile",
    "resolve_profile",
]

ProgressMode = Literal["linear", "none", "s-curve", "stall", "steps"]
"""How progress moves during the render.

- ``linear``: in proportion to the time rendered.
- ``none``: 0 until the task ends.
- ``s-curve``: slow start, fast middle, slow finish (smoothstep).
- ``stall``: reaches 99 % at `TimingProfile.stall_at` of the render, then stays there.
- ``steps``: linear, reported in coarse steps (multiples of `TimingProfile.step`).
"""

DurationDistribution = Literal["uniform", "lognormal"]

PROGRESS_MODES: tuple[ProgressMode, ...] = ("linear", "none", "s-curve", "stall", "steps")


def _range(_: object, attribute: attrs.Attribute[tuple[float, float]],
           value: tuple[float, float]) -> None:
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high < low:
        raise ValueError(f"{attribute.name} must be a range (low, high) with 0 <= low <= high,"
                         f" got {value!r}")


def _fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _modes(_: object, attribute: attrs.Attribute[tuple[ProgressMode, ...]],
           value: tuple[ProgressMode, ...]) -> None:
    if not value or any(mode not in PROGRESS_MODES for mode in value):
        raise ValueError(f"{attribute.name} must be a non-empty tuple of {PROGRESS_MODES},"
                         f" got {value!r}")


@attrs.frozen(kw_only=True)
class TimingProfile:
    """How the tasks of a model are timed, in API seconds. Each task draws its own values.

    - `render`, `distribution`, `median`: render time (after the queue). ``uniform`` draws
      from the range; ``lognormal`` has the given `median` (default: the range's geometric
      middle) and log-spread `sigma`, clipped to the range: a heavy tail.
    - `queue_time`, `queue_fraction`: the task is ``pending`` for a draw from `queue_time`
      plus a draw from `queue_fraction` times its render time, then renders.
    - `estimate_bias`, `estimate_error`: ``estimated_time`` is the render time times
      `estimate_bias` times (1 +- up to `estimate_error`); `estimate_includes_queue` adds
      the queue time first.
    - `progress`: the progress modes; each task draws one (see `ProgressMode`), with
      `stall_at` and `step` for ``stall`` and ``steps``.
    - `fail_rate`: fraction of tasks that fail; `fail_mid_run` makes them fail at a
      random point of their render instead of at its end.
    """

    render: tuple[float, float] = attrs.field(default=(4.0, 8.0), validator=_range)
    distribution: DurationDistribution = "uniform"
    median: float | None = None
    sigma: float = 0.8
    queue_time: tuple[float, float] = attrs.field(default=(0.0, 0.3), validator=_range)
    queue_fraction: tuple[float, float] = attrs.field(default=(0.0, 0.0), validator=_range)
    estimate_bias: float = 1.0
    estimate_error: float = attrs.field(default=0.3, validator=_fraction)
    estimate_includes_queue: bool = True
    progress: tuple[ProgressMode, ...] = attrs.field(default=("linear",), validator=_modes)
    stall_at: float = attrs.field(default=0.5, validator=_fraction)
    step: int = 10
    fail_rate: float = attrs.field(default=0.0, validator=_fraction)
    fail_mid_run: bool = True

    def draw(self, rng: random.Random) -> dict[str, Any]:
        """One task's timing as `TaskPlan` fields (the draws come from `rng` in a fixed order)."""
        low, high = self.render
        if self.distribution == "lognormal":
            median = self.median if self.median is not None else math.sqrt(max(low, 1e-3) * high)
            render = min(high, max(low, median * math.exp(rng.gauss(0.0, self.sigma))))
        else:
            render = rng.uniform(low, high)
        queue = rng.uniform(*self.queue_time) + rng.uniform(*self.queue_fraction) * render
        noise = 1 + rng.uniform(-self.estimate_error, self.estimate_error)
        base = render + queue if self.estimate_includes_queue else render
        estimate = base * self.estimate_bias * noise
        mode = self.progress[rng.randrange(len(self.progress))]
        failed = rng.random() < self.fail_rate
        fail_point = rng.uniform(0.05, 0.95)
        # A task failing mid-run ends part-way through the render it would have had.
        cut = fail_point if failed and self.fail_mid_run else 1.0
        duration = queue + render * cut
        return {
            "duration": duration,
            "queue_time": queue,
            "render_time": render,
            "estimated_time": estimate,
            "outcome": "failed" if failed else "completed",
            "progress_mode": mode,
            "stall_at": self.stall_at,
            "step": self.step,
        }


def progress_at(mode: str, fraction: float, *, stall_at: float, step: int) -> int:
    """The progress (0-99) reported `fraction` of the way through a render."""
    f = min(1.0, max(0.0, fraction))
    if mode == "none":
        value = 0.0
    elif mode == "s-curve":
        value = 100 * f * f * (3 - 2 * f)
    elif mode == "stall":
        value = 100 * f / stall_at if stall_at > 0 else 100.0
    else:
        value = 100 * f
    progress = min(99, int(value))
    if mode == "steps" and step > 1:
        progress -= progress % step
    return progress


KIND = TimingProfile()
"""Today's default emulator: 4-8 s renders, up to 0.3 s of queue, linear progress."""

REALISTIC = TimingProfile(
    render=(3.0, 90.0), distribution="lognormal", median=10.0, sigma=0.6,
    queue_time=(0.5, 8.0), queue_fraction=(0.0, 0.2),
    estimate_bias=1.2, estimate_error=0.3, estimate_includes_queue=False,
    progress=("linear", "linear", "s-curve", "steps"),
    fail_rate=0.03,
)
"""Queues of seconds, renders with a heavy tail (median 10 s), estimates 20 % long,
mostly linear progress, 3 % of tasks failing mid-run."""

HOSTILE = TimingProfile(
    render=(2.0, 120.0), distribution="lognormal", median=8.0, sigma=0.9,
    queue_time=(0.0, 20.0), queue_fraction=(0.0, 0.6),
    estimate_bias=0.8, estimate_error=0.6, estimate_includes_queue=False,
    progress=PROGRESS_MODES, stall_at=0.5,
    fail_rate=0.1,
)
"""Long and uneven queues, renders from 2 s to 2 min, estimates far off, every progress
mode (none, s-curve, stalls at 99 %, coarse steps), 10 % of tasks failing mid-run."""

PRESETS: dict[str, TimingProfile] = {"kind": KIND, "realistic": REALISTIC, "hostile": HOSTILE}
"""The named presets for `EmulatorConfig(profile=...)` and ``apimart-async emulator --profile``."""

_RENDER = (4.0, 8.0)

SCENARIOS: dict[str, TimingProfile] = {
    "linear": TimingProfile(render=_RENDER),
    "pending-15": TimingProfile(render=_RENDER, queue_time=(0.0, 0.0),
                                queue_fraction=(0.15, 0.15)),
    "pending-30-60": TimingProfile(render=_RENDER, queue_time=(0.0, 0.0),
                                   queue_fraction=(0.3, 0.6)),
    "queue-2-10": TimingProfile(render=_RENDER, queue_time=(2.0, 10.0),
                                estimate_includes_queue=False),
    "s-curve": TimingProfile(render=_RENDER, progress=("s-curve",)),
    "long-tail": TimingProfile(render=(2.0, 40.0), distribution="lognormal", median=6.0,
                               sigma=0.8),
    "stall-99": TimingProfile(render=_RENDER, progress=("stall",), stall_at=0.5),
    "no-progress": TimingProfile(render=_RENDER, progress=("none",)),
    "fail-10": TimingProfile(render=_RENDER, fail_rate=0.1),
    "minutes": TimingProfile(render=(30.0, 60.0)),
    "queue-30-60": TimingProfile(render=_RENDER, queue_time=(30.0, 60.0)),
    "steps-10": TimingProfile(render=_RENDER, progress=("steps",), step=10),
}
"""One profile per timing scenario of the polling benchmark (4-8 s renders unless named)."""

PROFILES: dict[str, TimingProfile] = {**PRESETS, **SCENARIOS}
"""Every profile that can be chosen by name."""


def resolve_profile(profile: str | TimingProfile) -> TimingProfile:
    """`profile` itself, or the named profile; a clear error for an unknown name."""
    if isinstance(profile, TimingProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"profile {profile!r} is not known; choose one of {', '.join(sorted(PROFILES))}"
        ) from None


def _seconds(low: float, high: float) -> str:
    return f"{low:g} s" if low == high else f"{low:g}-{high:g} s"


def _pct(value: float) -> str:
    return f"{value * 100:.3g}"


def _percent(low: float, high: float) -> str:
    return f"{_pct(low)} %" if low == high else f"{_pct(low)}-{_pct(high)} %"


_MODE_WORDS = {"linear": "linear", "s-curve": "s-curve", "none": "none until done"}


def describe_profile(profile: TimingProfile) -> list[str]:
    """`profile` in words, one cell per column of `profile_table`: queue, render, progress,
    estimate, failures."""
    queue = _seconds(*profile.queue_time)
    if profile.queue_fraction != (0.0, 0.0):
        queue = (f"{_percent(*profile.queue_fraction)} of the render"
                 if profile.queue_time == (0.0, 0.0)
                 else f"{queue} + {_percent(*profile.queue_fraction)} of the render")
    render = _seconds(*profile.render)
    if profile.distribution == "lognormal":
        median = profile.median if profile.median is not None else math.sqrt(
            max(profile.render[0], 1e-3) * profile.render[1])
        render += f", log-normal (median {median:g} s)"
    modes: list[str] = []
    for mode in dict.fromkeys(profile.progress):
        if mode == "stall":
            modes.append(f"stuck at 99 % from {_pct(profile.stall_at)} % of the render")
        elif mode == "steps":
            modes.append(f"steps of {profile.step}")
        else:
            modes.append(_MODE_WORDS[mode])
    estimate = (f"x{profile.estimate_bias:g} +-{_pct(profile.estimate_error)} %, "
                + ("includes the queue" if profile.estimate_includes_queue else "render only"))
    failures = ("none" if profile.fail_rate == 0 else
                f"{_pct(profile.fail_rate)} % " + ("mid-run" if profile.fail_mid_run
                                                 else "at the end"))
    return [queue, render, " / ".join(modes), estimate, failures]


def profile_table() -> str:
    """Every named profile as a Markdown table (the README's, pinned by a test)."""
    rows = ["| profile | queued | render | progress | estimated_time | failing |",
            "|---|---|---|---|---|---|"]
    for name, profile in PROFILES.items():
        label = f"`{name}` (default)" if name == "kind" else f"`{name}`"
        rows.append("| " + " | ".join([label, *describe_profile(profile)]) + " |")
    return "\n".join(rows)
