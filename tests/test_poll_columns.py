"""A running task's poll state kept in columns by slot (#14: 100,000 tasks running at
once): each task's slot gives back exactly the `PollState` the policy left, whatever
the other slots do, and a slot is handed out again only once freed (pure)."""

from __future__ import annotations

import random
import sys

import attrs
import pytest

from apimart_async import PollPolicy, Task, TaskStatus
from apimart_async._core.polling import (
    PollColumns,
    PollState,
    missed,
    next_delay,
    observe,
)

POLICY = PollPolicy()


def _answer(rng: random.Random, progress: int) -> Task:
    status = rng.choice([TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.PROCESSING,
                         TaskStatus.PROCESSING, TaskStatus.COMPLETED])
    estimate = rng.choice([None, 30, 61.5])
    return Task(id="t", status=status, progress=progress, estimated_time=estimate)


@pytest.mark.parametrize("seed", range(8))
def test_each_slot_gives_back_its_own_tasks_state(seed: int) -> None:
    # Many tasks at once, in random order: answers, failed polls, tasks ending (their
    # slot freed) and new ones (a freed slot taken again). After every step each live
    # slot loads exactly the state a `PollState` of its own would hold (every field),
    # and the policy places the next poll at the same time from either. Two tasks'
    # states swapped, a field read into another, or a live slot handed out again: red.
    rng = random.Random(seed)
    columns, scratch = PollColumns(), PollState(started_at=-1.0)
    live: dict[int, PollState] = {}
    progress: dict[int, int] = {}
    now = 0.0
    for step in range(700):
        now += rng.choice([0.25, 1.0, 7.5])  # polls of a task are apart in time
        op = rng.random()
        if op < 0.15 or not live:
            started = now - rng.choice([0.0, 3.0, 40.0])
            slot = columns.new()
            assert slot not in live, "a live slot handed out again"
            live[slot], progress[slot] = PollState(started_at=started), 0
        elif op < 0.25:
            slot = rng.choice(list(live))
            columns.free(slot)
            del live[slot], progress[slot]
        else:
            slot = rng.choice(list(live))
            reference = live[slot]
            state = columns.load(slot, scratch, reference.started_at)
            if op < 0.35:
                assert missed(POLICY, state, now - 0.1, now) == missed(
                    POLICY, reference, now - 0.1, now)
            else:
                progress[slot] = min(100, progress[slot] + rng.choice([0, 0, 1, 5, 10, 30]))
                answer = _answer(rng, progress[slot])
                observe(state, now, answer)
                observe(reference, now, answer)
            columns.save(slot, state)
        assert len(columns) == len(live)
        for slot, reference in live.items():
            loaded = columns.load(slot, scratch, reference.started_at)
            assert attrs.asdict(loaded) == attrs.asdict(reference), (step, slot)
            assert next_delay(POLICY, loaded, now) == next_delay(POLICY, reference, now)


def test_a_reading_keeps_its_time_and_int_exactly() -> None:
    # A time kept as a C double is the float it was; progress comes back an int.
    columns = PollColumns()
    slot = columns.new()
    state = PollState(started_at=0.1)
    observe(state, 0.1 + 0.2, Task(id="t", status=TaskStatus.PROCESSING, progress=7,
                                   estimated_time=12.3))
    columns.save(slot, state)
    loaded = columns.load(slot, PollState(started_at=0.0), 0.1)
    assert loaded.first == (0.1 + 0.2, 7) and type(loaded.first[1]) is int
    assert loaded.started_at == 0.1 and loaded.estimated_time == 12.3
    assert loaded.zero_at is None and loaded.previous is None and loaded.failing_since is None


def test_a_freed_slot_comes_back_fresh_and_the_others_keep_theirs() -> None:
    columns = PollColumns()
    a, b = columns.new(), columns.new()
    state = columns.load(a, PollState(started_at=0.0), 1.0)
    observe(state, 5.0, Task(id="t", status=TaskStatus.PROCESSING, progress=40))
    columns.save(a, state)
    state = columns.load(b, PollState(started_at=0.0), 2.0)
    observe(state, 6.0, Task(id="t", status=TaskStatus.PROCESSING, progress=60))
    columns.save(b, state)
    columns.free(a)
    c = columns.new()
    assert c == a  # reused once freed...
    assert attrs.asdict(columns.load(c, PollState(started_at=0.0), 3.0)) == attrs.asdict(
        PollState(started_at=3.0))  # ...with nothing of the task before
    assert columns.load(b, PollState(started_at=0.0), 2.0).last == (6.0, 60)
    columns.free(b)
    columns.free(c)
    assert len(columns) == 0 and not columns._floats and not columns._ints  # given back


def test_a_slot_costs_its_columns_not_objects() -> None:
    # 9 doubles, 9 four-byte ints and 2 bytes a task: ~112 bytes, against a 208-byte
    # object with boxed floats and reading tuples (~600 bytes with them). The submission
    # time is not among them (120 bytes with it): the poller's table has it already.
    columns = PollColumns()
    n = 10_000
    for i in range(n):
        slot = columns.new()
        state = columns.load(slot, PollState(started_at=0.0), float(i))
        observe(state, i + 5.0, Task(id="t", status=TaskStatus.PROCESSING, progress=30,
                                     estimated_time=60))
        columns.save(slot, state)
    held = sum(sys.getsizeof(a) for a in (columns._floats, columns._ints, columns._small))
    assert held / n <= 116
