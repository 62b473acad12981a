"""The poller's own CPU per poll, no HTTP: `Poller` with an in-process fetch on a
`SteppedClock`, N tasks of 20-40 s (seeded), each answering pending, then processing
with its progress, then completed. Every tree makes the same polls (the schedule is
the policy's, which the clock makes deterministic), so two trees compare per poll:

    PYTHONPATH=/path/to/tree-a python benchmarks/bench_poller_alone.py --tasks 20000
    PYTHONPATH=/path/to/tree-b python benchmarks/bench_poller_alone.py --tasks 20000

Run them alternately, each a fresh process (issue #14: what a change to how the poller
stores its tasks costs a poll).
"""

from __future__ import annotations

import argparse
import random
import time

import anyio
import anyio.lowlevel

from apimart_async._core.models import Task, TaskStatus
from apimart_async._core.polling import PollPolicy
from apimart_async._engine.poller import Poller
from apimart_async.testing import SteppedClock


async def main(n: int) -> None:
    rng = random.Random(1)
    clock = SteppedClock()
    plans = {f"task_{i:026d}": (i * 1e-3, rng.uniform(20, 40)) for i in range(n)}
    polls = finals = 0

    async def fetch(get: object) -> Task:
        nonlocal polls
        polls += 1
        tid = get.task_id  # type: ignore[attr-defined]
        start, duration = plans[tid]
        age = clock.now() - start
        if age >= duration:
            return Task(id=tid, status=TaskStatus.COMPLETED, raw_status="completed",
                        progress=100)
        if age < 3:
            return Task(id=tid, status=TaskStatus.PENDING, raw_status="pending",
                        estimated_time=duration)
        return Task(id=tid, status=TaskStatus.PROCESSING, raw_status="processing",
                    progress=int(100 * age / duration), estimated_time=duration)

    def sink(update: object) -> None:
        nonlocal finals
        finals += update.final  # type: ignore[attr-defined]

    poller = Poller(fetch=fetch, policy=PollPolicy(), clock=clock, workers=64)
    async with anyio.create_task_group() as tg:
        poller.bind(tg)
        for tid, (start, _) in plans.items():
            poller.expect(tid, "m", start)
        cpu0 = time.process_time()
        for tid in plans:
            poller.subscribe(sink, tid, started_at=None)
        queue = poller._queue
        while finals < n:
            # Due polls go out and their answers are handled within a few loop turns
            # (the fetch does not wait); then time moves to the next due poll.
            for _ in range(4):
                await anyio.lowlevel.checkpoint()
            due = queue.first_due()
            if clock.now() < due < float("inf"):
                clock.advance(due - clock.now())
        cpu = time.process_time() - cpu0
        tg.cancel_scope.cancel()
    print(f"{n} tasks, {polls} polls ({polls / n:.2f} a task): "
          f"{cpu / polls * 1e6:.1f} us of CPU a poll, {cpu:.2f} s in all")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=20000)
    anyio.run(main, p.parse_args().tasks)
