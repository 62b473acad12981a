"""Shared request limits: a concurrency cap and an AIMD request rate.

Every request to the API host, submission or poll, passes through one `Limits`,
so a session slows down as a whole when the server pushes back instead of every
coroutine retrying on its own.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar

import anyio

from .._core.aimd import AIMDRate
from .._core.hooks import Hooks, RateChangeEvent
from .clock import Clock, Timer
from .hooks import fire

__all__ = ["Limits", "SharedPacer"]

#: Waits for a send slot of a rate shared with other processes (a fleet's key rate).
SharedPacer = Callable[[], Awaitable[None]]
# Set by `Limits.prepaid` around a request whose slot its caller already took: when
# that slot is due (`time.monotonic()`).
_prepaid: ContextVar[float | None] = ContextVar("apimart_async_prepaid_slot", default=None)
# Set while such a request is in flight: it took no request slot, so gives none back.
_unmetered: ContextVar[bool] = ContextVar("apimart_async_unmetered", default=False)

log = logging.getLogger("apimart_async")
# A recovering rate is reported when it moved this much since the last report.
_REPORT_STEP = 0.10


class Limits:
    """The session-wide gate in front of the API host: concurrency, then pacing."""

    def __init__(
        self,
        *,
        max_concurrency: int,
        rps: float | None = None,
        clock: Timer | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self._hooks = hooks or Hooks()
        # fast_acquire: no checkpoint when a slot is free; this sits on every request.
        self.concurrency = anyio.Semaphore(max_concurrency, fast_acquire=True)
        self.rate = AIMDRate(ceiling=rps)
        # Pacing runs on the session's clock: a compressed clock paces in API seconds,
        # and a test's stepped clock paces without sleeping at all.
        self._time: Timer = clock or Clock()
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._last_success = self._time.now()
        #: When set, every request waits for a slot of this shared rate instead of the
        #: local one (a fleet of workers on one key: `_batch.fleet`).
        self.shared: SharedPacer | None = None
        #: Called on each 429 when `shared` is set, with the Retry-After hint (seconds).
        self.on_shared_throttle: Callable[[float | None], None] | None = None
        #: A prepaid slot reached later than this (real seconds) is not used: a request
        #: sent late bunches with those sent on time.
        self.shared_tolerance = 0.0
        # The rate last reported (log, `on_rate_change`), to report recovery in steps.
        self._reported = self.rate.rate

    @contextlib.contextmanager
    def prepaid(self, due: float) -> Iterator[None]:
        """Within the block, the next request's first attempt uses the shared slot its
        caller took already (due at `due`, `time.monotonic()`), so the caller could
        claim its item in between; if the request slot frees too late, a fresh one."""
        token = _prepaid.set(due)
        try:
            yield
        finally:
            _prepaid.reset(token)

    def claim(self) -> tuple[float, int]:
        """Claim the next send slot: (clock time it may go at, the epoch it is paced under).

        Pure bookkeeping, O(1) and without a lock: a `Retry-After` pause and the
        current rate's spacing both push the slot later.
        """
        epoch = self.rate.epoch
        start = max(self._time.now(), self._paused_until)
        rate = self.rate.rate
        if rate is not None:
            start = max(start, self._next_slot)
            self._next_slot = start + 1.0 / rate
        return start, epoch

    async def _pace(self) -> int:
        """Wait for a send slot at the current rate; return the epoch it was paced under."""
        while True:
            start, epoch = self.claim()
            wait = start - self._time.now()
            if wait > 0:
                await self._time.sleep(wait)
            if self.rate.epoch == epoch:
                return epoch
            # The rate fell while we waited: that slot was spaced for the old rate.

    def try_acquire(self) -> int | None:
        """Take a slot without waiting, if one is free and nothing needs pacing."""
        if self.rate.rate is not None or self._paused_until > 0.0 or self.shared is not None:
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
        if self.shared is not None and _prepaid.get() is not None:
            # A fleet's submission holding its shared slot: it goes now, not after polls
            # that hold request slots while they wait for slots of their own (it would
            # arrive late, bunched with requests sent on time). Its submitter is its
            # concurrency bound.
            due = _prepaid.get()
            _prepaid.set(None)  # one attempt only: a retry takes a slot of its own
            _unmetered.set(True)
            if due is not None and time.monotonic() - due > self.shared_tolerance:
                await self.shared()
            return self._started(self.rate.epoch)
        await self.concurrency.acquire()
        try:
            if self.shared is not None:
                await self.shared()
                epoch = self.rate.epoch
            else:
                epoch = await self._pace()
        except BaseException:
            self.concurrency.release()
            raise
        return self._started(epoch)

    def _started(self, epoch: int) -> int:
        self.rate.observe_start(self._time.now())
        return epoch

    def release(self) -> None:
        """Give back a slot taken by `acquire`."""
        if _unmetered.get():
            _unmetered.set(False)
            return
        self.concurrency.release()

    def throttled(self, epoch: int, retry_after: float | None) -> None:
        """Record a 429 for a request paced under `epoch`; honour a hint for everyone."""
        if self.shared is not None:
            if self.on_shared_throttle is not None:
                self.on_shared_throttle(retry_after)
            return
        now = self._time.now()
        before, previous = self.rate.epoch, self.rate.rate
        self.rate.on_throttled(epoch, now)
        if self.rate.epoch != before and self.rate.rate is not None:
            # Slots claimed at the old rate are re-claimed at the new one, starting one
            # interval from now: the server has just said its budget is spent.
            self._next_slot = now + 1.0 / self.rate.rate
            self._report(previous, "throttled", retry_after)
        pause = self._time.delay_length(retry_after or 0.0)
        if pause:
            self._paused_until = max(self._paused_until, now + pause)

    def succeeded(self) -> None:
        """Record a successful answer (lets the rate recover)."""
        now = self._time.now()
        previous = self.rate.rate
        self.rate.on_success(now - self._last_success)
        self._last_success = now
        rate, reported = self.rate.rate, self._reported
        if rate is not None and rate != previous and reported is not None \
                and abs(rate - reported) >= _REPORT_STEP * reported:
            self._report(reported, "recovered", None)

    def _report(self, previous: float | None, reason: str, retry_after: float | None) -> None:
        rate = self.rate.rate
        self._reported = rate
        log.debug("request rate %s: %s -> %s requests/s%s", reason,
                  "unlimited" if previous is None else f"{previous:.2f}",
                  "unlimited" if rate is None else f"{rate:.2f}",
                  f" (Retry-After {retry_after:g}s)" if retry_after else "")
        if self._hooks.on_rate_change is not None:
            fire(self._hooks.on_rate_change, RateChangeEvent(
                rate=rate, previous=previous, reason=reason, retry_after=retry_after))
