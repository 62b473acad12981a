"""What each task holds, by stage (tracemalloc, no HTTP): N `Submission`s built as the
SDK builds them (the caller's share), their entries in the poller once submitted,
watched (waiting for the first poll), and running (each polled once, answering
processing). Issue #14 item 3: compare two trees in fresh processes,

    PYTHONPATH=/path/to/tree python benchmarks/mem_per_task.py [N]
    PYTHONPATH=/path/to/tree python benchmarks/mem_per_task.py --rss [N]

Bytes are tracemalloc's (what was asked for; pymalloc rounds each object up to 16).
``--rss`` reads the peak RSS instead (no tracemalloc; default N 100,000): the caller
holding its N Submissions while every task is polled four times, still running (the
worst case of `bench_watch_scale.py --case worst`, without HTTP).
"""

from __future__ import annotations

import gc
import hashlib
import os
import resource
import sys
import tracemalloc

import anyio
import anyio.lowlevel

from apimart_async import VideoRequest
from apimart_async._core.models import Task, TaskStatus, sdk_submission
from apimart_async._core.polling import PollPolicy
from apimart_async._engine.poller import Poller
from apimart_async.testing import SteppedClock


def _held() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def main(n: int) -> None:
    clock = SteppedClock()
    polls = 0

    async def fetch(get: object) -> Task:
        nonlocal polls
        polls += 1
        return Task(id=get.task_id, status=TaskStatus.PROCESSING,  # type: ignore[attr-defined]
                    progress=5, estimated_time=150.0)

    # Ids as the emulator makes them (31 characters).
    ids = ["task_" + hashlib.sha256(f"1:{i}".encode()).hexdigest()[:26] for i in range(n)]
    tracemalloc.start()
    m0 = _held()
    subs = [sdk_submission(ids[i], VideoRequest(f"clip {i}"), os.urandom(16)) for i in range(n)]
    del ids  # the Submissions hold them now
    m1 = _held()
    poller = Poller(fetch=fetch, policy=PollPolicy(), clock=clock, workers=64)
    async with anyio.create_task_group() as tg:
        poller.bind(tg)
        clock.advance(10.0)
        for i, sub in enumerate(subs):
            poller.expect(sub.task_id, "sora-2", 10.0 + i * 1e-4)
        m2 = _held()
        def watch(update: object) -> None:  # one subscriber for all, as a watch has
            pass

        for sub in subs:
            poller.subscribe(watch, sub.task_id, started_at=None)
        m3 = _held()
        clock.advance(60.0)
        while polls < n:
            await anyio.lowlevel.checkpoint()
        for _ in range(200):
            await anyio.lowlevel.checkpoint()
        m4 = _held()
        tg.cancel_scope.cancel()
    print(f"{n} tasks, bytes a task: the caller's Submissions (ids excluded) {(m1 - m0) / n:.0f}; "
          f"the poller: submitted {(m2 - m1) / n:.0f}, watched {(m3 - m1) / n:.0f}, "
          f"running {(m4 - m1) / n:.0f}")


async def peak_rss(n: int) -> None:
    clock = SteppedClock()
    polls = 0

    async def fetch(get: object) -> Task:
        nonlocal polls
        polls += 1
        await anyio.lowlevel.checkpoint()
        return Task(id=get.task_id, status=TaskStatus.PROCESSING,  # type: ignore[attr-defined]
                    raw_status="processing", progress=min(99, int(clock.now())),
                    estimated_time=150.0)

    def rss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    base = rss()
    subs = [sdk_submission("task_" + hashlib.sha256(f"1:{i}".encode()).hexdigest()[:26],
                           VideoRequest(f"clip {i}"), os.urandom(16)) for i in range(n)]
    poller = Poller(fetch=fetch, policy=PollPolicy(), clock=clock, workers=64)
    async with anyio.create_task_group() as tg:
        poller.bind(tg)
        for i, sub in enumerate(subs):
            poller.expect(sub.task_id, "sora-2", i * 4e-4)

        def watch(update: object) -> None:
            pass

        for task_id in sorted(sub.task_id for sub in subs):  # as `Session.watch` does
            poller.subscribe(watch, task_id, started_at=None)
        queue = poller._queue
        while polls < 4 * n:
            for _ in range(4):
                await anyio.lowlevel.checkpoint()
            due = queue.first_due()
            if clock.now() < due < float("inf"):
                clock.advance(due - clock.now())
        tg.cancel_scope.cancel()
    print(f"{n} tasks, each polled 4 times while running, the caller holding its "
          f"Submissions: peak RSS {rss():.1f} MB ({base:.1f} before)")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--rss"]:
        anyio.run(peak_rss, int(args[1]) if len(args) > 1 else 100_000)
    else:
        anyio.run(main, int(args[0]) if args else 20000)
