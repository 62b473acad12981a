"""Shared request limits: a concurrency cap and an AIMD request rate.

Every request to the API host, submission or poll, passes through one `Limits`,
so a session slows down as a whole when the server pushes back instead of every
coroutine retrying on its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["AIMDRate", "Limits"]


class AIMDRate:
    """Additive-increase / multiplicative-decrease request rate, as TCP does for windows.

    Pure state driven by the caller's clock readings. `rate` is None while no limit is
    known (no `ceiling` and no 429 met yet): requests then go as fast as concurrency
    allows. A 429 multiplies the rate by `decrease`; successes then raise it quickly
    (`fast`, a fraction of the rate per second) back toward 85 % of where the last 429
    was met, and slowly (`slow`) beyond, so probing for headroom costs few 429s.
    """

    def __init__(
        self,
        *,
        ceiling: float | None = None,
        floor: float = 0.5,
        decrease: float = 0.7,
        fast: float = 0.3,
        slow: float = 0.03,
        window: float = 1.0,
    ) -> None:
        self.ceiling = ceiling
        self.floor = floor
        self.decrease = decrease
        self.fast = fast
        self.slow = slow
        self.window = window
        self.rate: float | None = ceiling
        # Bumped at each decrease; a request remembers the epoch it was paced under.
        self.epoch = 0
        self._recent: deque[float] = deque()
        self._throttled_at_rate = ceiling or 0.0

    def observe_start(self, now: float) -> None:
        """Note that a request started, to measure the rate actually achieved."""
        self._recent.append(now)
        horizon = now - self.window
        while self._recent and self._recent[0] < horizon:
            self._recent.popleft()

    def measured(self, now: float) -> float:
        """Requests started during the last window, per second.

        Right after start-up the window is not full; dividing by the time covered (a
        quarter second at least) keeps a burst from reading as thousands per second.
        """
        if not self._recent:
            return 0.0
        span = min(self.window, max(now - self._recent[0], self.window / 4))
        return len(self._recent) / span

    def on_throttled(self, epoch: int, now: float) -> None:
        """A request paced under `epoch` met a 429.

        Requests paced before the last decrease went out at the old rate, so their
        429s do not shrink the rate again: one burst costs one decrease.
        """
        if epoch != self.epoch:
            return
        current = self.rate if self.rate is not None else max(self.measured(now), self.floor)
        self._throttled_at_rate = current
        self.rate = max(self.floor, current * self.decrease)
        self.epoch += 1

    def on_success(self, elapsed: float) -> None:
        """A request succeeded `elapsed` seconds after the previous success: recover."""
        if self.rate is None:
            return
        share = self.fast if self.rate < 0.85 * self._throttled_at_rate else self.slow
        self.rate += max(0.1, share * self.rate) * elapsed
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
        # fast_acquire: no checkpoint when a slot is free; this sits on every request.
        self.concurrency = anyio.Semaphore(max_concurrency, fast_acquire=True)
        self.rate = AIMDRate(ceiling=rps)
        self._clock = clock
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._last_success = clock()
        self.in_flight = 0
        self.peak_in_flight = 0

    def claim(self) -> tuple[float, int]:
        """Claim the next send slot: (clock time it may go at, the epoch it is paced under).

        Pure bookkeeping, O(1) and without a lock: a `Retry-After` pause and the
        current rate's spacing both push the slot later.
        """
        epoch = self.rate.epoch
        start = max(self._clock(), self._paused_until)
        rate = self.rate.rate
        if rate is not None:
            start = max(start, self._next_slot)
            self._next_slot = start + 1.0 / rate
        return start, epoch

    async def _pace(self) -> int:
        """Wait for a send slot at the current rate; return the epoch it was paced under."""
        while True:
            start, epoch = self.claim()
            wait = start - self._clock()
            if wait > 0:
                await anyio.sleep(wait)
            if self.rate.epoch == epoch:
                return epoch
            # The rate fell while we waited: that slot was spaced for the old rate.

    def try_acquire(self) -> int | None:
        """Take a slot without waiting, if one is free and nothing needs pacing."""
        if self.rate.rate is not None or self._paused_until > 0.0:
            return None
        try:
            self.concurrency.acquire_nowait()
        except anyio.WouldBlock:
            return None
        return self._started(self.rate.epoch)

    async def acquire(self) -> int:
        """Take one request slot (call `release` after); returns the pacing epoch."""
        epoch = self.try_acquire()
        if epoch is not None:
            return epoch
        await self.concurrency.acquire()
        try:
            epoch = await self._pace()
        except BaseException:
            self.concurrency.release()
            raise
        return self._started(epoch)

    def _started(self, epoch: int) -> int:
        self.rate.observe_start(self._clock())
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        return epoch

    def release(self) -> None:
        """Give back a slot taken by `acquire`."""
        self.in_flight -= 1
        self.concurrency.release()

    def throttled(self, epoch: int, retry_after: float | None) -> None:
        """Record a 429 for a request paced under `epoch`; honour a hint for everyone."""
        now = self._clock()
        before = self.rate.epoch
        self.rate.on_throttled(epoch, now)
        if self.rate.epoch != before and self.rate.rate is not None:
            # Slots claimed at the old rate are re-claimed at the new one, starting one
            # interval from now: the server has just said its budget is spent.
            self._next_slot = now + 1.0 / self.rate.rate
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)

    def succeeded(self) -> None:
        """Record a successful answer (lets the rate recover)."""
        now = self._clock()
        self.rate.on_success(now - self._last_success)
        self._last_success = now
