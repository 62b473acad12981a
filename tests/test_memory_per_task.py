"""What each submitted or watched task holds (#14: 100,000 tasks under 100 MB).

Sizes are `sys.getsizeof` (object plus its GC header) on the CPython the suite runs on;
each bound is the size after the saving, so undoing it fails the test.
"""

from __future__ import annotations

import gc
import pickle
import sys
import weakref

import anyio
import anyio.lowlevel
import pytest

from apimart_async import Submission, VideoRequest
from apimart_async._core.models import Task, TaskStatus
from apimart_async._core.polling import PollPolicy, PollState, observe
from apimart_async._core.wire import TaskGet, build_get_task
from apimart_async._engine import poller as poller_module
from apimart_async._engine.entries import Entries
from apimart_async._engine.poller import Poller
from apimart_async.testing import SteppedClock

REQ = VideoRequest("a fox")


@pytest.mark.parametrize("key", [
    "", "k1", "0x" + "a" * 30, "A" * 32, "_" + "a" * 31, " " + "a" * 31, "a" * 33, "g" * 32,
])
def test_any_idempotency_key_is_kept_as_given(key: str) -> None:
    # A key the caller chose (or an old journal's) is never rewritten.
    sub = Submission(task_id="t", request=REQ, idempotency_key=key)
    assert sub.idempotency_key == key and f"idempotency_key={key!r}" in repr(sub)
    assert pickle.loads(pickle.dumps(sub)).idempotency_key == key


def test_per_task_objects_carry_no_weak_reference_slot() -> None:
    # One 8-byte slot less is 16 bytes less for each of these (allocations come in
    # steps of 16): a running task's poll state and its GET. (`VideoRequest` is the
    # caller's and public: it keeps its weak-reference slot.)
    weakref.ref(VideoRequest("x"))
    assert sys.getsizeof(PollState(started_at=0.0)) <= 176
    assert sys.getsizeof(build_get_task("task_1")) <= 80


def test_a_progress_reading_keeps_the_int_it_read() -> None:
    # Up to three readings are kept per running task; a float made of each progress
    # value was 32 bytes more each (the small int is shared, and the arithmetic on it is
    # the same: the schedule replay gives identical polls).
    state = PollState(started_at=0.0)
    observe(state, 4.0, Task(id="t", status=TaskStatus.PROCESSING, progress=20))
    observe(state, 8.0, Task(id="t", status=TaskStatus.PROCESSING, progress=40))
    assert state.first == (4.0, 20) and state.last == (8.0, 40)
    assert type(state.first[1]) is int and type(state.last[1]) is int


def _by_arrival(table: Entries) -> list[str | None]:
    return [table.ids[row] for row in sorted(table.rows(), key=table.age, reverse=True)]


def _row_bytes(table: Entries) -> int:
    return sum(sys.getsizeof(column) for column in (
        table.ids, table.models, table.subscribers, table.gens, table.arrivals, table.started,
        table.due, table.poll, table._index))


def test_a_task_waiting_for_its_first_poll_holds_a_row_of_columns() -> None:
    # 100,000 tasks waiting for their first poll: a row each in the poller's table (its
    # id's reference, model, subscribers, generation, arrival, submission time, due
    # time and poll slot) and its place in the id index: no object, no dict entry, no
    # int. What a poll leaves comes with the first poll, in the poll-state columns.
    table = Entries()
    n = 20_000
    ids = [f"task_{i}" for i in range(n)]
    for i, task_id in enumerate(ids):
        assert table.add(task_id, float(i), "sora-2") == i
    # ~56 bytes a row and the index (at most half full: 4-13 bytes a row); was an
    # object (96 bytes), its dict entry (~40) and a submission time (32).
    assert _row_bytes(table) / n <= 72
    assert all(table.poll[row] == -1 for row in table.rows())
    get = TaskGet("task_1")
    assert get.request is get and sys.getsizeof(get) <= 88  # get_task's, were 48 + 80


