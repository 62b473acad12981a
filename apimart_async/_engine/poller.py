"""One poller per session: a heap of next-poll times and a fixed pool of workers.

Watching 10,000 tasks costs a row of the tasks' table (`entries.Entries`) and a place
in the poll queue each, and a slot of the poll-state columns once polled, not a
sleeping coroutine each. Polls go
through the session's transport, so they share its concurrency and rate limits with
submissions.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
from array import array
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.errors import APIMartError, APIStatusError, DecodeError, ValidationError
from .._core.events import TaskUpdate
from .._core.hooks import Hooks
from .._core.models import Task, TaskStatus
from .._core.polling import (
    STATUS_INDEX,
    STATUSES,
    ModelStats,
    PollColumns,
    PollPolicy,
    PollState,
    missed,
    next_delay,
    observe,
)
from .._core.wire import TaskGet
from .._io.clock import Clock
from .._io.hooks import fire
from .entries import Entries

__all__ = ["Poller", "Subscriber"]

log = logging.getLogger("apimart_async")

Subscriber = Callable[[TaskUpdate], None]
"""Receives updates; called on the poller's task, so it must not block. One with an
``alive`` attribute that reads False is dropped before the task's next poll."""


# What is learned is kept for this many models per session (the oldest is forgotten).
_MODELS = 64
# Submitted tasks not watched yet (their submission time and model), kept for at most
# this many tasks: tasks submitted but never watched would otherwise pile up.
_EXPECTED = 100_000


class _Running(PollColumns):
    """The poll states of the tasks polled at least once, in columns by slot (#14:
    ~800 bytes a running task in objects: a poll state with boxed floats and reading
    tuples, the last `Task`), and the poller's own per-task columns beside them: when
    the latest poll was sent, and the last answer's status and progress (all that
    change detection compares; the `Task` itself went to the subscribers). The GET
    request is not kept either: it is built for each poll (~1 us). When its next poll
    is due is in the entries' table (`Entries.due`), from before its first poll on."""

    __slots__ = ("polled_at", "seen_progress", "seen_status")

    def __init__(self) -> None:
        super().__init__()
        self.polled_at = array("d")
        # The last answer's status (an index in `STATUSES`; -1: no answer yet).
        self.seen_status = array("b")
        self.seen_progress = array("i")

    def new(self) -> int:
        slot = super().new()
        self.polled_at[slot] = math.nan
        self.seen_status[slot] = -1
        self.seen_progress[slot] = 0
        return slot

    def _grown(self, slots: int) -> None:
        if slots == 0:
            self.polled_at, self.seen_status, self.seen_progress = (
                array("d"), array("b"), array("i"))
            return
        grow = slots - len(self.seen_status)
        if grow > 0:
            self.polled_at.extend([math.nan] * grow)
            self.seen_status.extend([-1] * grow)
            self.seen_progress.extend([0] * grow)


