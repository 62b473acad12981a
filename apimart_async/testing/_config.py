"""`EmulatorConfig`: the emulator's knobs."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ._profiles import TimingProfile, resolve_profile
from ._tasks import Planner

__all__ = ["EmulatorConfig"]


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
    - `balance`: submissions the account can pay for (402 beyond); None is unlimited.
    - `url_ttl`: how long result links live, in API seconds.
    - `honour_idempotency_key`: answer a repeated `Idempotency-Key` with the first task.
    - `submit_faults`, `poll_faults`, `download_faults`: probabilities of a random fault
      on each such request (429/503 on submission; 5xx, reset or HTML on polling; a cut
      download), drawn from a generator seeded with `seed`.
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
    balance: int | None = None
    url_ttl: float = 86400.0
    video_size: int = 64 * 1024
    honour_idempotency_key: bool = False
    submit_faults: float = attrs.field(default=0.0, validator=_unit)
    poll_faults: float = attrs.field(default=0.0, validator=_unit)
    download_faults: float = attrs.field(default=0.0, validator=_unit)
    seed: int = 0
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
