"""The poller's schedule, replayed deterministically: every poll's (task, time) and
every update, for one tree of the SDK, on a `SteppedClock` with a scripted fetch (no
sockets, no load: the same tree always prints the same lines).

60 tasks: some end, some fail, one answers an unknown status for a while, some meet
503s mid-run, some are 404s, some were not submitted by the session (polled at once),
some have a `progress_every` subscriber, and a second subscriber with a tighter
resolution joins ten of them at t=50 and leaves at t=90. Used to show that a change
to how the poller stores its tasks moves no poll (#14 item 3):

    PYTHONPATH=/path/to/tree-a python benchmarks/poll_schedule_replay.py > a.txt
    PYTHONPATH=/path/to/tree-b python benchmarks/poll_schedule_replay.py > b.txt
    diff a.txt b.txt  # nothing
"""

from __future__ import annotations

import inspect
import random
from typing import Any

import anyio
import anyio.lowlevel

from apimart_async._core.errors import NotFoundError, ServerError
from apimart_async._core.models import Task, TaskStatus
from apimart_async._core.polling import PollPolicy
from apimart_async._engine.poller import Poller
from apimart_async.testing import SteppedClock

rng = random.Random(7)
clock = SteppedClock()
N = 60
plans: dict[str, tuple[str, float, float, str | None]] = {}
for i in range(N):
    kind = ["ok", "ok", "ok", "fail", "flaky", "unknown", "404", "slow"][i % 8]
    d = rng.uniform(5, 80) if kind != "slow" else rng.uniform(200, 400)
    plans[f"task_{i:03d}"] = (kind, rng.uniform(0, 20), d, rng.choice(["m1", "m2", None]))
log: list[tuple[Any, ...]] = []

async def fetch(get: Any) -> Task:
    tid, t = get.task_id, clock.now()
    log.append(("poll", tid, round(t, 6)))
    await anyio.lowlevel.checkpoint()
    kind, start, d, model = plans[tid]
    age = t - start
    if kind == "404":
        raise NotFoundError("nope", status=404)
    if kind == "flaky" and 10 < age < 40:
        raise ServerError("down", status=503)
    if kind == "unknown" and age < 30:
        return Task(id=tid, status=TaskStatus.UNKNOWN, raw_status="warming", model=model)
    if age >= d:
        st = TaskStatus.FAILED if kind == "fail" else TaskStatus.COMPLETED
        return Task(id=tid, status=st, raw_status=st.value, progress=100, model=model)
    if age < 3:
        return Task(id=tid, status=TaskStatus.PENDING, raw_status="pending", model=model,
                    estimated_time=d)
    return Task(id=tid, status=TaskStatus.PROCESSING, raw_status="processing",
                progress=int(100 * age / d), model=model, estimated_time=d)

async def main() -> None:
    p = Poller(fetch=fetch, policy=PollPolicy(), clock=clock, workers=4)
    new = len(inspect.signature(p.expect).parameters) == 3
    finals: set[tuple[str, str]] = set()
    def make(name: str) -> Any:
        def sub(u: Any) -> None:
            error = type(u.error).__name__ if u.error else ""
            log.append((name, u.task_id, u.status.value, u.progress, error,
                        round(clock.now(), 6)))
            if u.final:
                finals.add((name, u.task_id))
        return sub
    a, b = make("a"), make("b")
    async with anyio.create_task_group() as tg:
        p.bind(tg)
        ids = sorted(plans, key=lambda k: plans[k][1])
        pending = list(ids)
        watched_b: set[str] = set()
        while len(finals) < N + len(watched_b) and clock.now() < 3000:
            now = clock.now()
            while pending and plans[pending[0]][1] <= now:
                tid = pending.pop(0)
                model = plans[tid][3] or "m0"
                every = 8.0 if int(tid[-3:]) % 7 == 0 else None
                if int(tid[-3:]) % 5 == 4:  # not submitted by this session: polled at once
                    p.subscribe(a, tid, started_at=None)
                elif new:  # the submission time goes with the task (this tree)
                    p.expect(tid, model, now)
                    p.subscribe(a, tid, started_at=None, every=every)
                else:  # trees before it: the watch passed it on
                    p.expect(tid, model)  # type: ignore[call-arg]
                    p.subscribe(a, tid, started_at=now, every=every)
            if 50 <= now < 50.05:
                for tid in ids[10:20]:
                    if ("a", tid) not in finals and tid not in watched_b:
                        watched_b.add(tid)
                        p.subscribe(b, tid, started_at=None, every=3.0)
            if 90 <= now < 90.05:
                p.unsubscribe(b, sorted(watched_b))
                for tid in list(watched_b):
                    if ("b", tid) not in finals:
                        finals.add(("b", tid))
            clock.advance(0.05)
            for _ in range(6):
                await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    for row in log:
        print(*row)
    print("finals", len(finals), "time", round(clock.now(), 2), "left watched", p.watched)


if __name__ == "__main__":
    anyio.run(main)
