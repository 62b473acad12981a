"""The poller's queue gives its items in exactly the order one heap of them would (#7's
schedule must not move), while a run of first polls costs a column slot, not a tuple."""

from __future__ import annotations

import heapq
import math
import random
import sys

import pytest

from apimart_async._engine.poller import _DueQueue


@pytest.mark.parametrize("seed", range(40))
def test_the_queue_gives_what_one_heap_gives(seed: int) -> None:
    _compare(random.Random(seed), 3000)


@pytest.mark.parametrize("seed", range(2))
def test_the_queue_gives_what_one_heap_gives_past_its_compaction(seed: int) -> None:
    _compare(random.Random(seed), 40_000)


def _compare(rng: random.Random, steps: int) -> None:
    queue, heap = _DueQueue(), []
    t = 0.0
    ids = [f"task_{i:03d}" for i in range(rng.choice([3, 20, 200]))]
    for _ in range(steps):
        op = rng.random()
        if op < 0.55:
            # Mostly rising dues (a watch placing first polls), with ties, steps back
            # and later generations (polls after the first, reschedules) mixed in.
            t += rng.choice([0.0, 0.0, 0.5, 1.0, -3.0]) if rng.random() < 0.9 else 0.0
            due = round(t + rng.choice([0.0, 0.0, 2.0, -1.0, 0.25]), 2)
            task_id = rng.choice(ids)
            generation = 1 if rng.random() < 0.7 else rng.randint(2, 5)
            heapq.heappush(heap, (due, task_id, generation))
            woke = queue.push(due, task_id, generation)
            assert woke == (heap[0][1] == task_id)
        elif heap:
            assert queue.pop() == heapq.heappop(heap)
        assert len(queue) == len(heap)
        assert queue.first_due() == (heap[0][0] if heap else math.inf)
        assert queue.first() == (heap[0] if heap else None)
    while heap:
        assert queue.pop() == heapq.heappop(heap)
    assert len(queue) == 0 and queue.first_due() == math.inf


def test_first_polls_in_submission_order_hold_no_tuple_each() -> None:
    # 100,000 tasks waiting for their first poll held a (due, id, generation) tuple and
    # a heap slot each (72 bytes): now a due and an id slot in two columns.
    queue = _DueQueue()
    n = 10_000
    for i in range(n):
        queue.push(float(i) / 10, f"task_{i:06d}", 1)
    assert not queue._hids and len(queue) == n
    held = sys.getsizeof(queue._dues) + sys.getsizeof(queue._ids)
    assert held / n <= 20
    for i in range(n):
        assert queue.pop() == (float(i) / 10, f"task_{i:06d}", 1)
    assert len(queue._ids) == 0  # taken out: the columns are given back


def test_polls_after_the_first_hold_no_tuple_each() -> None:
    # A running task's next poll (dues not in ascending order) held a (due, id,
    # generation) tuple, its due and a heap slot (~96 bytes): now three column slots.
    queue, heap = _DueQueue(), []
    rng = random.Random(7)
    n = 10_000
    for i in range(n):
        item = (rng.uniform(0, 1000), f"task_{i:06d}", 2 + i % 3)
        queue.push(*item)
        heapq.heappush(heap, item)
    held = sys.getsizeof(queue._hdues) + sys.getsizeof(queue._hids) + sys.getsizeof(
        queue._gens)
    assert held / n <= 24
    assert all(type(x) is not tuple for x in queue._hids)
    while heap:
        assert queue.pop() == heapq.heappop(heap)
    assert len(queue._hids) == 0 and sys.getsizeof(queue._hdues) < 100
