"""`EmulatorConfig`: the emulator's knobs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from ._profiles import TimingProfile, resolve_profile
from ._tasks import Planner

__all__ = ["PRICED_DURATION", "EmulatorConfig", "Price"]

PRICED_DURATION = 10
"""The seconds a submission without ``duration`` is priced at."""


def _price_part(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"Price.{attribute.name} must be a finite number >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Price:
    """What the emulator charges for one accepted submission of a model:
    ``per_task + per_second * duration`` (``duration`` from the request, else
    `PRICED_DURATION`). The default, 1 per task, makes ``EmulatorConfig(balance=N)``
    pay for N submissions."""

    per_task: float = attrs.field(default=1.0, validator=_price_part)
    per_second: float = attrs.field(default=0.0, validator=_price_part)

    def cost(self, body: Mapping[str, Any]) -> float:
        """The charge for the submission `body`."""
        duration = body.get("duration")
        seconds = duration if isinstance(duration, int) and not isinstance(duration, bool) \
            else PRICED_DURATION
        return self.per_task + self.per_second * seconds


def _balance(_: object, __: object, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        raise ValueError(f"balance must be a finite number or None (unlimited), got {value!r}")


def _price(_: object, __: object, value: Price) -> None:
    if not isinstance(value, Price):
        raise ValueError(f"price must be a Price, got {value!r}")


def _prices(_: object, __: object, value: Mapping[str, Price]) -> None:
    for model, price in value.items():
        if not isinstance(model, str) or not model:
            raise ValueError(f"prices: keys must be model names, got {model!r}")
        if not isinstance(price, Price):
            raise ValueError(f"prices[{model!r}] must be a Price, got {price!r}")


def _unit(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be a whole number >= 0, got {value!r}")


def _profile(_: object, __: object, value: str | TimingProfile) -> None:
    resolve_profile(value)


def _profiles(_: object, __: object, value: Mapping[str, str | TimingProfile]) -> None:
    for profile in value.values():
        resolve_profile(profile)


@attrs.frozen(kw_only=True)
class EmulatorConfig:
    """Knobs for the emulator. Durations are API seconds (see `Clock`); latency is real time.

    - `api_key`: the only key accepted; None accepts any non-empty bearer token.
    - `duration`, `queue_time`: ranges drawn from for each task.
    - `estimate_error`: `estimated_time` is off by up to this fraction either way.
    - `fail_rate`: fraction of tasks that end failed.
    - `latency`: real seconds added to every API answer.
    - `rate_limit`, `burst`: requests per second the API host allows, as a token
      bucket of `burst` (default: the rate, rounded up) refilled at `rate_limit`; beyond,
      429 with ``Retry-After`` (whole seconds until a token is free, at least 1).
    - `rate_limit_clock`: run the rate limit on the emulator's `Clock` (compressed or
      stepped, like task time) instead of real time, for tests that pace on the same
      clock without sleeping. Real time (False) is the default: a server's load does not
      compress.
    - `balance`: what the key has left to spend (``remain_balance``); a submission
      that costs more than what is left gets 402. None is an unlimited quota
      (``remain_balance`` -1, ``unlimited_quota`` true); spending is counted either way.
    - `price`, `prices`: what an accepted submission costs (a `Price`: per task plus
      per second of ``duration``), `prices` per model, `price` for the others. The
      default, 1 per task, makes ``balance=N`` pay for exactly N submissions.
    - `url_ttl`: how long result links live, in API seconds.
    - `honour_idempotency_key`: answer a repeated `Idempotency-Key` with the first task.
    - `submit_faults`, `poll_faults`, `download_faults`: probabilities of a random fault
      on each such request (429/503 on submission; 5xx, reset or HTML on polling; a cut
      download), drawn from a generator seeded with `seed`.
    - `seed`: seeds task ids, task timings and random faults. None (the default) draws a
      fresh one for each `Emulator` (read it back as `Emulator.seed`, and pass it here to
      replay a run); the same seed gives the same ids, plans and fault draws.
    - `profile`: how tasks are timed: a `TimingProfile` or a name (``kind``, the default,
      uses `duration`, `queue_time`, `estimate_error` and `fail_rate` above; ``realistic``,
      ``hostile`` and the benchmark scenarios are in `PROFILES`). Setting one of those four
      with another profile (and no model on ``kind`` in `profiles`) is refused
      (ValueError naming both): it would have no effect. `profiles` chooses
      one per model (the request's ``model``), falling back to `profile`.
    - `planner`: decides each task's `TaskPlan` from its body and index instead.
    - `request_log_size`: how many requests `Emulator.request_log` keeps (the latest;
      0 keeps none).
    """

    api_key: str | None = None
    duration: tuple[float, float] = (4.0, 8.0)
    queue_time: tuple[float, float] = (0.0, 0.3)
    estimate_error: float = attrs.field(default=0.3, validator=_unit)
    fail_rate: float = attrs.field(default=0.0, validator=_unit)
    latency: float = 0.0
    rate_limit: float | None = None
    burst: int | None = None
    rate_limit_clock: bool = False
    balance: float | None = attrs.field(default=None, validator=_balance)
    price: Price = attrs.field(factory=Price, validator=_price)
    prices: Mapping[str, Price] = attrs.field(factory=dict, validator=_prices)
    url_ttl: float = 86400.0
    video_size: int = 64 * 1024
    honour_idempotency_key: bool = False
    submit_faults: float = attrs.field(default=0.0, validator=_unit)
    poll_faults: float = attrs.field(default=0.0, validator=_unit)
    download_faults: float = attrs.field(default=0.0, validator=_unit)
    seed: int | None = None
    profile: str | TimingProfile = attrs.field(default="kind", validator=_profile)
    profiles: Mapping[str, str | TimingProfile] = attrs.field(factory=dict, validator=_profiles)
    planner: Planner | None = None
    request_log_size: int = attrs.field(default=10_000, validator=_count)

    def __attrs_post_init__(self) -> None:
        # The task knobs are read by the "kind" profile only: set beside another profile
        # they would silently do nothing.
        if self.profile == "kind" or "kind" in self.profiles.values():
            return
        changed = [f"{name}={getattr(self, name)!r}" for name in KIND_KNOBS
                   if getattr(self, name) != _KNOB_DEFAULTS[name]]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} only affects the 'kind' profile, but "
                f"profile={self.profile!r} times the tasks (its own durations and failure "
                "rate): drop one of them, or pass a TimingProfile with the timings you want"
            )


KIND_KNOBS = ("duration", "queue_time", "estimate_error", "fail_rate")
"""The `EmulatorConfig` fields only the ``kind`` profile reads."""

_KNOB_DEFAULTS = {
    name: field.default for name, field in attrs.fields_dict(EmulatorConfig).items()
    if name in KIND_KNOBS
}
