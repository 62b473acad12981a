"""`Watch` and `BatchStream`: async iterators over a session's poller.

Both are async context managers too. Leaving the loop (``break``), an exception or
cancelling the consumer unsubscribes at once, so the poller stops polling tasks
nobody watches; deadlines are kept here, on the consumer's side, so they cost no
background task.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._batch import (
    BatchEvent,
    EventKind,
    Gate,
    StreamClosed,
    SubmitOutcome,
    event_for_update,
    submit_each,
)
from ._clock import Clock
from ._errors import APIMartError, NotSubmittedError
from ._models import Submission, TaskStatus, TaskUpdate, VideoRequest
from ._poller import Poller

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["BatchStream", "Watch"]

log = logging.getLogger("apimart_async")
E = TypeVar("E", TaskUpdate, BatchEvent)


class _EventStream(Generic[E]):
    """Shared machinery: an unbounded channel from the poller, per-task deadlines."""

    def __init__(
        self, poller: Poller, clock: Clock, *, timeout: float | None, task_timeout: float | None
    ) -> None:
        self._poller = poller
        self._clock = clock
        self._task_timeout = task_timeout
        self._end = clock.now() + timeout if timeout is not None else math.inf
        self._ended = False
        # Unbounded: the poller must never wait for a slow consumer.
        self._send: MemoryObjectSendStream[E]
        self._receive: MemoryObjectReceiveStream[E]
        self._send, self._receive = anyio.create_memory_object_stream[E](math.inf)
        # Tasks still open here -> their deadline; the heap finds the earliest in
        # O(log n) (stale items, for tasks already ended, are skipped when met).
        self._deadlines: dict[str, float] = {}
        self._deadline_heap: list[tuple[float, str]] = []
        self._ready: deque[E] = deque()
        self._open_items = 0
        self._closed = False
        # The poller holds only this weak callback, so dropping the iterator (``break``
        # out of a plain ``async for``) lets it be collected and unsubscribe itself.
        ref = weakref.ref(self)

        def deliver(update: TaskUpdate) -> None:
            stream = ref()
            if stream is not None:
                stream._on_update(update)

        self._deliver = deliver

    # -- subclass hooks ------------------------------------------------------------------

    def _on_update(self, update: TaskUpdate) -> None:
        raise NotImplementedError

    def _timeout_event(self, task_id: str) -> E:
        """The final event of a task whose deadline passed."""
        raise NotImplementedError

    def _on_whole_deadline(self) -> None:
        """The whole stream's deadline passed (BatchStream stops sending)."""

    def _start(self) -> None:
        """Begin background work on first use (BatchStream submits)."""

    # -- plumbing -----------------------------------------------------------------------

    def _watch(self, task_id: str, *, started_at: float | None) -> None:
        now = self._clock.now()
        deadline = now + self._task_timeout if self._task_timeout is not None else math.inf
        # After the whole deadline, a late arrival times out at once.
        deadline = -math.inf if self._ended else min(deadline, self._end)
        self._deadlines[task_id] = deadline
        if deadline != math.inf:
            heapq.heappush(self._deadline_heap, (deadline, task_id))
        self._poller.subscribe(self._deliver, task_id, started_at=started_at)

    def _emit(self, event: E) -> None:
        if not self._closed:
            self._send.send_nowait(event)

    def _first_task_deadline(self) -> float:
        heap = self._deadline_heap
        while heap and self._deadlines.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # that task ended already
        return heap[0][0] if heap else math.inf

    def _earliest_deadline(self) -> float:
        return min(self._first_task_deadline(), self._end)

    def _forget(self, task_id: str) -> None:
        """The task has had its final event here: stop tracking and polling it."""
        del self._deadlines[task_id]
        self._poller.unsubscribe(self._deliver, [task_id])

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
            event_or_none: E | None = None
            try:
                with self._clock.move_on_at(deadline):
                    event_or_none = await self._receive.receive()
            except BaseException:
                # Cancelled, or the consumer's task is going away: stop polling now.
                self.close()
                raise
            if event_or_none is None:
                self._expire()
                continue
            if self._accept(event_or_none):
                self._count(event_or_none)
                return event_or_none

    def _accept(self, event: E) -> bool:
        """Whether to hand `event` on: nothing follows a task's final event."""
        task_id = event.task_id
        if task_id is None:
            return True  # an item that never became a task (BatchStream)
        if task_id not in self._deadlines:
            return False  # that task already ended here (it timed out)
        if event.final:
            self._forget(task_id)
        return True

    def _count(self, event: E) -> None:
        if event.final:
            self._open_items -= 1

    def close(self) -> None:
        """Stop at once: unsubscribe from the poller and close the channel (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._poller.unsubscribe(self._deliver)
        self._deadlines.clear()
        self._deadline_heap.clear()
        self._send.close()
        self._receive.close()

    async def aclose(self) -> None:
        """Same as `close`, for ``contextlib.aclosing`` and the like."""
        self.close()

    async def __aenter__(self) -> _EventStream[E]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # ``async for u in session.watch(...)`` then ``break``: the iterator is dropped at
        # once, and this stops its polling without an ``async with``.
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):  # a finaliser must not raise
                self.close()


class Watch(_EventStream[TaskUpdate]):
    """The updates of a fixed set of tasks, as `Session.watch` returns them.

    Iterating yields one `TaskUpdate` per change of status or progress, then exactly
    one final update per task, and stops when every task has had its final update.
    """

    def __init__(
        self,
        poller: Poller,
        clock: Clock,
        tasks: Sequence[tuple[str, float | None]],
        *,
        timeout: float | None,
        task_timeout: float | None,
    ) -> None:
        super().__init__(poller, clock, timeout=timeout, task_timeout=task_timeout)
        self._open_items = len(tasks)
        self._last: dict[str, TaskUpdate] = {}
        for task_id, started_at in tasks:
            self._watch(task_id, started_at=started_at)

    def _on_update(self, update: TaskUpdate) -> None:
        self._emit(update)

    def _accept(self, event: TaskUpdate) -> bool:
        if not super()._accept(event):
            return False
        self._last[event.task_id] = event
        return True

    def _timeout_event(self, task_id: str) -> TaskUpdate:
        last = self._last.get(task_id)
        return TaskUpdate(
            task_id=task_id,
            status=last.status if last else TaskStatus.UNKNOWN,
            progress=last.progress if last else 0,
            task=last.task if last else None,
            timed_out=True,
        )


class BatchStream(_EventStream[BatchEvent]):
    """Submit a list of requests and follow every one to its end, as one event stream.

    Yields `BatchEvent`s: SUBMITTED, PROGRESS, then one final event per item
    (COMPLETED, FAILED, SUBMIT_FAILED or TIMED_OUT). Submission starts on first
    iteration (or on ``async with``). Leaving early stops sending further items;
    a submission already on the wire is allowed to finish and its task id is logged.
    """

    def __init__(
        self,
        session: Session,
        requests: Sequence[VideoRequest],
        *,
        timeout: float | None,
        task_timeout: float | None,
        keys: Sequence[str] | None = None,
        before_submit: Callable[[int], Awaitable[None]] | None = None,
        after_submit: Callable[[int, SubmitOutcome | None], Awaitable[None]] | None = None,
        task_group: TaskGroup | None = None,
    ) -> None:
        super().__init__(session._get_poller(), session.clock, timeout=timeout,
                         task_timeout=task_timeout)
        self._session = session
        self._keys = keys
        self._before_submit = before_submit
        self._after_submit = after_submit
        # Where the submitter runs: the session's task group, unless the caller owns one
        # (run_batch does, so a failing hook reaches it rather than the session).
        self._task_group = task_group
        self._requests = list(requests)
        self._open_items = len(self._requests)
        self._gate = Gate()
        self._started = False
        self._sent_all = anyio.Event()
        # Items waiting for a request slot or rate token, by index: `_stop_sending`
        # cancels these waits; an item leaves this map at the gate, as it goes out.
        self._waiting: dict[int, anyio.CancelScope] = {}
        self._by_task: dict[str, tuple[int, Submission]] = {}

    async def __aenter__(self) -> BatchStream:
        self._start()
        return self

    def _start(self) -> None:
        if not self._started:
            self._started = True
            if self._task_group is not None:
                self._task_group.start_soon(self._submit_all)
            else:
                self._session._spawn(self._submit_all)

    async def _submit_all(self) -> None:
        try:
            await submit_each(
                self._requests, self._submit_one, self._submitted,
                workers=self._session.max_concurrency, gate=self._gate,
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
        try:
            with waiting:
                self._waiting[index] = waiting
                try:
                    submission = await self._session._submit(
                        request, key=key, gate=gate, before_send=at_the_gate,
                        on_safe_retry=back_in_line,
                    )
                finally:
                    self._waiting.pop(index, None)
            if submission is None:
                raise StreamClosed  # `_stop_sending` ended its wait: never sent
        except APIMartError as exc:
            if isinstance(exc, NotSubmittedError) and maybe_sent:
                # Stopped before a retry of an attempt that may have created it.
                exc.submission_ambiguous = True
            if self._after_submit is not None:
                await self._after_submit(index, exc)
            raise
        except StreamClosed:
            # Stopped before (re)sending. If an ambiguous attempt went before (retried
            # by policy), it stays as journaled: "submitting", i.e. it may exist.
            if self._after_submit is not None and not maybe_sent:
                await self._after_submit(index, None)
            raise
        # On a cancellation from outside nothing is recorded here: an item on the wire
        # stays as journaled ("submitting"), which is the truth.
        if self._after_submit is not None:
            await self._after_submit(index, submission)  # record the task id at once
        return submission

    async def _stop_sending(self) -> None:
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
        self._by_task[outcome.task_id] = (index, outcome)
        self._emit(BatchEvent(kind=EventKind.SUBMITTED, index=index, request=request,
                              submission=outcome))
        self._watch(outcome.task_id, started_at=self._session._started_at(outcome.task_id))

    def _on_update(self, update: TaskUpdate) -> None:
        found = self._by_task.get(update.task_id)
        if found is not None:
            index, submission = found
            self._emit(event_for_update(update, index, self._requests[index], submission))

    def _timeout_event(self, task_id: str) -> BatchEvent:
        index, submission = self._by_task[task_id]
        return BatchEvent(kind=EventKind.TIMED_OUT, index=index,
                          request=self._requests[index], submission=submission)

    def _on_whole_deadline(self) -> None:
        # Items not sent yet will not be; each still gets its TIMED_OUT event from the
        # submitting side, and one already on the wire gets it with its task id.
        self._gate.closed = True

    def close(self) -> None:
        self._gate.closed = True
        for scope in list(self._waiting.values()):
            scope.cancel()  # items still waiting for a slot are not sent
        super().close()
