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
_UNPOLLED = array("i", [-1])
_GROW = 64


class Entries:
    """Watched (or submitted, not yet watched) tasks, by row.

    A row is taken by `insert` (or `add`) and given back by `remove`, which puts its
    fields back to their defaults (no id, model or subscriber, generation 0, due 0.0,
    poll -1); a free row is handed out again only by a later `insert`, which sets the
    rest. ``arrivals[row]`` numbers the rows in the order they were added (a row's
    incarnation: a task removed and added again, even into the same row, has a new
    number). `started` (when it was submitted,
    clock time) and `due` (when its next poll is due) are C doubles; `poll` is its slot
    in the poll-state columns, -1 before its first poll.
    """

    __slots__ = ("_free", "_index", "_live", "_next", "_top", "arrivals", "due", "gens", "ids",
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
        # Rows below this were handed out once; those from it on wait at their defaults.
        self._top = 0
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
        row = self.insert(task_id, started, model)
        assert row >= 0, "add: the task has a row already"
        return row

    def insert(self, task_id: str, started: float, model: str | None) -> int:
        """A new row for `task_id`, submitted at `started`; -1 (and nothing changes) if
        it has one already.

        Every submission's path, in one pass (~110 bytecodes where `find`, then `add`
        appending to eight columns and probing the index again, took ~230): the index
        is probed once, and a row comes with its fields at their defaults (`_grow`,
        `remove`), so only the four a new row sets are written.
        """
        index, ids = self._index, self.ids
        mask = len(index) - 1
        at = hash(task_id) & mask
        while found := index[at]:
            if ids[found - 1] == task_id:
                return -1
            at = (at + 1) & mask
        free = self._free
        if free:
            row = free.pop()
        else:
            row = self._top
            if row == len(ids):
                self._grow()
            self._top = row + 1
        ids[row] = task_id
        self.models[row] = model
        self.started[row] = started
        arrival = self._next
        self.arrivals[row] = arrival
        self._next = (arrival + 1) & 0xFFFFFFFF
        live = self._live = self._live + 1
        if 2 * live > mask + 1:
            self._reindex(2 * (mask + 1))
        else:
            index[at] = row + 1
        return row

    def _grow(self) -> None:
        # Rows past `_top`, at their defaults: taking one writes no default. A few at a
        # time: the lists and arrays over-allocate as they grow (as they did when a row
        # was appended), and rows of our own past that would be memory twice spare.
        self.ids.extend([None] * _GROW)
        self.models.extend([None] * _GROW)
        self.subscribers.extend([()] * _GROW)
        zeros = bytes(4 * _GROW)
        self.gens.frombytes(zeros)
        self.arrivals.frombytes(zeros)
        self.started.frombytes(zeros + zeros)
        self.due.frombytes(zeros + zeros)
        self.poll.extend(_UNPOLLED * _GROW)

    def remove(self, row: int) -> None:
        """Give `row` back, its fields to their defaults; once none is taken, the
        columns' memory goes too."""
        self._unplace(row)
        self._live -= 1
        if not self._live:
            self._reset()
            return
        self.ids[row] = self.models[row] = None
        self.subscribers[row] = ()
        self.gens[row] = 0
        self.due[row] = 0.0
        self.poll[row] = -1
        self._free.append(row)

    def rows(self) -> Iterator[int]:
        """The rows taken, in no particular order (a snapshot: removing meanwhile is safe)."""
        ids = self.ids
        return iter([row for row in range(self._top) if ids[row] is not None])

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
        # Each row placed inline (half of what a call to `_place` a row cost): the index
        # doubles as the table grows, so every row is placed about twice on average.
        index = self._index = array("i", bytes(4 * size))
        mask = size - 1
        ids = self.ids
        for row in range(self._top):
            task_id = ids[row]
            if task_id is not None:
                at = hash(task_id) & mask
                while index[at]:
                    at = (at + 1) & mask
                index[at] = row + 1
