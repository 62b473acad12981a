"""`Watch` and `BatchStream`: async iterators over an engine's poller.

Both are async context managers too. They subscribe on first use (``async with`` or
the first ``__anext__``), never in their constructor. Cleanup is deterministic:
leaving ``async with``, `aclose`, an exception or cancelling the consumer unsubscribes
at once, so the poller stops polling tasks nobody watches. A plain ``async for`` left
with ``break`` drops the iterator; the poller holds only a weak reference to it, and
skips (and forgets) a task whose watchers are all gone before sending its next poll.
Deadlines are kept here, on the consumer's side, so they cost no background task.
"""

from __future__ import annotations

import heapq
import logging
import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
import attrs
from anyio.abc import TaskGroup

from .._core.errors import APIMartError, NotSubmittedError
from .._core.events import BatchEvent, EventKind, TaskUpdate, event_for_update
from .._core.models import Submission, TaskStatus, VideoRequest
from .engine import Engine
from .submit import UNENCODABLE, Gate, StreamClosed, SubmitOutcome, submit_each, unsendable

__all__ = ["BatchHooks", "BatchStream", "Watch"]

log = logging.getLogger("apimart_async")
E = TypeVar("E", TaskUpdate, BatchEvent)
# Queued events handed on between two yields to the event loop.
_EVENTS_PER_YIELD = 64
# A watch of at most this many tasks keeps their ids, to unsubscribe by at its end.
_FEW = 64