def test_the_table_finds_every_task_through_adds_and_removes() -> None:
    # The id index (open addressing, linear probing, no tombstones) against a dict,
    # through growth, removals that shift later rows back, reused rows and emptying.
    import random

    rng = random.Random(7)
    table = Entries()
    model: dict[str, int] = {}
    arrivals: dict[str, int] = {}
    for step in range(30_000):
        task_id = f"t{rng.randrange(3_000)}"
        row = table.find(task_id)
        assert row == model.get(task_id, -1)
        if row < 0:
            row = model[task_id] = table.add(task_id, float(step))
            assert table.ids[row] == task_id and table.started[row] == float(step)
            # A reused row comes with the defaults, whatever its last task left.
            assert (table.subscribers[row], table.gens[row], table.due[row],
                    table.poll[row]) == ((), 0, 0.0, -1)
            table.subscribers[row], table.gens[row] = (print,), 5
            table.due[row], table.poll[row] = 9.0, 3
            arrivals[task_id] = table.arrivals[row]
            assert table.insert(task_id, 0.0, "m") == -1 and table.started[row] == float(step)
        elif rng.random() < 0.6:
            assert table.alive(row, arrivals[task_id])
            table.remove(row)
            del model[task_id]
            assert not table.alive(row, arrivals.pop(task_id))
        assert len(table) == len(model)
        if step % 10_000 == 9_999:
            for gone in list(model):
                table.remove(model.pop(gone))
            assert len(table) == 0 and len(table.ids) == 0 and len(table._index) == 8
    assert sorted(table.ids[row] or "" for row in table.rows()) == sorted(model)


