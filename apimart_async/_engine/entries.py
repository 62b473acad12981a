"""The poller's table of tasks: one row (a slot number) per task, its fields in columns.

#14: 100,000 watched tasks in one process. An object per task (nine slots, 96 bytes)
in a dict by task id, with a 32-byte int for its slot in the poll-state columns, was
~160 bytes a task before its first poll; a row here is ~56: the task id's reference,
model, subscribers, generation, arrival number, submission time, next-poll time and
poll-state slot in C arrays and lists, and the task id -> row index is an
open-addressing hash table of C ints (no int object per task, no dict entry).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Entries"]

# The index's smallest size (a power of two), kept at most half full.
_MIN_INDEX = 8


class Entries:
    """Watched (or submitted, not yet watched) tasks, by row.

    A row is taken by `add` and given back by `remove`; a free row is handed out again
    only by a later `add`, which sets every field afresh. ``arrivals[row]`` numbers the
    rows in the order they were added (a row's incarnation: a task removed and added
    again, even into the same row, has a new number). `started` (when it was submitted,
    clock time) and `due` (when its next poll is due) are C doubles; `poll` is its slot
    in the poll-state columns, -1 before its first poll.
    """

    __slots__ = ("_free", "_index", "_live", "_next", "arrivals", "due", "gens", "ids",
                 "models", "poll", "started", "subscribers")

    def __init__(self) -> None:
        # Not reset when the table empties: a worker's row from before must not match
        # a new task's.
        self._next = 0
        self._reset()

    def _reset(self) -> None:
        self.ids: list[str | None] = []
        self.models: list[str | None] = []
        self.subscribers: list[tuple[Callable[..., Any], ...]] = []
        # Bumped by each push into the poll queue: older queue items are stale.
        self.gens = array("I")
        self.arrivals = array("I")
        self.started = array("d")
        self.due = array("d")
        self.poll = array("i")
        # Free rows as C ints, not a list of int objects (~40 bytes a row, not 4).
        self._free = array("i")
        self._live = 0
        # row + 1 at each used place (0: empty), linear probing from hash(id).
        self._index = array("i", bytes(4 * _MIN_INDEX))

    def __len__(self) -> int:
        return self._live

    def alive(self, row: int, arrival: int) -> bool:
        """True if `row` still holds the task that had arrival number `arrival`."""
        return row < len(self.ids) and self.ids[row] is not None and (
            self.arrivals[row] == arrival)

    def age(self, row: int) -> int:
        """How many rows were added after `row` (the oldest has the largest age)."""
        return (self._next - self.arrivals[row]) & 0xFFFFFFFF

    def find(self, task_id: str) -> int:
        """`task_id`'s row, or -1."""
        index, ids = self._index, self.ids
        mask = len(index) - 1
        at = hash(task_id) & mask
        while True:
            row = index[at]
            if not row:
                return -1
            if ids[row - 1] == task_id:
                return row - 1
            at = (at + 1) & mask

    def add(self, task_id: str, started: float, model: str | None = None) -> int:
        """A row for `task_id` (not in the table), submitted at `started`."""
        self._live += 1
        arrival = self._next
        self._next = (arrival + 1) & 0xFFFFFFFF
        if self._free:
            row = self._free.pop()
            self.ids[row] = task_id
            self.models[row] = model
            self.subscribers[row] = ()
            self.gens[row] = 0
            self.arrivals[row] = arrival
            self.started[row] = started
            self.due[row] = 0.0
            self.poll[row] = -1
        else:
            row = len(self.ids)
            self.ids.append(task_id)
            self.models.append(model)
            self.subscribers.append(())
            self.gens.append(0)
            self.arrivals.append(arrival)
            self.started.append(started)
            self.due.append(0.0)
            self.poll.append(-1)
        if 2 * self._live > len(self._index):
            self._reindex(2 * len(self._index))
        else:
            self._place(row)
        return row

    def remove(self, row: int) -> None:
        """Give `row` back; once none is taken, the columns' memory goes too."""
        self._unplace(row)
        self._live -= 1
        if not self._live:
            self._reset()
            return
        self.ids[row] = self.models[row] = None
        self.subscribers[row] = ()
        self._free.append(row)

    def rows(self) -> Iterator[int]:
        """The rows taken, in no particular order (a snapshot: removing meanwhile is safe)."""
        ids = self.ids
        return iter([row for row in range(len(ids)) if ids[row] is not None])

    def _place(self, row: int) -> None:
        index = self._index
        mask = len(index) - 1
        at = hash(self.ids[row]) & mask
        while index[at]:
            at = (at + 1) & mask
        index[at] = row + 1

    def _unplace(self, row: int) -> None:
        # Linear probing's deletion: each later row of the run whose home is not
        # between the hole and itself moves back into the hole (no tombstones, so
        # `find` never walks past removed rows).
        index, ids = self._index, self.ids
        mask = len(index) - 1
        hole = hash(ids[row]) & mask
        while index[hole] != row + 1:
            hole = (hole + 1) & mask
        at = hole
        while True:
            at = (at + 1) & mask
            moving = index[at]
            if not moving:
                break
            home = hash(ids[moving - 1]) & mask
            # Stays if its home lies cyclically in (hole, at].
            if (hole < at and hole < home <= at) or (at < hole and (home > hole or home <= at)):
                continue
            index[hole] = moving
            hole = at
        index[hole] = 0

    def _reindex(self, size: int) -> None:
        self._index = array("i", bytes(4 * size))
        ids = self.ids
        for row in range(len(ids)):
            if ids[row] is not None:
                self._place(row)