class _EventStream(Generic[E]):
    """Shared machinery: an unbounded channel from the poller, per-task deadlines."""

    def __init__(
        self, engine: Engine, *, timeout: float | None, task_timeout: float | None,
        progress_every: float | None = None,
    ) -> None:
        self._engine = engine
        self._progress_every = progress_every
        self._clock = clock = engine.clock
        self._task_timeout = task_timeout
        self._end = clock.now() + timeout if timeout is not None else math.inf
        self._ended = False
        # Unbounded: the poller must never wait for a slow consumer. A plain deque and
        # an event, not a memory stream: a dropped iterator has nothing left to close.
        self._queue: deque[E] = deque()
        self._arrived = anyio.Event()
        # Tasks still open here -> their deadline; the heap finds the earliest in
        # O(log n) (stale items, for tasks already ended, are skipped when met).
        self._deadlines: dict[str, float] = {}
        self._deadline_heap: list[tuple[float, str]] = []
        # Whether `_deadlines` lists every open task. A `Watch` without deadlines keeps
        # nothing per task (~50 bytes each at 100,000): the poller delivers a task's
        # final update once and then forgets the task, so nothing can follow it.
        self._tracked = True
        self._ready: deque[E] = deque()
        self._open_items = 0
        self._closed = False
        self._deliver = _WeakSubscriber(self)
        self._unyielded = 0
        # Set when the session closes: nothing arrives any more.
        self._session_gone = False
        engine.follow(self)

    # -- subclass hooks ------------------------------------------------------------------

    def _on_update(self, update: TaskUpdate) -> None:
        raise NotImplementedError

    def _timeout_event(self, task_id: str) -> E:
        """The final event of a task whose deadline passed."""
        raise NotImplementedError

    def _on_whole_deadline(self) -> None:
        """The whole stream's deadline passed (BatchStream stops sending)."""

    def _start(self) -> None:
        """Subscribe, and begin background work (BatchStream submits), on first use."""

    # -- plumbing -----------------------------------------------------------------------

    def _watch(self, task_id: str) -> None:
        now = self._clock.now()
        deadline = now + self._task_timeout if self._task_timeout is not None else math.inf
        # After the whole deadline, a late arrival times out at once.
        deadline = -math.inf if self._ended else min(deadline, self._end)
        if self._tracked:
            self._deadlines[task_id] = deadline
        if deadline != math.inf:
            heapq.heappush(self._deadline_heap, (deadline, task_id))
        # A task this session submitted waits for its first poll from its submission
        # (the poller knows when); any other is polled at once.
        self._engine.poller.subscribe(self._deliver, task_id, started_at=None,
                                      every=self._progress_every)

    def _emit(self, event: E) -> None:
        if not self._closed:
            self._queue.append(event)
            self._arrived.set()

    def _first_task_deadline(self) -> float:
        heap = self._deadline_heap
        while heap and self._deadlines.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # that task ended already
        return heap[0][0] if heap else math.inf

    def _earliest_deadline(self) -> float:
        return min(self._first_task_deadline(), self._end)

    def _poll_error(self, task_id: str) -> APIMartError | None:
        """The last poll's error if `task_id`'s polls are failing: a deadline that passes
        during an outage says so."""
        poller = self._engine.poller_started
        return poller.failing(task_id) if poller is not None else None

    def _forget(self, task_id: str) -> None:
        """The task has had its final event here: stop tracking and polling it."""
        self._deadlines.pop(task_id, None)
        self._engine.poller.unsubscribe(self._deliver, [task_id])

    def _expire(self) -> None:
        now = self._clock.now()
        due: list[str] = []
        while self._first_task_deadline() <= now:
            due.append(heapq.heappop(self._deadline_heap)[1])
        if now >= self._end:
            self._end, self._ended = math.inf, True
            due.extend(self._deadlines)
            self._on_whole_deadline()
        for task_id in dict.fromkeys(due):
            self._ready.append(self._timeout_event(task_id))
            self._forget(task_id)

    def __aiter__(self) -> _EventStream[E]:
        return self

    async def __anext__(self) -> E:
        if self._closed:
            raise StopAsyncIteration
        self._start()
        while True:
            if self._ready:
                event = self._ready.popleft()
                self._count(event)
                return event
            if self._open_items <= 0:
                self.close()
                raise StopAsyncIteration
            deadline = self._earliest_deadline()
            try:
                if self._queue:
                    # A real checkpoint only every so many events: one per event let the
                    # poller's workers queue updates faster than the consumer took them
                    # (100,000 final `Task`s waiting at once).
                    self._unyielded += 1
                    if self._unyielded >= _EVENTS_PER_YIELD:
                        self._unyielded = 0
                        await anyio.lowlevel.checkpoint()
                    else:
                        await anyio.lowlevel.checkpoint_if_cancelled()
                else:
                    self._unyielded = 0
                    if self._session_gone:
                        # What was queued has been handed on; nothing polls any more.
                        raise RuntimeError(
                            "the session was closed: nothing more arrives here; "
                            "follow the tasks again in a new Session")
                    with self._clock.move_on_at(deadline):
                        await self._arrived.wait()
                    self._arrived = anyio.Event()
            except BaseException:
                # Cancelled, or the consumer's task is going away: stop polling now.
                self.close()
                raise
            if not self._queue:
                self._expire()  # a deadline passed (or nothing yet: then this is a no-op)
                continue
            event = self._queue.popleft()
            if self._accept(event):
                self._count(event)
                return event

    def _accept(self, event: E) -> bool:
        """Whether to hand `event` on: nothing follows a task's final event."""
        task_id = event.task_id
        if task_id is None:
            return True  # an item that never became a task (BatchStream)
        if self._tracked and task_id not in self._deadlines:
            return False  # that task already ended here (it timed out)
        if event.final:
            self._forget(task_id)
        return True

    def _count(self, event: E) -> None:
        if event.final:
            self._open_items -= 1

    def session_closed(self) -> None:
        """The session closed: a consumer waiting here is woken, and raises."""
        self._session_gone = True
        self._arrived.set()

    def _subscribed(self) -> list[str] | None:
        """The task ids this stream may still be subscribed to, if it knows them (None:
        ask the poller to look through all its tasks)."""
        if self._tracked:
            return list(self._deadlines)
        return [] if self._open_items <= 0 else None

    def close(self) -> None:
        """Stop at once: unsubscribe from the poller and close the channel (idempotent)."""
        if self._closed:
            return
        self._closed = True
        poller = self._engine.poller_started
        if poller is not None:
            # By task id where known: a look through every task of the session at the
            # end of each watch made one `wait` per task quadratic (review 9: 8,000
            # concurrent waits 13.5 s of CPU; 19 ms a `wait` among 100,000 tasks).
            task_ids = self._subscribed()
            if task_ids is None:
                poller.unsubscribe(self._deliver)
            elif task_ids:
                poller.unsubscribe(self._deliver, task_ids)
        self._deadlines.clear()
        self._deadline_heap.clear()
        self._queue.clear()

    async def aclose(self) -> None:
        """Same as `close`, for ``contextlib.aclosing`` and the like."""
        self.close()

    async def __aenter__(self) -> _EventStream[E]:
        if not self._closed:
            self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _WeakSubscriber:
    """What the poller holds for a stream: a weak reference, so a dropped stream (a
    plain ``async for`` left with ``break``) is collected; `alive` then turns False and
    the poller stops polling for it before the next request."""

    __slots__ = ("_ref",)

    def __init__(self, stream: _EventStream[TaskUpdate] | _EventStream[BatchEvent]) -> None:
        self._ref = weakref.ref(stream)

    @property
    def alive(self) -> bool:
        stream = self._ref()
        return stream is not None and not stream._closed

    def __call__(self, update: TaskUpdate) -> None:
        stream = self._ref()
        if stream is not None:
            stream._on_update(update)


