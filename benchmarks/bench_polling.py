"""Benchmark (a): polls per task and completion-detection lag, SDK vs fixed-interval loops.

All three strategies run in the same run, against one emulator in its own process,
each on its own tasks (4 to 8 s long, `estimated_time` off by up to 30 %, 20 ms per
request). Lag is the emulator's own record: from the moment a task ended to the first
poll that saw it ended.

    python benchmarks/bench_polling.py [--tasks 100]
"""

from __future__ import annotations

import argparse
import statistics

import anyio
from _common import emulator_process, emulator_stats, machine, percentile, table

from apimart_async import Session, Submission, VideoRequest


async def naive_loop(session: Session, sub: Submission, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        if (await session.get_task(sub)).is_terminal:
            return


async def main(n: int) -> None:
    flags = ["--task-duration", "4:8", "--estimate-error", "0.3", "--latency", "0.02"]
    async with emulator_process(*flags) as url, Session(
        "bench", base_url=url, max_concurrency=64
    ) as session:
        reqs = [VideoRequest(f"clip {i}") for i in range(3 * n)]
        subs = [s for s in await session.submit_many(reqs) if isinstance(s, Submission)]
        groups = {"apimart_async": subs[:n], "fixed 1 s": subs[n:2 * n], "fixed 5 s": subs[2 * n:]}

        async def sdk() -> None:
            async for _ in session.watch(groups["apimart_async"]):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(sdk)
            for name, interval in (("fixed 1 s", 1.0), ("fixed 5 s", 5.0)):
                for sub in groups[name]:
                    tg.start_soon(naive_loop, session, sub, interval)
        stats = await emulator_stats(url)

    rows = []
    for name, group in groups.items():
        polls = [stats["polls"].get(s.task_id, 0) for s in group]
        lags = [stats["detection_lags"][s.task_id] for s in group]
        rows.append([name, statistics.mean(polls), percentile(lags, 50), percentile(lags, 95)])
    base = rows[1]
    for row in rows:
        row += [row[1] / base[1], row[3] / base[3]]
    print(f"Polling, {n} tasks per strategy, 4-8 s tasks, estimates +-30 %,"
          f" 20 ms latency ({machine()})")
    print(table(["strategy", "polls/task", "lag p50 (s)", "lag p95 (s)",
                 "polls vs 1 s loop", "lag p95 vs 1 s loop"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100)
    anyio.run(main, parser.parse_args().tasks)
