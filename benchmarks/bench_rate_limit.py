"""Benchmark: a batch against a rate-limited server, SDK vs per-coroutine retries.

N submissions against an emulator (own process) that allows R requests per second
(burst R) and answers 429 with ``Retry-After: 1`` beyond. The baseline is what users
write by hand: gather + a semaphore, each coroutine sleeping Retry-After and retrying
on its own. Both run with real delays, one after the other, on fresh emulators.

    python benchmarks/bench_rate_limit.py [--requests 500] [--rps 10]
"""

from __future__ import annotations

import argparse
import time

import aiohttp
import anyio
from _common import emulator_process, emulator_stats, machine, table

from apimart_async import Session, Submission, VideoRequest


async def naive(url: str, n: int, c: int) -> int:
    sem = anyio.Semaphore(c)
    ok = 0
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> None:
            nonlocal ok
            async with sem:
                while True:
                    async with http.post(
                        url + "/v1/videos/generations",
                        json={"model": "sora-2", "prompt": f"clip {i}"},
                        headers={"Authorization": "Bearer bench"},
                    ) as r:
                        if r.status == 429:
                            await anyio.sleep(float(r.headers.get("Retry-After", "1")))
                            continue
                        ok += r.status == 200
                        return

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return ok


async def sdk(url: str, n: int, c: int) -> int:
    async with Session("bench", base_url=url, max_concurrency=c) as s:
        outcomes = await s.submit_many([VideoRequest(f"clip {i}") for i in range(n)])
    return sum(isinstance(o, Submission) for o in outcomes)


async def main(n: int, rps: float, c: int) -> None:
    rows = []
    bound = (n - rps) / rps
    for name, run in (("apimart_async (shared AIMD rate)", sdk), ("per-coroutine retry", naive)):
        async with emulator_process("--rate-limit", str(rps)) as url:
            start = time.perf_counter()
            ok = await run(url, n, c)
            makespan = time.perf_counter() - start
            stats = await emulator_stats(url)
        rows.append([name, ok, stats["submissions"], stats["rate_limited"], makespan,
                     makespan / bound])
    print(f"{n} submissions, server allows {rps:g}/s (burst {rps:g}), concurrency {c}"
          f" ({machine()})")
    print(table(["client", "ok", "tasks created", "429s met", "makespan (s)",
                 "vs (N - burst) / rate"], rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--rps", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=32)
    a = p.parse_args()
    anyio.run(main, a.requests, a.rps, a.concurrency)
