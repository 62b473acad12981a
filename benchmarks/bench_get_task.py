"""Benchmark (c): get_task requests per second and client CPU per request, vs raw aiohttp.

Both clients make the same N calls of ``GET /v1/tasks/{id}`` at the same concurrency
against one emulator in its own process (no added latency), and both decode the JSON;
the SDK also validates it into a typed `Task`. CPU is this process's CPU time.

    python benchmarks/bench_get_task.py [--requests 5000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import aiohttp
import anyio
from _common import emulator_process, machine, table

from apimart_async import Session, VideoRequest


async def drive(call: Callable[[], Awaitable[object]], n: int, c: int) -> tuple[float, float]:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    wall, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(c):
            tg.start_soon(worker)
    return time.perf_counter() - wall, time.process_time() - cpu


async def main(n: int, c: int, rounds: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {"raw aiohttp": [], "apimart_async": []}
    async with emulator_process() as url:
        async with Session("bench", base_url=url, max_concurrency=c) as session:
            task_id = (await session.submit(VideoRequest("x"))).task_id
            headers = {"Authorization": "Bearer bench", "Accept": "application/json"}
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100)
            ) as http:
                async def raw() -> object:
                    async with http.get(f"{url}/v1/tasks/{task_id}", headers=headers) as r:
                        return (await r.json())["data"]

                async def sdk() -> object:
                    return await session.get_task(task_id)

                await drive(raw, 200, c)
                await drive(sdk, 200, c)
                for _ in range(rounds):  # interleaved, so drift hits both alike
                    results["raw aiohttp"].append(await drive(raw, n, c))
                    results["apimart_async"].append(await drive(sdk, n, c))
    rows = []
    for name, runs in results.items():
        best_wall = min(w for w, _ in runs)
        best_cpu = min(cpu for _, cpu in runs)
        rows.append([name, n / best_wall, best_cpu / n * 1e6])
    raw_rps = rows[0][1]
    for row in rows:
        row.append(row[1] / raw_rps)
    print(f"get_task throughput, {n} calls x {rounds} rounds (best), concurrency {c}"
          f" ({machine()})")
    print(table(["client", "requests/s", "client CPU/request (us)", "vs raw aiohttp"], rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    anyio.run(main, a.requests, a.concurrency, a.rounds)