class Watch(_EventStream[TaskUpdate]):
    """The updates of a fixed set of tasks, as `Session.watch` returns them.

    Iterating yields one `TaskUpdate` per change of status or progress, then exactly
    one final update per task, and stops when every task has had its final update.
    """

    def __init__(
        self,
        engine: Engine,
        task_ids: Sequence[str],
        *,
        timeout: float | None,
        task_timeout: float | None,
        progress_every: float | None = None,
    ) -> None:
        super().__init__(engine, timeout=timeout, task_timeout=task_timeout,
                         progress_every=progress_every)
        self._task_ids = list(task_ids)
        self._open_items = len(self._task_ids)
        # A few ids are kept to unsubscribe by (a `wait` is one); many are not (a watch
        # without deadlines keeps nothing per task: the poller is looked through once).
        self._few = self._task_ids if len(self._task_ids) <= _FEW else None
        self._last: dict[str, TaskUpdate] = {}
        self._started = False
        # No deadline, no timeout event: nothing to keep per task here.
        self._tracked = timeout is not None or task_timeout is not None

    def _start(self) -> None:
        if not self._started:
            self._started = True
            task_ids, self._task_ids = self._task_ids, []  # the poller has them now
            for task_id in task_ids:
                self._watch(task_id)

    def _on_update(self, update: TaskUpdate) -> None:
        self._emit(update)

    def _subscribed(self) -> list[str] | None:
        task_ids = super()._subscribed()
        return self._few if task_ids is None else task_ids

    def _accept(self, event: TaskUpdate) -> bool:
        if not super()._accept(event):
            return False
        if not self._tracked:
            return True  # no timeout event to build: keep nothing
        # The latest update of a task still open, for its timeout event; an ended task's
        # is the caller's now (100,000 watched tasks kept their final `Task`s here).
        if event.final:
            self._last.pop(event.task_id, None)
        else:
            self._last[event.task_id] = event
        return True

    def _timeout_event(self, task_id: str) -> TaskUpdate:
        last = self._last.get(task_id)
        return TaskUpdate(
            task_id=task_id,
            status=last.status if last else TaskStatus.UNKNOWN,
            progress=last.progress if last else 0,
            task=last.task if last else None,
            error=self._poll_error(task_id),
            timed_out=True,
        )


@attrs.frozen(kw_only=True)
class BatchHooks:
    """How the batch runner drives a `BatchStream` (internal API; `Session.stream`
    passes none).

    - `keys`: the Idempotency-Key of each request, by index (else fresh ones).
    - `before_submit(index)`: awaited at the gate, holding the request slot and rate
      token, right before the bytes go out (the runner journals "submitting").
    - `after_submit(index, outcome)`: awaited as each submission ends, before anything
      else happens to it: the `Submission`, the error, or None when the item was not
      sent or was refused without creating anything (back in line).
    - `task_group`: where the submitter runs, instead of the engine's, so that a
      failing hook reaches its owner.
    - `admit(index)`: awaited before the item waits for a request slot (a spend cap
      reserves its cost there); False leaves it unsent, as a closed gate does.
    - `settle(index, charged)`: called exactly once for every item `admit` let
      through, when its submission has ended: `charged` when it may be billed (a task
      id came back, or it may have been created).
    """

    keys: Sequence[str] | None = None
    admit: Callable[[int], Awaitable[bool]] | None = None
    settle: Callable[[int, bool], None] | None = None
    before_submit: Callable[[int], Awaitable[None]] | None = None
    after_submit: Callable[[int, SubmitOutcome | None], Awaitable[None]] | None = None
    task_group: TaskGroup | None = None


