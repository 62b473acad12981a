"""The API host's rate limit: a token bucket refilled in real time (or on a given clock)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` requests per second with bursts of up to `burst` (default: the rate, rounded up).

    `clock` reads seconds (real time by default: a rate limit is about the server's load,
    which does not compress with the task clock; `EmulatorConfig.rate_limit_clock` passes
    the emulator's clock instead).
    """

    def __init__(
        self, rate: float, burst: int | None = None, *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst or max(1, math.ceil(rate))
        self._clock = clock
        self._tokens = float(self.burst)
        self._at = clock()

    def take(self) -> float | None:
        """Take a token: None if the request may go; else the seconds until one is free."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / self.rate