class _DueQueue:
    """The poll queue: items ``(due, task_id, generation)``, taken in ascending order,
    exactly as one heap of them gives them (#7's schedule does not move).

    Nothing is kept as a tuple (#14): the heap is three columns (dues as C doubles, ids,
    generations as C ints), sifted in Python exactly as `heapq` sifts a list of tuples,
    ~20 bytes an item against a tuple, its due and its list slot (~96); 100,000 running
    tasks hold ~7.5 MB less, for a few microseconds more a poll. Beside it, a run of
    first polls pushed in ascending order (a watch of tasks this session submitted
    places them in the order they were submitted) is kept as a column of dues and one
    of ids, ~17 bytes an item, and costs no sifting at all. Taking the smaller head of
    the two gives the heap's order: both are sorted by the same key.
    """

    __slots__ = ("_at", "_dues", "_gens", "_hdues", "_hids", "_ids")

    def __init__(self) -> None:
        # The heap, in columns: item i is (_hdues[i], _hids[i], _gens[i]).
        self._hdues = array("d")
        self._hids: list[str] = []
        self._gens = array("I")
        # The run: items (due, id, 1) from `_at` on, ascending.
        self._dues = array("d")
        self._ids: list[str] = []
        self._at = 0

    def __len__(self) -> int:
        return len(self._hids) + len(self._ids) - self._at

    def push(self, due: float, task_id: str, generation: int) -> bool:
        """Queue an item; True if the first one out is now one of `task_id`'s."""
        ids = self._ids
        if generation == 1 and (self._at == len(ids)
                                or (self._dues[-1], ids[-1]) <= (due, task_id)):
            self._dues.append(due)
            ids.append(task_id)
        else:
            self._heap_push(due, task_id, generation)
        first = self.first()
        return first is not None and first[1] == task_id

    def _heap_push(self, due: float, task_id: str, generation: int) -> None:
        # heapq.heappush: the new item moves up past every parent greater than it.
        pos = len(self._hids)
        self._hdues.append(due)
        self._hids.append(task_id)
        self._gens.append(generation)
        self._sift_up(pos, due, task_id, generation)

    def _sift_up(self, pos: int, due: float, task_id: str, generation: int) -> None:
        # Place the item at `pos`, or higher past every parent greater than it (ties by
        # task id, then generation: the order of heapq's tuples).
        dues, hids, gens = self._hdues, self._hids, self._gens
        while pos:
            parent = (pos - 1) >> 1
            parent_due = dues[parent]
            if due > parent_due:
                break
            if due == parent_due:
                parent_id = hids[parent]
                if task_id > parent_id or (task_id == parent_id
                                           and generation >= gens[parent]):
                    break
            dues[pos] = parent_due
            hids[pos] = hids[parent]
            gens[pos] = gens[parent]
            pos = parent
        dues[pos] = due
        hids[pos] = task_id
        gens[pos] = generation

    def _heap_pop(self) -> tuple[float, str, int]:
        # heapq.heappop: the last item takes the root's place, goes down to a leaf by
        # the smaller child, then back up past every parent greater than it.
        dues, hids, gens = self._hdues, self._hids, self._gens
        due, task_id, generation = dues.pop(), hids.pop(), gens.pop()
        end = len(hids)
        if not end:
            # Emptied: give the columns' memory back.
            self._hdues, self._hids, self._gens = array("d"), [], array("I")
            return due, task_id, generation
        item = (dues[0], hids[0], gens[0])
        pos, child = 0, 1
        while child < end:
            right = child + 1
            if right < end:
                child_due, right_due = dues[child], dues[right]
                if child_due > right_due or (
                        child_due == right_due
                        and (hids[child], gens[child]) >= (hids[right], gens[right])):
                    child = right
            dues[pos] = dues[child]
            hids[pos] = hids[child]
            gens[pos] = gens[child]
            pos = child
            child = 2 * pos + 1
        self._sift_up(pos, due, task_id, generation)
        return item

    def _heap_first(self) -> tuple[float, str, int] | None:
        return (self._hdues[0], self._hids[0], self._gens[0]) if self._hids else None

    def first(self) -> tuple[float, str, int] | None:
        """The next item out, without taking it."""
        head, at = self._heap_first(), self._at
        if at < len(self._ids):
            item = (self._dues[at], self._ids[at], 1)
            if head is None or item < head:
                return item
        return head

    def first_due(self) -> float:
        """When the next item is due (infinity if none)."""
        at, hids = self._at, self._hids
        if at < len(self._ids):
            due = self._dues[at]
            if not hids:
                return due
            head_due = self._hdues[0]
            if due < head_due or (due == head_due
                                  and (due, self._ids[at], 1) < (head_due, hids[0],
                                                                 self._gens[0])):
                return due
            return head_due
        return self._hdues[0] if hids else math.inf

    def pop(self) -> tuple[float, str, int]:
        """Take the next item out."""
        at, ids = self._at, self._ids
        if at < len(ids):
            item = (self._dues[at], ids[at], 1)
            head = self._heap_first()
            if head is None or item < head:
                at += 1
                if at == len(ids):
                    self._dues, self._ids, at = array("d"), [], 0
                elif at >= 4096 and 2 * at >= len(ids):
                    del self._dues[:at], ids[:at]
                    at = 0
                self._at = at
                return item
        return self._heap_pop()