class BatchStream(_EventStream[BatchEvent]):
    """Submit a list of requests and follow every one to its end, as one event stream.

    Yields `BatchEvent`s: SUBMITTED, PROGRESS, then one final event per item
    (COMPLETED, FAILED, SUBMIT_FAILED or TIMED_OUT). Submission starts on first
    iteration (or on ``async with``). Leaving early stops sending further items;
    a submission already on the wire is allowed to finish and its task id is logged.
    """

    def __init__(
        self,
        engine: Engine,
        requests: Sequence[VideoRequest],
        *,
        timeout: float | None,
        task_timeout: float | None,
        hooks: BatchHooks | None = None,
        progress_every: float | None = None,
    ) -> None:
        super().__init__(engine, timeout=timeout, task_timeout=task_timeout,
                         progress_every=progress_every)
        hooks = hooks or BatchHooks()
        self._keys = hooks.keys
        self._before_submit = hooks.before_submit
        self._after_submit = hooks.after_submit
        self._admit = hooks.admit
        self._settle = hooks.settle
        # Where the submitter runs: the engine's task group, unless the caller owns one
        # (run_batch does, so a failing hook reaches it rather than the session).
        self._task_group = hooks.task_group
        self._requests = list(requests)
        self._open_items = len(self._requests)
        self._gate = Gate()
        self._started = False
        self._sent_all = anyio.Event()
        # Items waiting for a request slot or rate token, by index: `stop_sending`
        # cancels these waits; an item leaves this map at the gate, as it goes out.
        self._waiting: dict[int, anyio.CancelScope] = {}
        self._by_task: dict[str, tuple[int, Submission]] = {}
        # Later items the server answered with a task id it had already given to an
        # earlier one (`_by_task`): they follow that task and end with it.
        self._twins: dict[str, list[tuple[int, Submission]]] = {}

    async def __aenter__(self) -> BatchStream:
        if not self._closed:
            self._start()
        return self

    def _start(self) -> None:
        if not self._started:
            self._started = True
            if self._task_group is not None:
                self._task_group.start_soon(self._submit_all)
            else:
                self._engine.spawn(self._submit_all)

    async def _submit_all(self) -> None:
        try:
            await submit_each(
                self._requests, self._submit_one, self._submitted,
                workers=self._engine.max_concurrency, gate=self._gate,
            )
        finally:
            self._sent_all.set()

    async def _submit_one(
        self, index: int, request: VideoRequest, gate: Callable[[], None]
    ) -> Submission:
        key = self._keys[index] if self._keys is not None else None

        maybe_sent = False
        waiting = anyio.CancelScope()

        async def at_the_gate() -> None:
            # Past the gate, holding a slot and a rate token: from here on the item is
            # on the wire and an interrupt lets it land.
            nonlocal maybe_sent
            self._waiting.pop(index, None)
            maybe_sent = True
            if self._before_submit is not None:
                await self._before_submit(index)  # e.g. journal "submitting", then send

        async def back_in_line() -> None:
            # The attempt was refused without creating anything; the retry waits again.
            nonlocal maybe_sent
            maybe_sent = False
            self._waiting[index] = waiting
            if self._after_submit is not None:
                await self._after_submit(index, None)  # e.g. journal "pending" again

        submission: Submission | None = None
        admitted = False
        failure: APIMartError | None = None
        try:
            with waiting:
                self._waiting[index] = waiting
                try:
                    if self._admit is not None:
                        if not await self._admit(index):
                            raise StreamClosed  # e.g. over the spend cap: left unsent
                        admitted = True
                    try:
                        submission = await self._engine.submit(
                            request, key=key, gate=gate, before_send=at_the_gate,
                            on_safe_retry=back_in_line,
                        )
                    except UNENCODABLE as exc:
                        refused = unsendable(request, exc)
                        if refused is None:
                            raise
                        raise refused from None
                finally:
                    self._waiting.pop(index, None)
            if submission is None:
                raise StreamClosed  # `stop_sending` ended its wait: never sent
        except APIMartError as exc:
            if isinstance(exc, NotSubmittedError) and maybe_sent:
                # Stopped before a retry of an attempt that may have created it.
                exc.submission_ambiguous = True
            failure = exc
            if self._after_submit is not None:
                await self._after_submit(index, exc)
            raise
        except StreamClosed:
            # Stopped before (re)sending. If an ambiguous attempt went before (retried
            # by policy), it stays as journaled: "submitting", i.e. it may exist.
            if self._after_submit is not None and not maybe_sent:
                await self._after_submit(index, None)
            raise
        finally:
            if admitted and self._settle is not None:
                # Billed, or maybe: a task id came back, the failure was ambiguous, or
                # the item was on the wire when cancelled from outside.
                charged = submission is not None or (
                    failure.submission_ambiguous if failure is not None else maybe_sent)
                self._settle(index, charged)
        # On a cancellation from outside nothing is recorded here: an item on the wire
        # stays as journaled ("submitting"), which is the truth.
        if self._after_submit is not None:
            await self._after_submit(index, submission)  # record the task id at once
        return submission

    def close_gate(self) -> None:
        """Send nothing more from now on (items past the gate land); no waiting."""
        self._gate.closed = True
        for scope in list(self._waiting.values()):
            scope.cancel()  # waiting for a slot or a rate token: never sent

    async def stop_sending(self) -> None:
        """Send nothing more; return once submissions on the wire have ended (and
        `after_submit` has recorded each)."""
        self._gate.closed = True
        for scope in list(self._waiting.values()):
            scope.cancel()  # waiting for a slot or a rate token: never sent
        if self._started:
            await self._sent_all.wait()

    def _submitted(self, index: int, outcome: SubmitOutcome | None) -> None:
        request = self._requests[index]
        if outcome is None:
            # Not sent: the whole deadline passed (or the consumer left: then unseen).
            self._emit(BatchEvent(kind=EventKind.TIMED_OUT, index=index, request=request))
            return
        if isinstance(outcome, APIMartError):
            self._emit(BatchEvent(kind=EventKind.SUBMIT_FAILED, index=index, request=request,
                                  error=outcome))
            return
        if self._closed:
            log.warning("task %s was submitted after its stream was closed; it is not watched",
                        outcome.task_id)
            return
        if outcome.task_id in self._by_task and outcome.task_id in self._deadlines:
            # One task for two submissions: the server's doing, not ours. Both items
            # follow it and end with it, each with its own final event, never a hang.
            log.warning("the server answered item %d with task id %s, already given to "
                        "item %d: both follow that one task", index, outcome.task_id,
                        self._by_task[outcome.task_id][0])
            self._twins.setdefault(outcome.task_id, []).append((index, outcome))
            self._emit(BatchEvent(kind=EventKind.SUBMITTED, index=index, request=request,
                                  submission=outcome))
            return
        self._by_task[outcome.task_id] = (index, outcome)
        self._emit(BatchEvent(kind=EventKind.SUBMITTED, index=index, request=request,
                              submission=outcome))
        self._watch(outcome.task_id)

    def _on_update(self, update: TaskUpdate) -> None:
        found = self._by_task.get(update.task_id)
        if found is not None:
            index, submission = found
            for twin, twin_submission in self._twins.get(update.task_id, ()):
                self._emit(event_for_update(update, twin, self._requests[twin], twin_submission))
            self._emit(event_for_update(update, index, self._requests[index], submission))

    def _accept(self, event: BatchEvent) -> bool:
        twins = self._twins.get(event.task_id or "")
        if twins and event.final and event.task_id in self._deadlines:
            # A shared task is forgotten only with the last of its items' final events.
            if event.index != self._by_task[event.task_id or ""][0]:
                return True
            del self._twins[event.task_id or ""]
        return super()._accept(event)

    def _timeout_event(self, task_id: str) -> BatchEvent:
        index, submission = self._by_task[task_id]
        for twin, twin_submission in self._twins.pop(task_id, ()):
            self._ready.append(BatchEvent(kind=EventKind.TIMED_OUT, index=twin,
                                          request=self._requests[twin],
                                          submission=twin_submission))
        return BatchEvent(kind=EventKind.TIMED_OUT, index=index,
                          request=self._requests[index], submission=submission,
                          error=self._poll_error(task_id))

    def _on_whole_deadline(self) -> None:
        # Items not sent yet will not be; each still gets its TIMED_OUT event from the
        # submitting side, and one already on the wire gets it with its task id.
        self._gate.closed = True

    def close(self) -> None:
        self._gate.closed = True
        for scope in list(self._waiting.values()):
            scope.cancel()  # items still waiting for a slot are not sent
        super().close()
