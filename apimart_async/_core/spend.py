"""`SpendBudget`: the pure bookkeeping behind a spend cap (``run_batch(max_spend=...)``).

No I/O and no clock: the owner reads the balance and reports it (`observe`), and asks
before each submission (`reserve`). The same object can sit behind any journal: a
runner over SQLite calls it from one event loop; a journal shared by several workers
(PostgreSQL) keeps `to_state` in a row and, inside the transaction that claims an item
(``SELECT ... FOR UPDATE`` on that row), rebuilds it with `from_state`, calls
`reserve` with the item's key as token, and writes `to_state` back before committing:
two workers can never both take the last room, and every worker's reservations count.
`settle` and `observe` go through the same row the same way.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable, Mapping
from typing import Any

__all__ = ["SpendBudget", "Verdict"]

# Float sums of prices drift by ulps: a cap of 5 holds five items of 1.0.
_EPSILON = 1e-9


class Verdict(enum.Enum):
    """What `SpendBudget.reserve` answers."""

    #: Reserved: send it, then `settle` it (once) with what became of it.
    GRANTED = "granted"
    #: Not now: room may appear once reservations settle or the balance is read again
    #: (`needs_reading`). Ask again after either.
    WAIT = "wait"
    #: It cannot fit under the cap, now or later: leave it unsent.
    REFUSED = "refused"


class SpendBudget:
    """Keeps a run's spending under `cap`, counting sent items before they are billed.

    Money is in the account's unit (what ``GET /v1/balance`` reports). Three amounts:

    - `spent`: `spent_before` (what earlier runs of the batch spent, as recorded) plus
      what the balance shows this run spent (``used_balance`` now minus `start_used`,
      the reading at the start), as of the last `observe`;
    - unobserved: the estimates of items sent (accepted, or maybe accepted) since the
      last `observe`, whose charge the balance has not been read for yet;
    - in flight: the estimates reserved for items about to be sent, or on the wire.

    Plus the `debt`: items earlier runs sent that no balance read measured (`unpriced`,
    counted by class), each at its class's estimate once known.

    `committed` is their sum, and a reservation is granted only while ``committed +
    estimate <= cap``: with many submissions at once, each counts the others.

    Estimates are per *price class*, a key the caller chooses (the runner uses the
    request minus its prompt: model, duration, resolution...), learned from balance
    deltas: a class's estimate is the largest per-item cost seen in a window (the items
    sent between two reads) holding that class only; a window of mixed classes whose
    delta exceeds the sum of their estimates scales each of those estimates up by the
    same factor. Estimates only grow. A window whose delta is 0 teaches nothing (the
    charge may come later), so an unknown class stays unknown.

    A class with no estimate yet is *probed*: its item goes alone (nothing else in
    flight or unobserved, nothing else granted meanwhile) and reserves all the room
    left, so the next read tells exactly what one such item costs. The cap therefore
    holds for every item but a probe whose single cost exceeds all the room left:
    pass `item_cost` (a known price per item, the estimate of every class until its
    own is learned: no probes) or `estimates` (per class) to rule that out.

    Protocol: ``reserve(cls, token)`` -> GRANTED, then exactly one ``settle(token,
    charged=...)``: `charged` True when the item may be billed (accepted, or an
    ambiguous failure), False when it surely was not (refused, never sent; `release`
    is the same). After each balance read, ``observe(used)``. WAIT means: if
    `needs_reading`, read the balance and `observe`; otherwise wait for a `settle`.
    """

    @property
    def item_cost(self) -> float | None:
        """A known price per item: the estimate of a class before it has its own (no
        probe needed), or None."""
        return self._default

    @item_cost.setter
    def item_cost(self, value: float | None) -> None:
        self._default = _item_cost(value)

    def __init__(
        self, cap: float, *, start_used: float, spent_before: float = 0.0,
        estimates: dict[str, float] | None = None, unpriced: Mapping[str, int] | None = None,
        item_cost: float | None = None,
    ) -> None:
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) \
                or not math.isfinite(cap) or cap <= 0:
            raise ValueError(f"cap must be a finite number > 0, got {cap!r}")
        self.cap = float(cap)
        self._start = float(start_used)
        self._last_used = float(start_used)
        self._before = max(0.0, float(spent_before))
        self.spent = self._before
        self._estimates: dict[str, float] = dict(estimates or {})
        self._default = _item_cost(item_cost)
        # Items earlier runs sent whose cost no balance read measured, by class.
        self._unpriced = {c: int(n) for c, n in (unpriced or {}).items() if n > 0}
        self._in_flight: dict[Hashable, tuple[str, float]] = {}
        # Items charged (maybe) since the last read: (class, estimate or None).
        self._window: list[tuple[str, float | None]] = []
        # How many items `observe` has taken out of the window so far: a mark counts
        # items settled ever, so a read that another worker's read overtook still cuts
        # only what was settled before its own mark.
        self._observed = 0
        self._probe_amount = 0.0
        self._unobserved = 0.0
        self._probe: Hashable | None = None
        self.refused = 0
        self._version = 0

    def __repr__(self) -> str:
        return (f"SpendBudget(cap={self.cap:g}, spent={self.spent:g}, "
                f"committed={self.committed:g})")

    # -- reading ----------------------------------------------------------------------

    @property
    def committed(self) -> float:
        """Spent, plus `debt`, plus unobserved, plus in-flight estimates."""
        return (self.spent + self.debt + self._unobserved
                + sum(a for _, a in self._in_flight.values()))

    @property
    def debt(self) -> float:
        """The estimated cost of the `unpriced` items of earlier runs (sent while no
        balance read measured them): each at its class's estimate, or at the dearest
        estimate known before its class has one (0 before any price is known)."""
        dearest = max([*self._estimates.values(), self._default or 0.0])
        return sum(n * self._estimates.get(c, dearest) for c, n in self._unpriced.items())

    @property
    def last_used(self) -> float:
        """``used_balance`` as of the last `observe` (or the start)."""
        return self._last_used

    @property
    def spent_before(self) -> float:
        """What earlier runs spent (given at construction), included in `spent`."""
        return self._before

    @property
    def needs_reading(self) -> bool:
        """True when items were sent since the last balance read (`observe` would teach)."""
        return bool(self._window)

    @property
    def in_flight(self) -> int:
        """Reservations not settled yet."""
        return len(self._in_flight)

    @property
    def version(self) -> int:
        """Grows whenever the state changed in a way that can change a verdict: waiters
        that got WAIT ask again once it moved (see the class docstring)."""
        return self._version

    def estimate(self, price_class: str) -> float | None:
        """The per-item cost estimate for `price_class`; None before it is learned."""
        return self._estimates.get(price_class, self._default)

    # -- asking -----------------------------------------------------------------------

    def reserve(self, price_class: str, token: Hashable) -> Verdict:
        """Reserve room for one item of `price_class`, known by `token` (unique)."""
        before = (self._probe, len(self._in_flight), self.refused)
        verdict = self._reserve(price_class, token)
        if (self._probe, len(self._in_flight), self.refused) != before:
            self._version += 1
        return verdict

    def _reserve(self, price_class: str, token: Hashable) -> Verdict:
        if token in self._in_flight:
            raise ValueError(f"token {token!r} already holds a reservation")
        estimate = self._estimates.get(price_class, self._default)
        if self._probe is not None and self._probe != token:
            return Verdict.WAIT  # a probe is waiting or out: its window must be alone
        if estimate is None:
            if self._in_flight or self._window:
                self._probe = token  # claim it: nothing else is granted meanwhile
                return Verdict.WAIT
            room = self.cap - self.spent - self.debt
            # Before its first price, a class is taken to cost at least the dearest
            # class seen so far.
            prior = max(self._estimates.values(), default=0.0)
            if room <= _EPSILON or room + _EPSILON < prior:
                self._probe = None
                self.refused += 1
                return Verdict.REFUSED
            self._probe = token
            self._in_flight[token] = (price_class, room)
            return Verdict.GRANTED
        if self._probe == token:
            self._probe = None  # learned while it waited: no probe needed
        if self.committed + estimate <= self.cap + _EPSILON:
            self._in_flight[token] = (price_class, estimate)
            return Verdict.GRANTED
        if self._in_flight or self._window:
            return Verdict.WAIT  # the others may cost less than reserved
        self.refused += 1
        return Verdict.REFUSED

    def settle(self, token: Hashable, *, charged: bool) -> None:
        """The item `token` reserved for has ended its submission: `charged` when it
        may be billed (its estimate waits for the next read), else released."""
        self._version += 1
        found = self._in_flight.pop(token, None)
        if found is None:
            if token == self._probe:
                self._probe = None  # a claim given up before it was granted
            return
        price_class, amount = found
        probe = token == self._probe
        if charged:
            self._unobserved += amount
            if probe:
                self._probe_amount = amount
            self._window.append((price_class, None if probe else amount))
        elif probe:
            self._probe = None
        # A charged probe keeps the gate shut until `observe` learns its price.

    def _amount(self, price_class: str, estimate: float | None) -> float:
        return self._probe_amount if estimate is None else estimate

    def release(self, token: Hashable) -> None:
        """Drop the reservation (or the waiting probe claim) of an item that was not
        sent: ``settle(token, charged=False)``. Call it for every token that asked and
        gives up, granted or not."""
        self.settle(token, charged=False)

    # -- persistence ------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything the budget knows, as JSON-ready data (tokens must then be strings
        or numbers), so a shared journal can keep it in a row: load it with
        `from_state` inside the transaction that claims an item, `reserve`, store
        `to_state` back, commit; every worker then counts every other's reservations."""
        return {
            "cap": self.cap, "start_used": self._start, "last_used": self._last_used,
            "spent_before": self._before, "spent": self.spent,
            "estimates": dict(self._estimates),
            "in_flight": [[t, c, a] for t, (c, a) in self._in_flight.items()],
            "window": [[c, e] for c, e in self._window], "observed": self._observed,
            "unobserved": self._unobserved, "probe": self._probe,
            "probe_amount": self._probe_amount, "refused": self.refused,
            "unpriced": dict(self._unpriced), "item_cost": self._default,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SpendBudget:
        """The budget `to_state` described."""
        budget = cls(state["cap"], start_used=state["start_used"],
                     spent_before=state["spent_before"], estimates=dict(state["estimates"]),
                     unpriced=dict(state.get("unpriced") or {}),
                     item_cost=state.get("item_cost"))
        budget._last_used = float(state["last_used"])
        budget.spent = float(state["spent"])
        budget._in_flight = {t: (str(c), float(a)) for t, c, a in state["in_flight"]}
        budget._window = [(str(c), None if e is None else float(e)) for c, e in state["window"]]
        budget._observed = int(state.get("observed", 0))
        budget._unobserved = float(state["unobserved"])
        budget._probe = state["probe"]
        budget._probe_amount = float(state["probe_amount"])
        budget.refused = int(state["refused"])
        return budget

    def read_mark(self) -> int:
        """Call right before sending a balance read; pass the result to `observe`: the
        items settled while the read was on the wire wait for the next one. (It counts
        the items ever settled, not the window's length: with several readers sharing
        the budget, another's `observe` may shorten the window between this mark and
        this read's `observe`.)"""
        return self._observed + len(self._window)

    def observe(self, used: float, mark: int | None = None) -> None:
        """A balance read: ``used_balance`` is `used` now. Updates `spent`, and learns
        from the items settled before `mark` (see `read_mark`; None: all of them)."""
        self._version += 1
        delta = max(0.0, used - self._last_used)
        self._last_used = max(self._last_used, used)
        self.spent = max(self.spent, self._before + self._last_used - self._start)
        cut = len(self._window) if mark is None else max(
            0, min(mark - self._observed, len(self._window)))
        window, self._window = self._window[:cut], self._window[cut:]
        self._observed += cut
        self._unobserved = sum(self._amount(c, e) for c, e in self._window)
        if self._probe is not None and self._probe not in self._in_flight \
                and any(e is None for _, e in window):
            self._probe = None
        if not window or delta <= 0:
            return
        classes = {c for c, _ in window}
        if len(classes) == 1:
            (only,) = classes
            per_item = delta / len(window)
            self._estimates[only] = max(self._estimates.get(only, self._default or 0.0),
                                        per_item)
            return
        known = sum(self._estimates.get(c, self._default or 0.0) for c, _ in window)
        if known <= 0:
            for c in classes:  # nothing to split by: each could have cost it all
                self._estimates[c] = max(self._estimates.get(c, 0.0), delta)
        elif delta > known:
            factor = delta / known
            for c in classes:
                if c in self._estimates:
                    self._estimates[c] *= factor
                elif self._default is not None:
                    self._estimates[c] = self._default * factor
                else:
                    self._estimates[c] = delta


def _item_cost(value: object) -> float | None:
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"item_cost must be a finite number > 0, got {value!r}")
    return float(value)
