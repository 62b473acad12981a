"""Time as the SDK sees it, optionally compressed for tests and the emulator.

With ``speed=100`` a task the API says takes 60 s takes 0.6 s of real time, and the
poller's waits shrink to match, so tests exercise real timing logic without sleeping.
Share one `Clock` between the emulator and the `Session` in such a test.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager

import anyio
import attrs

__all__ = ["Clock"]


def _check_speed(_: object, __: object, value: float) -> None:
    from ._errors import ValidationError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError("speed", f"must be a number > 0, got {value!r}")


@attrs.frozen
class Clock:
    """Monotonic and wall time in API seconds, running `speed` times faster than real time."""

    speed: float = attrs.field(default=1.0, validator=_check_speed)
    _mono0: float = attrs.field(factory=time.monotonic, init=False, repr=False)
    _wall0: float = attrs.field(factory=time.time, init=False, repr=False)

    def now(self) -> float:
        """Monotonic API seconds (for intervals and deadlines)."""
        return time.monotonic() * self.speed

    def wall(self) -> float:
        """Unix time in API seconds (for comparing with the server's timestamps)."""
        return self._wall0 + (time.monotonic() - self._mono0) * self.speed

    def real(self, api_seconds: float) -> float:
        """How many real seconds `api_seconds` take."""
        return api_seconds / self.speed

    def move_on_at(self, when: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that ends at API time `when` (on `now`'s scale), like
        `anyio.move_on_after` on this clock; every wait for API time goes through it, so a
        clock whose time is stepped by hand (`testing.SteppedClock`) can end the wait."""
        return anyio.move_on_after(self.real(when - self.now()))

    async def sleep(self, api_seconds: float) -> None:
        """Sleep for `api_seconds` of API time."""
        await anyio.sleep(max(0.0, api_seconds) / self.speed)
