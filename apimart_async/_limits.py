"""Shared request limits: a concurrency cap and an AIMD request rate.

Every request to the API host, submission or poll, passes through one `Limits`,
so a session slows down as a whole when the server pushes back instead of every
coroutine retrying on its own.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

__all__ = ["AIMDRate", "Limits"]


class AIMDRate:
    """Additive-increase / multiplicative-decrease request rate, as TCP does for windows.

    Pure state driven by the caller's clock readings. `rate` is None while no limit is
    known (no `ceiling` and no 429 met yet): requests then go as fast as concurrency allows.
    """

    def __init__(
        self,
        *,
        ceiling: float | None = None,
        floor: float = 0.5,
        decrease: float = 0.5,
        increase_per_second: float = 0.25,
        window: float = 1.0,
    ) -> None:
        self.ceiling = ceiling
        self.floor = floor
        self.decrease = decrease
        # Recovery per second, as a fraction of the rate reached at the last decrease.
        self.increase_per_second = increase_per_second
        self.window = window
        self.rate: float | None = ceiling
        self._last_decrease = -math.inf
        self._recent: deque[float] = deque()
        self._rate_at_decrease = ceiling or 0.0
        self.throttles = 0

    def observe_start(self, now: float) -> None:
        """Note that a request started, to measure the rate actually achieved."""
        self._recent.append(now)
        horizon = now - self.window
        while self._recent and self._recent[0] < horizon:
            self._recent.popleft()

    def measured(self) -> float:
        """Requests started during the last window, per second."""
        return len(self._recent) / self.window

    def on_throttled(self, started_at: float, now: float) -> None:
        """A request started at `started_at` met a 429.

        Requests that started before the last decrease were sent at the old rate, so
        their 429s do not shrink the rate again: one burst costs one halving.
        """
        self.throttles += 1
        if started_at < self._last_decrease:
            return
        current = self.rate if self.rate is not None else max(self.measured(), self.floor)
        self.rate = max(self.floor, current * self.decrease)
        self._rate_at_decrease = self.rate
        self._last_decrease = now

    def on_success(self, elapsed: float) -> None:
        """A request succeeded `elapsed` seconds after the previous success: recover a little."""
        if self.rate is None:
            return
        step = max(self._rate_at_decrease, 1.0) * self.increase_per_second * elapsed
        self.rate += step
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)


class Limits:
    """The session-wide gate in front of the API host: concurrency, then pacing."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        rps: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency = anyio.CapacityLimiter(max_concurrency)
        self.rate = AIMDRate(ceiling=rps)
        self._clock = clock
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._last_success = clock()
        self.in_flight = 0
        self.peak_in_flight = 0

    async def _pace(self) -> None:
        # Claim the next free slot synchronously, then sleep until it: O(1), fair, no lock.
        now = self._clock()
        start = max(now, self._paused_until)
        rate = self.rate.rate
        if rate is not None:
            start = max(start, self._next_slot)
            self._next_slot = start + 1.0 / rate
        if start > now:
            await anyio.sleep(start - now)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold one request slot; yields the clock reading when the request was let go."""
        async with self.concurrency:
            await self._pace()
            started = self._clock()
            self.rate.observe_start(started)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield started
            finally:
                self.in_flight -= 1

    def throttled(self, started_at: float, retry_after: float | None) -> None:
        """Record a 429 for a request let go at `started_at`; honour a hint for everyone."""
        now = self._clock()
        self.rate.on_throttled(started_at, now)
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)

    def succeeded(self) -> None:
        """Record a successful answer (lets the rate recover)."""
        now = self._clock()
        self.rate.on_success(now - self._last_success)
        self._last_success = now
