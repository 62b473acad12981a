"""Time as the SDK sees it, optionally compressed for tests and the emulator.

With ``speed=100`` a task the API says takes 60 s takes 0.6 s of real time, and the
poller's waits shrink to match, so tests exercise real timing logic without sleeping.
Share one `Clock` between the emulator and the `Session` in such a test.

Every wait of the SDK goes through the session's clock: `sleep` for rate pacing, and
`delay` for the waits of a retry (backoff, ``Retry-After`` pauses, resumed
downloads). Under `set_testing` a delay takes no time at all; this module is the one
place that reads the switch.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Protocol

import anyio
import attrs

__all__ = ["Clock", "Timer", "is_testing", "set_testing"]

_instant_delays = False


class set_testing:
    """Make every retry delay zero (for test suites), or restore real delays.

    The decisions (what is retried, how often) stay exactly the same; rate pacing is
    not a retry delay and keeps running on the clock. Use it as a context manager,
    ``with set_testing(True): ...``, to restore the previous setting on exit; a plain
    call ``set_testing(True)`` sets it until changed.
    """

    def __init__(self, on: bool = True) -> None:
        global _instant_delays
        self._previous = _instant_delays
        _instant_delays = bool(on)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _instant_delays
        _instant_delays = self._previous


class Timer(Protocol):
    """What the I/O parts need of a clock: `Clock` is one; a test may step its own."""

    def now(self) -> float: ...

    async def sleep(self, api_seconds: float) -> None: ...

    def delay_length(self, seconds: float) -> float: ...


def is_testing() -> bool:
    """Whether `set_testing(True)` is in force."""
    return _instant_delays


def _check_speed(_: object, __: object, value: float) -> None:
    from .._core.errors import ValidationError

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
        """Sleep for `api_seconds` of API time (rate pacing, and tests' waits)."""
        await anyio.sleep(max(0.0, api_seconds) / self.speed)

    def delay_length(self, seconds: float) -> float:
        """How long a retry delay of `seconds` lasts: zero under `set_testing`."""
        return 0.0 if _instant_delays else max(0.0, seconds)

    async def delay(self, seconds: float) -> None:
        """Wait a retry delay (backoff, a ``Retry-After`` hint) of `seconds`."""
        await self.sleep(self.delay_length(seconds))
