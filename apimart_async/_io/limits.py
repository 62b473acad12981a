"""Shared request limits: a concurrency cap and the learned request pace.

Every request to the API host, submission or poll, passes through one `Limits`,
so a session paces itself as a whole against the key's rate limit instead of every
coroutine retrying on its own. The policy (what the limit is, when the next request
may go) is pure, in `_core.pacing`; this module only waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar

import anyio

from .._core.hooks import Hooks, RateChangeEvent
from .._core.pacing import RateLearner
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
    """The session-wide gate in front of the API host: concurrency, then pacing.

    `acquire` returns a ticket (the request's send time on the session's clock); hand
    it back with the answer: `succeeded(ticket)` or `throttled(ticket, retry_after)`.
    """

    def __init__(
        self,
        *,
        max_concurrency: int,
        rps: float | None = None,
        burst: int | None = None,
        clock: Timer | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self._hooks = hooks or Hooks()
        # fast_acquire: no checkpoint when a slot is free; this sits on every request.
        self.concurrency = anyio.Semaphore(max_concurrency, fast_acquire=True)
        self.rate = RateLearner(rate=rps, burst=burst, max_window=max_concurrency)
        # Pacing runs on the session's clock: a compressed clock paces in API seconds,
        # and a test's stepped clock paces without sleeping at all.
        self._time: Timer = clock or Clock()
        self._in_flight = 0
        # Set when a request ends: a sender held back by the slow-start window retries.
        self._freed = anyio.Event()
        self._held_back = 0
        # Senders sleeping until their paced slot: woken when the pace changes (a
        # storm's pause, or its end) to claim again, in the order they claimed.
        self._sleeping: dict[anyio.CancelScope, None] = {}
        # The pace last reported (log, `on_rate_change`), to report its rises in steps.
        self._reported: float | None = rps
        self._shared: SharedPacer | None = None
        # Nothing to pace, report or wake: a request takes and gives back a slot and
        # no more (every request's path until a rate is given or met). Kept up to date
        # wherever the rate, the fleet's pacer or the report can change.
        self._unpaced = self._is_unpaced()
        #: Called on each 429 when `shared` is set, with the Retry-After hint (seconds).
        self.on_shared_throttle: Callable[[float | None], None] | None = None
        #: A prepaid slot reached later than this (real seconds) is not used: a request
        #: sent late bunches with those sent on time.
        self.shared_tolerance = 0.0

    @property
    def shared(self) -> SharedPacer | None:
        """When set, every request waits for a slot of this shared rate instead of the
        local pace (a fleet of workers on one key: `_batch.fleet`)."""
        return self._shared

    @shared.setter
    def shared(self, pacer: SharedPacer | None) -> None:
        self._shared = pacer
        self._unpaced = self._is_unpaced()

    def _is_unpaced(self) -> bool:
        return (self._shared is None and self.rate.free and self._reported is None
                and not self._held_back)

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

    def claim(self) -> tuple[float, float, int]:
        """Claim the next send slot: (clock time it may go at, its ticket, its epoch)."""
        return self.rate.claim(self._time.now())

    def try_acquire(self) -> float | None:
        """Take a slot without waiting, if one is free and nothing needs pacing."""
        if not self._unpaced:
            return None
        try:
            self.concurrency.acquire_nowait()
        except anyio.WouldBlock:
            return None
        self._in_flight += 1
        return self._time.now()

    async def acquire(self) -> float:
        """Take one request slot (call `release` after); returns the request's ticket."""
        ticket = self.try_acquire()
        if ticket is not None:
            return ticket
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
            return self._time.now()
        await self.concurrency.acquire()
        try:
            if self.shared is not None:
                await self.shared()
                ticket = self._time.now()
            else:
                ticket = await self._pace()
            self._unpaced = self._is_unpaced()
        except BaseException:
            self.concurrency.release()
            raise
        self._in_flight += 1
        return ticket

    async def _pace(self) -> float:
        rate = self.rate
        while True:
            window = rate.window
            if window is not None and self._in_flight >= window:
                # Finding the burst: wait for a request on the wire to end.
                self._held_back += 1
                try:
                    await self._freed.wait()
                finally:
                    self._held_back -= 1
                continue
            start, ticket, epoch = self.claim()
            wait = start - self._time.now()
            if wait <= 0:
                return ticket
            scope = anyio.CancelScope()
            sleeping = self._sleeping
            sleeping[scope] = None
            try:
                with scope:
                    await self._time.sleep(wait)
            finally:
                sleeping.pop(scope, None)
            if rate.epoch == epoch and not scope.cancel_called:
                rate.sent(ticket, self._time.now())
                return ticket
            # A 429 changed the pace while we waited: that slot was spaced for the old one.

    def release(self) -> None:
        """Give back a slot taken by `acquire`."""
        if _unmetered.get():
            _unmetered.set(False)
            return
        self._in_flight -= 1
        self.concurrency.release()
        self._wake()

    def _repace(self) -> None:
        # The pace changed: a sender asleep until a slot of the old one claims again
        # now (after a storm, its slot may be seconds later than the new pace's).
        sleeping = self._sleeping
        if sleeping:
            for scope in sleeping:
                scope.cancel()
            sleeping.clear()

    def _wake(self) -> None:
        if self._held_back:  # (an Event per request would cost every request)
            freed, self._freed = self._freed, anyio.Event()
            freed.set()

    def throttled(self, ticket: float, retry_after: float | None) -> None:
        """Record a 429 for the request sent at `ticket`; a long hint pauses everyone."""
        if self.shared is not None:
            if self.on_shared_throttle is not None:
                self.on_shared_throttle(retry_after)
            return
        rate, now = self.rate, self._time.now()
        before, previous = rate.epoch, rate.pace(now)
        hint = self._time.delay_length(retry_after) if retry_after is not None else None
        rate.on_throttled(ticket, now, hint or None)
        if rate.epoch != before:
            self._report(previous, rate.pace(now), "throttled", retry_after)
            self._repace()
        self._wake()
        self._unpaced = self._is_unpaced()

    def retry_delay(self, retry_after: float | None, delay: float) -> float:
        """How long a request that met a 429 waits before it queues for a slot again.

        A hint of a second or less (or none) is a token bucket's: its next token is
        nearer than the header's whole seconds can say, and the learned pace spaces the
        retry. A longer hint is the server's word: `delay` (which honours it).
        """
        return delay if retry_after is not None and retry_after > 1.0 else 0.0

    def done(self, ticket: float) -> None:
        """`release` and `succeeded` at once: an attempt answered with anything but a 429
        (every poll's path)."""
        if _unmetered.get():
            _unmetered.set(False)
        else:
            self._in_flight -= 1
            self.concurrency.release()
        if self._unpaced:
            # Nothing paced, nobody waiting, nothing to report: all `on_accepted` does
            # for an unpaced rate is count the accept.
            self.rate.accepted += 1
            return
        self._wake()
        self.succeeded(ticket)

    def succeeded(self, ticket: float) -> None:
        """Record that the request sent at `ticket` got an answer other than a 429."""
        rate = self.rate
        epoch = rate.epoch
        if rate.window is None:
            rate.on_accepted(ticket)
        else:
            rate.on_accepted(ticket, self._time.now())
            self._wake()
        if rate.epoch != epoch:
            # A storm ended: learning starts afresh, and those asleep claim again.
            self._repace()
            self._wake()
        reported = self._reported
        if reported is not None and rate.rate is not None:
            # The learned pace creeps up between 429s: report it in steps.
            pace = rate.pace(self._time.now())
            if pace is not None and pace - reported >= _REPORT_STEP * reported:
                self._report(reported, pace, "recovered", None)
        self._unpaced = self._is_unpaced()

    def _report(self, previous: float | None, pace: float | None, reason: str,
                retry_after: float | None) -> None:
        self._reported = pace
        log.debug("request rate %s: %s -> %s requests/s%s", reason,
                  "unlimited" if previous is None else f"{previous:.2f}",
                  "unlimited" if pace is None else f"{pace:.2f}",
                  f" (Retry-After {retry_after:g}s)" if retry_after else "")
        if self._hooks.on_rate_change is not None:
            fire(self._hooks.on_rate_change, RateChangeEvent(
                rate=pace, previous=previous, reason=reason, retry_after=retry_after))