class _Resolutions:
    """Subscribers that asked for a progress resolution -> their `progress_every` (the
    task is polled no later than the tightest one after its last poll), and when the
    policy alone would poll next."""

    __slots__ = ("every", "policy_due")

    def __init__(self, policy_due: float) -> None:
        self.every: dict[Subscriber, float] = {}
        self.policy_due = policy_due


def _stops_watching(error: APIMartError) -> bool:
    # A 4xx (bad id, bad key) will not get better by asking again; transient
    # failures left over after the transport's retries are tried again later.
    if error.fatal or isinstance(error, ValidationError):
        return True
    return isinstance(error, APIStatusError) and error.status < 500 and error.status != 429


class Poller:
    """Schedules polls for every watched task of a session and fans updates out."""

    def __init__(
        self,
        *,
        fetch: Callable[[TaskGet], Awaitable[Task]],
        policy: PollPolicy,
        clock: Clock,
        workers: int,
        hooks: Hooks | None = None,
    ) -> None:
        self._fetch = fetch
        self._on_update = (hooks or Hooks()).on_task_update
        self._policy = policy
        self._clock = clock
        self._workers = workers
        # One row a task (watched, or submitted and not watched yet), in columns.
        self._table = Entries()
        # What polls left, by the row's poll slot; one `PollState` the policy works on,
        # filled from a slot and written back with no await in between.
        self._running = _Running()
        self._state = PollState(started_at=0.0)
        # Rare per-task things by row, only while they last: a poll in flight (at most
        # one per worker), the error of polls that keep failing, an unknown status's
        # wire string, the subscribers' progress resolutions.
        self._inflight: dict[int, anyio.CancelScope] = {}
        self._errors: dict[int, APIMartError] = {}
        self._raw_status: dict[int, str] = {}
        self._res: dict[int, _Resolutions] = {}
        # Learned per model across this session's tasks; "" pools every model, for
        # tasks whose model is not known yet (before their first answer).
        self._stats: dict[str, ModelStats] = {}
        # Rows of submitted tasks nobody watches yet (no subscribers, not scheduled):
        # the hand-over from submitting to watching is the row itself, not two more
        # tables of 100,000 (submission time, model) beside it.
        self._unwatched = 0
        self._queue = _DueQueue()
        self._wakeup = anyio.Event()
        self._solo: tuple[Subscriber, ...] = ()
        self._started = False
        self._tg: TaskGroup | None = None

    @property
    def watched(self) -> int:
        """How many tasks are being polled."""
        return len(self._table) - self._unwatched

    def bind(self, tg: TaskGroup) -> None:
        """Run in `tg` (the session's task group) once there is something to poll."""
        self._tg = tg

    def expect(self, task_id: str, model: str, submitted_at: float) -> None:
        """This session submitted `task_id` for `model` at `submitted_at` (clock time):
        its first poll, once watched, waits for the policy's first delay from then and
        uses what the session learned about that model."""
        table = self._table
        if table.insert(task_id, submitted_at, model) < 0:
            return
        self._unwatched += 1
        if self._unwatched > _EXPECTED:
            # The oldest not watched (by arrival), a batch at a time: the table is
            # scanned once per batch, not once per submission.
            excess = self._unwatched - _EXPECTED + _EXPECTED // 64
            subscribers = table.subscribers
            oldest = heapq.nlargest(
                excess, (row for row in table.rows() if not subscribers[row]), key=table.age)
            for row in oldest:
                self._drop(row)
            self._unwatched -= len(oldest)

    def _first_delay(self, row: int) -> float:
        # A throwaway state: the task's own is made at its first answer.
        table = self._table
        model, started_at = table.models[row], table.started[row]
        stats = self._first_stats() if model is None else self._stats.get(model)
        return next_delay(self._policy, PollState(started_at=started_at), started_at, stats)

    def subscribe(self, subscriber: Subscriber, task_id: str, *, started_at: float | None,
                  every: float | None = None) -> None:
        """Deliver `task_id`'s updates to `subscriber`.

        `started_at` is when the task was submitted (clock time), if known: the first
        poll then waits for the policy's first delay; an unknown task is polled at once.
        `every` (API seconds), if given, bounds the gap between the task's polls while
        this subscriber watches it; other subscribers' schedule is the policy's.
        """
        table = self._table
        row = table.find(task_id)
        if row < 0 or not table.subscribers[row]:
            if row >= 0:
                # Submitted by this session: its submission time and model are known.
                self._unwatched -= 1
                due = table.started[row] + self._first_delay(row)
            elif started_at is None:
                row = table.add(task_id, self._clock.now())
                due = table.started[row]  # at once
            else:
                row = table.add(task_id, started_at)
                due = started_at + self._first_delay(row)
            if every is not None:
                res = self._res[row] = _Resolutions(due)
                res.every[subscriber] = every
            self._schedule_at(row, due)
        else:
            slot, running = table.poll[row], self._running
            if slot >= 0 and running.seen_status[slot] >= 0:
                arrival = table.arrivals[row]
                # What it last read (its `Task` went to the subscribers then).
                subscriber(TaskUpdate(
                    task_id=task_id, status=STATUSES[running.seen_status[slot]],
                    progress=running.seen_progress[slot]))
                if not table.alive(row, arrival):
                    return  # the subscriber left at once
            if every is not None:
                known = self._res.get(row)
                if known is None:
                    # Until now its next poll was the policy's alone.
                    known = self._res[row] = _Resolutions(table.due[row])
                known.every[subscriber] = every
                self._reschedule(row)  # sooner, if it asks so
        subscribers = table.subscribers[row]
        if not subscribers:
            # A watch subscribes each of its tasks with one subscriber: one tuple for all.
            solo = self._solo
            if not solo or solo[0] is not subscriber:
                solo = self._solo = (subscriber,)
            table.subscribers[row] = solo
        elif subscriber not in subscribers:
            table.subscribers[row] = (*subscribers, subscriber)
        self._start()

    def unsubscribe(self, subscriber: Subscriber, task_ids: list[str] | None = None) -> None:
        """Stop delivering to `subscriber`; tasks nobody watches any more stop being polled."""
        table = self._table
        rows = table.rows() if task_ids is None else map(table.find, task_ids)
        for row in rows:
            # A row of the snapshot may be gone since (and the table emptied and reset).
            if row < 0 or row >= len(table.ids):
                continue
            subscribers = table.subscribers[row]
            if subscriber not in subscribers:
                continue
            subscribers = table.subscribers[row] = tuple(
                s for s in subscribers if s != subscriber)
            if not subscribers:
                self._unwatch(row)
                continue
            res = self._res.get(row)
            if res is not None and res.every.pop(subscriber, None) is not None:
                # Back to the policy's schedule (or the next tightest resolution).
                self._reschedule(row)

    def failing(self, task_id: str) -> APIMartError | None:
        """The error of `task_id`'s last poll if its polls are failing, else None."""
        row = self._table.find(task_id)
        return self._errors.get(row) if row >= 0 else None

    def _still_watched(self, row: int) -> bool:
        """Forget subscribers that are gone (a dropped iterator); False if none is left."""
        table = self._table
        subscribers = table.subscribers[row]
        if not subscribers:
            # Unwatched while its id waited for a worker (a submitted task never polled
            # keeps its row for a later watch): not polled, nor rescheduled (review 10:
            # such a task was polled until it ended).
            return False
        alive = tuple(s for s in subscribers if getattr(s, "alive", True))
        if len(alive) != len(subscribers):
            res = self._res.get(row)
            if res is not None:
                for subscriber in subscribers:
                    if subscriber not in alive:
                        res.every.pop(subscriber, None)
            table.subscribers[row] = alive
            if not alive:
                self._unwatch(row)
                return False
        return True

    def _unwatch(self, row: int) -> None:
        """Its last subscriber left: stop polling it. A task this session submitted and
        never polled goes back to what `expect` made of it, so that a later watch (a
        `wait` again after a timeout) still knows its submission time and model, instead
        of polling it at once and on a schedule for a task of unknown age."""
        table = self._table
        if table.poll[row] >= 0 or table.models[row] is None:
            self._drop(row)
            return
        table.gens[row] += 1  # its queue item is now stale
        self._res.pop(row, None)
        self._unwatched += 1

    def _drop(self, row: int) -> None:
        # Everything kept by row goes with it: the row is handed to another task next.
        table = self._table
        slot = table.poll[row]
        if slot >= 0:
            self._running.free(slot)
        self._res.pop(row, None)
        self._errors.pop(row, None)
        self._raw_status.pop(row, None)
        scope = self._inflight.pop(row, None)
        if scope is not None:
            scope.cancel()
        # Its queue items are stale: a task added again starts its generations afresh,
        # and the schedule takes only one item of a generation.
        table.remove(row)

    def _schedule_at(self, row: int, policy_due: float) -> None:
        """Poll `row`'s task at `policy_due` (the policy's choice), or sooner if a
        subscriber's progress resolution asks for it (never sooner than `min_interval`
        after the last poll)."""
        res = self._res.get(row)
        if res is None:
            self._push(row, policy_due)
        else:
            res.policy_due = policy_due
            self._push(row, self._due(row, res))

    def _reschedule(self, row: int) -> None:
        """A subscriber with a resolution came or went: move the next poll if it changes
        (not while a poll is in flight or polls are failing: those set it themselves)."""
        res = self._res.get(row)
        if res is not None and row not in self._inflight and row not in self._errors:
            due = self._due(row, res)
            if due != self._table.due[row]:
                self._push(row, due)

    def _due(self, row: int, res: _Resolutions) -> float:
        due, bound = res.policy_due, self._bound(row, res)
        if bound >= due:
            return due
        slot = self._table.poll[row]
        if slot >= 0:
            bound = max(bound, self._running.polled_at[slot] + self._policy.min_interval)
        return bound

    def _bound(self, row: int, res: _Resolutions) -> float:
        """The latest `row`'s next poll may go out at for its subscribers' resolutions."""
        if not res.every:
            return math.inf
        slot = self._table.poll[row]
        since = self._running.polled_at[slot] if slot >= 0 else self._table.started[row]
        return since + min(res.every.values())

    def _due_of(self, row: int) -> float:
        """When `row`'s next poll is (or its latest was) due."""
        return self._table.due[row]

    def _push(self, row: int, due: float) -> None:
        table = self._table
        generation = table.gens[row] + 1
        table.gens[row] = generation
        table.due[row] = due
        # No tie-breaking counter: task ids are unique, and an int per item is 28 bytes.
        if self._queue.push(due, table.ids[row], generation):  # type: ignore[arg-type]
            self._wakeup.set()

    def _start(self) -> None:
        if self._started:
            return
        if self._tg is None:
            raise RuntimeError("the session is not open: use 'async with Session(...) as s'")
        self._started = True
        self._tg.start_soon(self._run, name="apimart_async poller")

    async def _run(self) -> None:
        # A row and its arrival number: the worker checks the row still holds that task
        # (it may have been dropped meanwhile) without looking the id up again.
        send, receive = anyio.create_memory_object_stream[tuple[int, int]](0)
        failure: list[Exception] = []

        async def guarded(func: Callable[[], Awaitable[None]]) -> None:
            # A bug (say a TypeError) in several workers at once would leave as a group
            # of identical errors: the first one stops the poller, and leaves alone.
            try:
                await func()
            except Exception as exc:
                if not failure:
                    failure.append(exc)
                tg.cancel_scope.cancel()

        async with send, receive, anyio.create_task_group() as tg:
            for _ in range(self._workers):
                tg.start_soon(guarded, functools.partial(self._worker, receive.clone()))
            tg.start_soon(guarded, functools.partial(self._schedule, send))
        if failure:
            raise failure[0]

    async def _schedule(self, send: MemoryObjectSendStream[tuple[int, int]]) -> None:
        queue, table = self._queue, self._table
        while True:
            now = self._clock.now()
            while queue.first_due() <= now:
                _, task_id, generation = queue.pop()
                row = table.find(task_id)
                if row >= 0 and table.gens[row] == generation:
                    # Taken: an item just like it (left by a watch of the same task that
                    # ended before its first poll, numbered from 1 as this one) is stale.
                    table.gens[row] = generation + 1
                    # Blocks while every worker is busy: the queue is the only queue.
                    await send.send((row, table.arrivals[row]))
            due = queue.first_due()
            if due > self._clock.now():
                with self._clock.move_on_at(due):
                    await self._wakeup.wait()
                self._wakeup = anyio.Event()

    async def _worker(self, receive: MemoryObjectReceiveStream[tuple[int, int]]) -> None:
        table = self._table
        async with receive:
            async for row, arrival in receive:
                if table.alive(row, arrival) and self._still_watched(row):
                    await self._poll(row)

    async def _poll(self, row: int) -> None:
        table = self._table
        task_id: str = table.ids[row]  # type: ignore[assignment]
        # Which task holds the row: it may be dropped while the poll is out, and the
        # row handed to another task (even the same task id, added again).
        arrival = table.arrivals[row]
        try:
            get = TaskGet(task_id)
        except APIMartError as exc:  # a bad id (ValidationError): nothing is sent
            self._fail(row, arrival, exc)
            return
        running = self._running
        slot = table.poll[row]
        if slot < 0:
            slot = table.poll[row] = running.new()
        result: Task | APIMartError | None = None
        sent_at = running.polled_at[slot] = self._clock.now()
        with anyio.CancelScope() as scope:
            self._inflight[row] = scope
            try:
                result = await self._fetch(get)
            except APIMartError as exc:
                result = exc
        if self._inflight.get(row) is scope:
            del self._inflight[row]
        if result is None or not table.alive(row, arrival):
            return  # nobody watches it any more
        now = self._clock.now()
        if isinstance(result, APIMartError):
            if _stops_watching(result):
                self._fail(row, arrival, result)
            else:
                self._missed(row, arrival, slot, result, sent_at, now)
            return
        # No await from here on: the one `PollState` is this task's until written back.
        state = running.load(slot, self._state, table.started[row])
        if self._errors.pop(row, None) is not None:
            log.warning("polls of task %s recovered after %d failed", task_id, state.misses)
        seen = running.seen_status[slot]
        status = STATUS_INDEX[result.status]
        running.seen_status[slot] = status
        if result.status is TaskStatus.UNKNOWN:
            # A status this SDK does not know: delivered (a newer server state must not
            # crash a watch), but counted as a failed poll, so one that never turns into
            # a known state ends under `give_up_after` instead of being polled forever.
            running.seen_progress[slot] = result.progress
            if seen != status or self._raw_status.get(row) != result.raw_status:
                self._raw_status[row] = result.raw_status
                self._deliver(row, _update(result))
            self._missed(row, arrival, slot, DecodeError(
                f"task {task_id} answered with status {result.raw_status[:64]!r}, "
                "unknown to this SDK", status=200, snippet=""), sent_at, now, state)
            return
        self._raw_status.pop(row, None)
        observe(state, now, result)
        if result.is_terminal:
            self._learn(row, state, now, result)
            self._finish(row, arrival, _update(result), state.polls)
            return
        changed = seen != status or running.seen_progress[slot] != result.progress
        running.seen_progress[slot] = result.progress
        model = table.models[row]
        if result.model and result.model != model:
            model = table.models[row] = result.model
        if changed:
            self._deliver(row, _update(result))
        stats = self._stats.get(model or "")
        if state.top_reads == 2:
            # Learned while the model's tasks still run, not only once they end.
            stats = stats or self._model_stats(model or "")
            stats.note(state)
        delay = next_delay(self._policy, state, now, stats)
        if table.alive(row, arrival):  # not dropped by a subscriber meanwhile
            running.save(slot, state)
            self._schedule_at(row, now + delay)

    def _missed(self, row: int, arrival: int, slot: int, error: APIMartError,
                sent_at: float, now: float, state: PollState | None = None) -> None:
        """A transient failure (left over after the transport's retries): poll again
        later, backing off, until the policy's `give_up_after`; then end the watch with
        the error. (`state`: `slot`'s, if already loaded.)"""
        table = self._table
        if not table.alive(row, arrival):
            return  # dropped by a subscriber of the answer that failed
        task_id = table.ids[row]
        if self._errors.get(row) is None:
            # Once per run of failures, not per poll: an outage would flood the log.
            log.warning("polls of task %s are failing (%s: %s); trying again, backing off",
                        task_id, type(error).__name__, error)
        if state is None:
            state = self._running.load(slot, self._state, table.started[row])
        delay = missed(self._policy, state, sent_at, now)
        if delay is None:
            log.warning("gave up watching task %s: its polls failed for %gs (%s: %s)",
                        task_id, now - (state.failing_since or sent_at),
                        type(error).__name__, error)
            self._fail(row, arrival, error)
            return
        self._running.save(slot, state)
        self._errors[row] = error
        self._push(row, now + delay)

    def _fail(self, row: int, arrival: int, error: APIMartError) -> None:
        """End the watch of `row`'s task with `error` (with the status and progress it
        last read, if any; its `Task` went to the subscribers then)."""
        table, running = self._table, self._running
        slot = table.poll[row]
        seen = running.seen_status[slot] if slot >= 0 else -1
        self._finish(row, arrival, TaskUpdate(
            task_id=table.ids[row],  # type: ignore[arg-type]
            status=STATUSES[seen] if seen >= 0 else TaskStatus.UNKNOWN,
            progress=running.seen_progress[slot] if seen >= 0 else 0, error=error,
        ))

    def _first_stats(self) -> ModelStats | None:
        """What places a new task's first poll, before its model is known: the session's
        tasks so far if they were all of one model (another model's timing says nothing)."""
        return self._stats.get("") if len(self._stats) <= 2 else None

    def _learn(self, row: int, state: PollState, now: float, task: Task) -> None:
        """Fold a task's end into what the session knows about its model."""
        model = task.model or self._table.models[row] or ""
        stats = self._model_stats(model)
        warned = stats.fails_mid_run
        stats.learn(state, now, task)
        if model:
            pooled = self._stats.get("")
            if pooled is None:
                pooled = self._stats[""] = ModelStats()
            pooled.learn(state, now, task)
        if stats.fails_mid_run and not warned:
            self._tighten(model, now)

    def _model_stats(self, model: str) -> ModelStats:
        stats = self._stats.get(model)
        if stats is None:
            if len(self._stats) >= _MODELS:
                del self._stats[next(k for k in self._stats if k)]
            stats = self._stats[model] = ModelStats()
        return stats

    def _tighten(self, model: str, now: float) -> None:
        """A task of `model` failed unannounced: bring its rendering tasks' polls forward
        to the pace `next_delay` now keeps for them."""
        due = now + self._policy.failure_interval
        table = self._table
        seen, processing = self._running.seen_status, STATUS_INDEX[TaskStatus.PROCESSING]
        for row in table.rows():
            slot = table.poll[row]
            if (slot >= 0 and seen[slot] == processing
                    and (table.models[row] or "") == model and table.due[row] > due
                    and row not in self._inflight):
                self._schedule_at(row, due)

    def _deliver(self, row: int, update: TaskUpdate) -> None:
        # A tuple: unsubscribing meanwhile is safe.
        for subscriber in self._table.subscribers[row]:
            subscriber(update)
        if self._on_update is not None:
            fire(self._on_update, update)

    def _finish(self, row: int, arrival: int, update: TaskUpdate, polls: int = 0) -> None:
        task_id = self._table.ids[row]
        if update.error is not None:
            log.debug("task %s: watching it ended with %s", task_id,
                      type(update.error).__name__)
        elif update.status is TaskStatus.COMPLETED:
            log.debug("task %s completed after %d polls", task_id, polls)
        else:
            error = update.task.error if update.task is not None else None
            log.debug("task %s ended %s%s", task_id, update.status.value,
                      f" ({error.code})" if error is not None and error.code else "")
        self._deliver(row, update)
        if self._table.alive(row, arrival):
            self._drop(row)


def _update(task: Task) -> TaskUpdate:
    return TaskUpdate(task_id=task.id, status=task.status, progress=task.progress, task=task)

