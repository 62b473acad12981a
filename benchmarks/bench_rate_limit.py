"""Benchmark: a batch against a rate-limited server, learned and given, vs the floor.

N submissions against an emulator (own process) whose API host is a token bucket:
R requests per second, bursts of B, 429 with ``Retry-After`` (whole seconds) beyond.
No client can finish sooner than the floor ``(N - B) / R`` (the burst at once, then
one request per token). For each (R, B) the SDK runs twice on fresh emulators:

- *learned*: ``Session(max_concurrency=C)``, nothing said about the limit;
- *given*: ``Session(rps=R, burst=B)``, the limit told up front.

Printed per row: makespan / floor (client side, from before the session opens to after
it closes), the server's span / floor (first request to last as the emulator saw them:
the floor is a server-side bound), 429s the server sent, and the most requests the
server saw in any one-second window (the limit lets at most B + R through). `--parallel`
runs go at once (one emulator process each), so the figures include that noise;
``--repeat`` runs the whole table again and reports each row's worst.

    python benchmarks/bench_rate_limit.py [--requests 300] [--repeat 2]
        [--pairs 5:1,5:10,...] [--baseline] [--parallel 3]

``--baseline`` adds what users write by hand (gather + a semaphore, each coroutine
sleeping ``Retry-After`` and retrying on its own) at 20/s, burst 10.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import aiohttp
import anyio
from _common import emulator_process, emulator_stats, machine, table

from apimart_async import Session, Submission, VideoRequest

PAIRS = [(r, b) for r in (5, 10, 20, 50) for b in (1, 10, 30)]


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


async def sdk(url: str, n: int, c: int, **limit: Any) -> int:
    async with Session("bench", base_url=url, max_concurrency=c, **limit) as s:
        outcomes = await s.submit_many([VideoRequest(f"clip {i}") for i in range(n)])
    return sum(isinstance(o, Submission) for o in outcomes)


async def request_times(url: str) -> list[float]:
    async with aiohttp.ClientSession() as http, http.get(url + "/_emulator/requests") as r:
        return sorted(float(rec["time"]) for rec in await r.json())


def peak_per_second(times: list[float]) -> int:
    peak, first = 0, 0
    for i, t in enumerate(times):
        while times[first] <= t - 1.0:
            first += 1
        peak = max(peak, i - first + 1)
    return peak


async def one_run(mode: str, rate: float, burst: int, n: int, c: int) -> dict[str, Any]:
    flags = ("--rate-limit", f"{rate:g}", "--burst", str(burst))
    async with emulator_process(*flags) as url:
        start = time.perf_counter()
        if mode == "learned":
            ok = await sdk(url, n, c)
        elif mode == "given":
            ok = await sdk(url, n, c, rps=rate, burst=burst)
        else:
            ok = await naive(url, n, c)
        makespan = time.perf_counter() - start
        stats = await emulator_stats(url)
        times = await request_times(url)
    floor = (n - burst) / rate
    span = times[-1] - times[0]
    return {"mode": mode, "rate": rate, "burst": burst, "ok": ok, "makespan": makespan,
            "ratio": makespan / floor, "span": span / floor, "429s": stats["rate_limited"],
            "peak": peak_per_second(times)}


async def main(n: int, c: int, pairs: list[tuple[float, int]], repeat: int,
               baseline: bool, parallel: int) -> None:
    worst: dict[tuple[str, float, int], dict[str, Any]] = {}
    jobs = [(m, r, b) for m in ("learned", "given") for r, b in pairs]
    if baseline:
        jobs.append(("per-coroutine retry", 20.0, 10))
    limiter = anyio.CapacityLimiter(parallel)

    async def run(job: tuple[str, float, int], into: list[dict[str, Any]]) -> None:
        async with limiter:
            into.append(await one_run(*job, n=n, c=c))

    for round_ in range(repeat):
        results: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(run, job, results)
        for res in results:
            key = (res["mode"], res["rate"], res["burst"])
            if res["ok"] != n:
                raise SystemExit(f"round {round_ + 1}: {key} finished {res['ok']} of {n}")
            old = worst.get(key)
            if old is None:
                worst[key] = res
            else:  # each column's worst over the rounds
                for field in ("makespan", "ratio", "span", "429s", "peak"):
                    old[field] = max(old[field], res[field])
    rows = [[k[0], f"{k[1]:g}/s", k[2], v["makespan"], round(v["ratio"], 3),
             round(v["span"], 3), v["429s"], v["peak"], f"{k[2] + k[1]:g}"]
            for k, v in sorted(worst.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))]
    print(f"{n} submissions, concurrency {c}, worst of {repeat} round(s), {parallel} runs"
          f" at once ({machine()})")
    print(table(["limit", "rate", "burst", "makespan (s)", "makespan / floor",
                 "server span / floor", "429s", "peak req in 1 s", "B + R"], rows))
    for mode in ("learned", "given"):
        mine = [v for k, v in worst.items() if k[0] == mode]
        if mine:
            w = max(mine, key=lambda v: v["ratio"])
            ws = max(mine, key=lambda v: v["span"])
            most = max(mine, key=lambda v: v["429s"])
            print(f"worst {mode}: makespan {w['ratio']:.3f}x the floor ({w['rate']:g}/s,"
                  f" burst {w['burst']}); server span {ws['span']:.3f}x ({ws['rate']:g}/s,"
                  f" burst {ws['burst']}); most 429s {most['429s']} ({most['rate']:g}/s,"
                  f" burst {most['burst']})")


def parse_pairs(text: str) -> list[tuple[float, int]]:
    out = []
    for part in text.split(","):
        rate, _, burst = part.partition(":")
        out.append((float(rate), int(burst)))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--pairs", type=parse_pairs, default=PAIRS,
                   help="RATE:BURST,... (default: 5, 10, 20, 50 /s by bursts 1, 10, 30)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--parallel", type=int, default=3,
                   help="runs at once, each with its own emulator process (default 3)")
    a = p.parse_args()
    anyio.run(main, a.requests, a.concurrency, a.pairs, a.repeat, a.baseline, a.parallel)
