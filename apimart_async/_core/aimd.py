"""The AIMD request rate, sans I/O: pure state driven by the caller's clock readings."""

from __future__ import annotations

from collections import deque

__all__ = ["AIMDRate"]


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
