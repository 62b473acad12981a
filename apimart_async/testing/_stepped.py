"""`SteppedClock`: API time that moves only when a test says so.

A compressed `Clock` still runs on its own; a test that must see a task in a given
state (pending, half rendered, done) at a given poll steps time by hand instead:
``clock.advance(5)``. Share one between the emulator and the `Session`: the
emulator's tasks age only on `advance`, and the session's waits for API time (the
poller's next poll, a watch deadline) end when `advance` reaches them, with no real
sleeping. A session starts its waits a few loop turns after the call that asks for them
(a poll is sent first): ``await clock.settle()`` lets them register, and ``await
clock.step()`` settles and jumps to the next deadline. Real-time parts are unchanged:
network I/O, `EmulatorConfig.latency`, `Fault.slow` and the rate limit run in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager

import anyio
import attrs

from .._core.errors import ValidationError
from .._io.clock import Clock

__all__ = ["SteppedClock"]


class _Steps:
    """The mutable part of a (frozen) `SteppedClock`: the time and who waits for it."""

    def __init__(self) -> None:
        self.now = 0.0
        # Each wait's deadline and the event loop it waits on: a cancel scope may be
        # cancelled only on its own loop's thread, and `advance` may come from another.
        self.waiters: dict[anyio.CancelScope, tuple[float, asyncio.AbstractEventLoop]] = {}
        self.lock = threading.Lock()


@attrs.frozen
class SteppedClock(Clock):
    """A `Clock` whose time starts at 0 and moves only on `advance`.

    ``now()`` is 0.0 until the first `advance`; ``wall()`` is the real wall time at
    construction plus the time advanced. Waits on it (`move_on_at`, `sleep`) end when
    `advance` reaches their deadline.
    """

    speed: float = attrs.field(default=1.0, init=False, repr=False)
    _steps: _Steps = attrs.field(factory=_Steps, init=False, repr=False, eq=False)

    def now(self) -> float:
        """API seconds advanced so far."""
        return self._steps.now

    def wall(self) -> float:
        """Unix time at construction plus the API seconds advanced."""
        return self._wall0 + self._steps.now

    def real(self, api_seconds: float) -> float:
        """A stepped clock has no rate: a wait for future time takes as long as the test
        takes to advance, so any positive span is unbounded (inf)."""
        return math.inf if api_seconds > 0 else 0.0

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (>= 0); waits whose deadline is reached end.

        Callable from any thread: from the thread of the event loop the waits run on
        (an async test), the woken tasks run at the caller's next checkpoint (its next
        ``await``); from another thread (a sync test driving ``apimart_sync_session``,
        whose waits run on the session's loop thread), each wait's end is handed to its
        own loop and happens there soon after this returns.
        """
        if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                or not math.isfinite(seconds) or seconds < 0):
            raise ValidationError("seconds", f"must be a finite number >= 0, got {seconds!r}")
        steps = self._steps
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        with steps.lock:
            steps.now += seconds
            due = [(scope, loop) for scope, (when, loop) in steps.waiters.items()
                   if when <= steps.now]
            for scope, loop in due:
                # Ended first, forgotten after: a wait is never dropped without being woken
                # (a waiter lost here would keep its task asleep for good).
                if loop is here:
                    scope.cancel()
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(scope.cancel)
                del steps.waiters[scope]

    def move_on_at(self, when: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that ends when `advance` brings time to `when` (at once if it is
        there already)."""
        return self._move_on_at(when)

    @contextlib.contextmanager
    def _move_on_at(self, when: float) -> Iterator[anyio.CancelScope]:
        steps = self._steps
        with steps.lock:
            if when <= steps.now:
                scope = anyio.CancelScope(deadline=-math.inf)
            else:
                scope = anyio.CancelScope()
                steps.waiters[scope] = (when, asyncio.get_running_loop())
        try:
            with scope:
                yield scope
        finally:
            with steps.lock:
                steps.waiters.pop(scope, None)

    async def sleep(self, api_seconds: float) -> None:
        """Wait until time has advanced by `api_seconds`."""
        with self.move_on_at(self.now() + max(0.0, api_seconds)):
            await anyio.sleep_forever()

    async def settle(self) -> None:
        """Return once every task of the event loop waits (on this clock, a socket, an
        event) and the clock's pending waits stopped changing.

        A wait a session starts (`Session.wait`, `watch`, the poller's next poll) is
        registered only after some loop turns and maybe a request, so read `next_deadline`
        after this, not right after starting one. Checked with
        `anyio.wait_all_tasks_blocked`, plus a few real milliseconds so loopback I/O lands;
        work in threads is not awaited.
        """
        before: tuple[float, list[float]] | None = None
        while True:
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(0.005)  # real time: answers already in the kernel arrive
            await anyio.wait_all_tasks_blocked()
            steps = self._steps
            with steps.lock:
                state = (steps.now, sorted(when for when, _ in steps.waiters.values()))
            if state == before:
                return
            before = state

    async def step(self) -> float | None:
        """Settle, advance to the next deadline, settle again; return the new time.

        Returns None (without advancing) when no wait has a finite deadline. A test
        drives a session with ``while not job.done(): await clock.step()``.
        """
        await self.settle()
        deadline = self.next_deadline
        if deadline is None:
            return None
        self.advance(max(0.0, deadline - self._steps.now))
        await self.settle()
        return self._steps.now

    @property
    def waiting(self) -> int:
        """How many waits are pending on this clock (e.g. a session's poller between polls)."""
        return len(self._steps.waiters)

    @property
    def next_deadline(self) -> float | None:
        """The earliest time a pending wait ends at (None if no wait has a finite end):
        where ``advance(clock.next_deadline - clock.now())`` makes the next thing happen.

        Read it after `settle` (or use `step`): a wait just started may not be registered.
        """
        with self._steps.lock:
            finite = [when for when, _ in self._steps.waiters.values() if when != math.inf]
        return min(finite, default=None)