def test_freed_rows_and_poll_slots_wait_as_c_ints() -> None:
    # 100,000 tasks ending one by one: their rows and poll slots wait for reuse as C
    # ints (4 bytes each). Lists of int objects grew ~40 bytes a task each while tasks
    # ended (+8 MB at 100,000: the peak of `bench_watch_scale.py --case worst`).
    import tracemalloc

    from apimart_async._core.polling import PollColumns

    n = 20_000
    table, columns = Entries(), PollColumns()
    rows = [table.add(f"t{i}", 0.0) for i in range(n)]
    slots = [columns.new() for _ in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for row, slot in zip(rows[1:], slots[1:], strict=True):
            table.remove(row)
            columns.free(slot)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / n <= 12  # two lists of existing ints would be 16


def test_a_row_given_to_another_task_is_not_the_old_one() -> None:
    # A worker polling a task holds its row and arrival number: the task dropped and
    # its row handed out again (to another task, or the same id added again, even
    # after the table emptied) must not read as the task it polled.
    table = Entries()
    row = table.add("a", 0.0)
    arrival = table.arrivals[row]
    table.remove(row)  # emptied: reset
    again = table.add("a", 1.0)
    assert again == row and not table.alive(row, arrival)
    other = table.add("b", 2.0)
    table.remove(again)
    assert table.add("c", 3.0) == row and not table.alive(row, arrival)
    assert table.alive(other, table.arrivals[other])


@pytest.mark.anyio
async def test_a_running_task_keeps_its_poll_state_in_its_own_slot_and_no_answer() -> None:
    # A running task's poll state is in the poller's columns at the entry's slot, with
    # its last answer's status and progress: not a `PollState` object, nor the `Task`
    # (it went to the subscribers), nor a GET request. Each task's slot holds its own
    # readings: tasks answering different progress never see each other's.
    clock = SteppedClock()
    answers: list[weakref.ref[Task]] = []
    n = 300

    async def fetch(get: TaskGet) -> Task:
        i = int(get.task_id.split("_")[1])
        task = Task(id=get.task_id, status=TaskStatus.PROCESSING, progress=1 + i % 97,
                    estimated_time=60.0 + i)
        answers.append(weakref.ref(task))
        return task

    seen: list[tuple[str, int]] = []
    poller = Poller(fetch=fetch, policy=PollPolicy(), clock=clock, workers=4)
    async with anyio.create_task_group() as tg:
        poller.bind(tg)
        clock.advance(10.0)
        for i in range(n):
            poller.subscribe(lambda u: seen.append((u.task_id, u.progress)), f"task_{i}",
                             started_at=float(i) / 100)
        clock.advance(5.0)
        for _ in range(10_000):
            if len(answers) == n:
                break
            await anyio.lowlevel.checkpoint()
        assert len(answers) == n and len(seen) == n
        await anyio.lowlevel.checkpoint()
        gc.collect()
        assert not [ref for ref in answers if ref() is not None]  # no `Task` kept
        running, table = poller._running, poller._table
        slots = {table.poll[table.find(f"task_{i}")] for i in range(n)}
        assert len(slots) == n == len(running)  # one slot each
        for i in range(n):
            slot = table.poll[table.find(f"task_{i}")]
            state = running.load(slot, PollState(started_at=0.0),
                                 table.started[table.find(f"task_{i}")])
            assert state.started_at == float(i) / 100 and state.polls == 1
            assert state.last is not None and state.last[1] == 1 + i % 97
            assert state.estimated_time == 60.0 + i
            assert running.seen_progress[slot] == 1 + i % 97
            assert running.seen_status[slot] == list(TaskStatus).index(
                TaskStatus.PROCESSING)
        # A subscriber joining late is told the status and progress last read.
        late: list[object] = []
        poller.subscribe(late.append, "task_5", started_at=None)
        assert [(u.status, u.progress, u.task) for u in late] == [  # type: ignore[attr-defined]
            (TaskStatus.PROCESSING, 6, None)]
        # Its next poll's due too: a C double in the table's column (the queue's item
        # holds the same), not a 32-byte float on an object.
        queue = poller._queue
        items = [queue.pop() for _ in range(len(queue))]
        assert len(items) == n
        for due, task_id, generation in items:
            row = table.find(task_id)
            assert generation == table.gens[row]
            assert table.due[row] == due == poller._due_of(row)
        # The columns, not objects, hold it: a few doubles and ints a task (the poll
        # state's; its row in the table is ~60 bytes more).
        held = sum(sys.getsizeof(a) for a in (
            running._floats, running._ints, running._small,
            running.polled_at, running.seen_status, running.seen_progress))
        assert held / n <= 170
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_submitted_tasks_wait_in_the_poller_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hand-over from submitting to watching is the poller's entry (submission time
    # and model), not two tables beside it; tasks submitted and never watched are
    # forgotten oldest first past the bound, watched ones never.
    monkeypatch.setattr(poller_module, "_EXPECTED", 3)
    clock = SteppedClock()

    async def fetch(get: object) -> object:
        await anyio.sleep_forever()

    poller = Poller(fetch=fetch, policy=PollPolicy(), clock=clock, workers=2)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        poller.bind(tg)
        clock.advance(5.0)
        poller.expect("t0", "m", 1.0)
        poller.subscribe(lambda update: None, "t0", started_at=None)
        table = poller._table
        row = table.find("t0")
        # Its first poll waits from the submission (1.0), with the model known.
        assert table.started[row] == 1.0 and table.models[row] == "m"
        assert table.due[row] == 1.0 + PollPolicy().first_delay
        for i in range(1, 5):
            poller.expect(f"t{i}", "m", 5.0)
        assert _by_arrival(table) == ["t0", "t2", "t3", "t4"]  # t1 forgotten, t0 kept
        assert poller.watched == 1
        assert len(poller._queue) == 1  # nothing scheduled for unwatched tasks
        tg.cancel_scope.cancel()
    # Past a bound of 128, the oldest go 2 (128 // 64) beyond it at a time: one scan
    # past any watched entries per three submissions, not per submission.
    monkeypatch.setattr(poller_module, "_EXPECTED", 128)
    poller = Poller(fetch=fetch, policy=PollPolicy(), clock=clock, workers=2)  # type: ignore[arg-type]
    for i in range(129):
        poller.expect(f"u{i}", "m", 0.0)
    assert len(poller._table) == poller._unwatched == 126
    assert _by_arrival(poller._table)[0] == "u3"
    for i in range(129, 132):
        poller.expect(f"u{i}", "m", 0.0)  # into the rows u0-u2 left
        assert len(poller._table) == (126 if i == 131 else i - 2)
    assert _by_arrival(poller._table)[:2] == ["u6", "u7"]
    assert _by_arrival(poller._table)[-3:] == ["u129", "u130", "u131"]


def test_an_sdk_made_key_is_held_as_its_number_and_shows_as_its_string() -> None:
    # A caller holding 100,000 Submissions: each SDK-made key (32 lowercase hex digits)
    # is kept as its 128-bit number (48 bytes, was an 81-byte string), and every way a
    # Submission shows (attribute, repr, attrs.asdict, the converter, ==, hash, pickle)
    # sees the string, as before: no other field, no int anywhere outside.
    import attrs

    from apimart_async._core.wire import converter

    key = "00" + "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5"
    sub = Submission(task_id="t", request=REQ, idempotency_key=key)
    stored = vars(Submission)["idempotency_key"].__get__(sub, Submission)
    assert stored == key and type(stored) is str  # what every reader gets
    raw = Submission.idempotency_key.__get__(sub, Submission)  # the slot itself
    assert type(raw) is int and sys.getsizeof(raw) <= 48
    body = {"task_id": "t", "request": attrs.asdict(REQ), "idempotency_key": key}
    assert attrs.asdict(sub) == body and type(attrs.asdict(sub)["idempotency_key"]) is str
    assert converter.unstructure(sub)["idempotency_key"] == key
    assert [f.name for f in attrs.fields(Submission)] == ["task_id", "request",
                                                         "idempotency_key"]
    assert repr(sub).endswith(f"idempotency_key={key!r})")
    again = pickle.loads(pickle.dumps(sub))
    assert again == sub and hash(again) == hash(sub) and again.idempotency_key == key
    assert attrs.evolve(sub, task_id="u").idempotency_key == key
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        sub.idempotency_key = "other"  # type: ignore[misc]


def test_a_submission_built_by_its_slots_is_the_constructors() -> None:
    # Every submission with an SDK-made key is built by `sdk_submission` (its slots
    # filled directly, the key stored as its number at once): it must be the object the
    # constructor makes from the key's hex, by every measure.
    import os

    import attrs

    from apimart_async._core.models import sdk_submission

    for raw in (os.urandom(16), bytes(16), b"\xff" * 16, b"\x00\x01" + bytes(14)):
        made = sdk_submission("task_1", REQ, raw)
        built = Submission(task_id="task_1", request=REQ, idempotency_key=raw.hex())
        assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
        assert made.idempotency_key == raw.hex()
        assert attrs.asdict(made) == attrs.asdict(built)
        slot = Submission.idempotency_key.__get__(made, Submission)
        assert type(slot) is int  # held as its number, as the constructor holds it
        assert pickle.loads(pickle.dumps(made)) == built
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            made.task_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("key", [None, b"abc", 1.5, 5, 0, "x", "A" * 32])
def test_a_key_that_is_not_an_sdk_made_one_reads_back_as_given(key: object) -> None:
    # Not a string is a caller's mistake the type hint does not stop; it must still read
    # back as given (an int is not shown as an SDK key's hex; None does not break repr,
    # ==, pickle).
    import copy

    import attrs

    sub = Submission(task_id="t", request=REQ, idempotency_key=key)  # type: ignore[arg-type]
    assert sub.idempotency_key == key and type(sub.idempotency_key) is type(key)
    assert repr(sub).endswith(f"idempotency_key={key!r})")
    assert pickle.loads(pickle.dumps(sub)) == sub and copy.deepcopy(sub) == sub
    assert attrs.asdict(sub)["idempotency_key"] == key and hash(sub) == hash(copy.copy(sub))


@pytest.mark.anyio
async def test_a_watch_ended_by_an_error_reports_the_last_status_and_progress_read() -> None:
    # The poller keeps no `Task` between polls: the error's final update says the
    # status and progress last read (from the columns), the `Task` itself having gone
    # to the subscribers with the update that read it.
    from apimart_async._core.errors import NotFoundError

    clock = SteppedClock()
    calls = 0

    async def fetch(get: TaskGet) -> Task:
        nonlocal calls
        calls += 1
        if calls == 1:
            return Task(id=get.task_id, status=TaskStatus.PROCESSING, progress=40)
        raise NotFoundError("gone", status=404)

    updates: list[object] = []
    poller = Poller(fetch=fetch, policy=PollPolicy(), clock=clock, workers=1)
    async with anyio.create_task_group() as tg:
        poller.bind(tg)
        poller.subscribe(updates.append, "task_1", started_at=None)
        for _ in range(200):
            if len(updates) == 2:
                break
            clock.advance(1.0)
            await anyio.lowlevel.checkpoint()
        first, last = updates
        assert (first.progress, first.task is not None) == (40, True)  # type: ignore[attr-defined]
        assert (last.status, last.progress, last.task) == (  # type: ignore[attr-defined]
            TaskStatus.PROCESSING, 40, None)
        assert isinstance(last.error, NotFoundError)  # type: ignore[attr-defined]
        assert not len(poller._table) and len(poller._running) == 0
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_an_update_goes_out_for_each_change_read_from_the_columns() -> None:
    # Change detection compares the answer with the status and progress kept in the
    # columns (no last `Task`): a repeat is not an update, a new progress or status is.
    clock = SteppedClock()
    script = [(TaskStatus.PENDING, 0), (TaskStatus.PROCESSING, 0), (TaskStatus.PROCESSING, 10),
              (TaskStatus.PROCESSING, 10), (TaskStatus.PROCESSING, 20),
              (TaskStatus.PROCESSING, 20), (TaskStatus.COMPLETED, 100)]

    async def fetch(get: TaskGet) -> Task:
        status, progress = script.pop(0)
        return Task(id=get.task_id, status=status, progress=progress)

    updates: list[tuple[TaskStatus, int]] = []
    poller = Poller(fetch=fetch, policy=PollPolicy(), clock=clock, workers=1)
    async with anyio.create_task_group() as tg:
        poller.bind(tg)
        poller.subscribe(lambda u: updates.append((u.status, u.progress)), "task_1",
                         started_at=None)
        for _ in range(2000):
            if script == [] and poller.watched == 0:
                break
            clock.advance(0.5)
            await anyio.lowlevel.checkpoint()
        assert updates == [(TaskStatus.PENDING, 0), (TaskStatus.PROCESSING, 0),
                           (TaskStatus.PROCESSING, 10), (TaskStatus.PROCESSING, 20),
                           (TaskStatus.COMPLETED, 100)]
        tg.cancel_scope.cancel()
