"""Benchmark (b): makespan of submitting N requests at concurrency C with L per request.

The lower bound is ceil(N / C) x L: C requests always in flight, no overhead. The
emulator runs in its own process and adds L to every answer.

    python benchmarks/bench_submit.py [--requests 1000] [--concurrency 32] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import math
import time

import anyio
from _common import emulator_process, emulator_stats, machine, table

from apimart_async import Session, Submission, VideoRequest


async def main(n: int, c: int, latency: float) -> None:
    async with emulator_process("--latency", str(latency)) as url:
        async with Session("bench", base_url=url, max_concurrency=c) as session:
            # Warm the connection pool so both runs start alike.
            await session.submit_many([VideoRequest("warm-up")] * c)
            reqs = [VideoRequest(f"clip {i}") for i in range(n)]
            start = time.perf_counter()
            outcomes = await session.submit_many(reqs)
            makespan = time.perf_counter() - start
        stats = await emulator_stats(url)
    ok = sum(isinstance(o, Submission) for o in outcomes)
    bound = math.ceil(n / c) * latency
    print(f"Submission makespan, {n} requests, concurrency {c}, {latency * 1000:g} ms latency"
          f" ({machine()})")
    print(table(
        ["submitted", "makespan (s)", "lower bound (s)", "ratio", "peak in flight"],
        [[ok, makespan, bound, makespan / bound, stats["peak_in_flight"]]],
    ))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--latency", type=float, default=0.05)
    a = p.parse_args()
    anyio.run(main, a.requests, a.concurrency, a.latency)
