"""Benchmark: one key's rate shared by a fleet of workers over PostgreSQL (#13).

N prompts against an emulator (own process) that allows R requests per second
(burst R, 429 beyond) and answers after L seconds. Each worker is a real
`apimart-async` process with ``--concurrency C --rps R``; with C / L below R, one
worker alone cannot use the whole key. Compared:

- 1, 2 and 3 workers sharing one batch in one PostgreSQL journal (``--rps`` is then
  the key's rate for the whole fleet);
- three independent SQLite runs, each given a third of the prompts and ``--rps R``
  (what running the CLI three times does today: three limiters on one key).

Printed per configuration, over the submission phase (first to last POST): API
requests per second as a fraction of R, the 429s met (and POSTs among them), the most
requests in any one-second window, and the makespan to the last video on disk.
A throwaway PostgreSQL cluster is started (tests/pgcluster.py) unless ``--pg URL``.

    python benchmarks/bench_fleet.py [--prompts 300] [--rps 20] [--latency 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from _common import emulator_process, emulator_stats, machine, table

ROOT = Path(__file__).resolve().parent.parent
SPEED = 20.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "apimart_async", *args]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("APIMART_")}
    out["APIMART_API_KEY"] = "sk-bench-fleet"
    return out


def write_prompts(path: Path, prompts: range) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"fleet bench clip {i}", "duration": 5})
                            + "\n" for i in prompts))
    return path


async def request_log(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url + "/_emulator/requests") as r:
        data: list[dict[str, Any]] = await r.json()
        return data


def peak_per_second(times: list[float]) -> int:
    peak, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] - start < 1.0:
            j += 1
        peak = max(peak, j - i)
    return peak


async def wait_enqueued(pg: str) -> None:
    import asyncpg

    while True:
        try:
            conn = await asyncpg.connect(pg)
            try:
                if await conn.fetchval("SELECT count(*) FROM apimart_items"):
                    return
            finally:
                await conn.close()
        except asyncpg.UndefinedTableError:
            pass
        await anyio.sleep(0.02)


async def one_config(
    name: str, n: int, rps: float, latency: float, conc: int, work: Path,
    pg: str | None, workers: int,
) -> list[object]:
    flags = ("--rate-limit", str(rps), "--latency", str(latency), "--task-duration", "20:40",
             "--speed", str(SPEED))
    async with emulator_process(*flags) as url:
        common = ["--base-url", url, "--concurrency", str(conc), "--rps", str(rps)]
        start = time.perf_counter()
        procs = []
        if pg is not None:
            batch = write_prompts(work / "all.jsonl", range(n))
            first = ["batch", str(batch), "--out", str(work / "w0"), "--journal", pg,
                     "--batch", "bench", *common]
            procs.append(await anyio.open_process(cli(*first), env=env(),
                                                  stdout=subprocess.DEVNULL))
            await wait_enqueued(pg)
            for w in range(1, workers):
                args = ["worker", "--journal", pg, "--batch", "bench",
                        "--out", str(work / f"w{w}"), *common]
                procs.append(await anyio.open_process(cli(*args), env=env(),
                                                      stdout=subprocess.DEVNULL))
        else:
            third = -(-n // workers)
            for w in range(workers):
                part = write_prompts(work / f"part{w}.jsonl",
                                     range(w * third, min(n, (w + 1) * third)))
                args = ["batch", str(part), "--out", str(work / f"s{w}"), *common]
                procs.append(await anyio.open_process(cli(*args), env=env(),
                                                      stdout=subprocess.DEVNULL))
        codes = [await p.wait() for p in procs]
        makespan = time.perf_counter() - start
        for p in procs:
            await p.aclose()
        stats = await emulator_stats(url)
        log = await request_log(url)
    api = sorted((r["time"] / SPEED, r["route"], r["status"]) for r in log
                 if r["route"] in ("submit", "task"))
    posts = [t for t, route, _ in api if route == "submit"]
    first, last = min(posts), max(posts)
    in_phase = [t for t, _, _ in api if first <= t <= last]
    fraction = len(in_phase) / (last - first) / rps if last > first else float("nan")
    wasted = sum(1 for _, route, status in api if route == "submit" and status == 429)
    return [name, stats["submissions"], stats["duplicate_submissions"], fraction,
            stats["rate_limited"], wasted, peak_per_second([t for t, _, _ in api]),
            makespan, "ok" if set(codes) == {0} else f"exit {sorted(set(codes))}"]


async def main(n: int, rps: float, latency: float, conc: int, pg_url: str | None) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        cluster = None
        if pg_url is None:
            sys.path.insert(0, str(ROOT))
            from tests.pgcluster import Cluster, find_bindir

            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("PostgreSQL not found: install it, or pass --pg URL")
            cluster = Cluster(bindir).__enter__()
        try:
            for workers in (1, 2, 3):
                work = Path(tmp) / f"pg{workers}"
                work.mkdir()
                pg = cluster.new_database() if cluster is not None else pg_url
                assert pg is not None
                if cluster is None:
                    import asyncpg

                    conn = await asyncpg.connect(pg)
                    await conn.execute("DROP TABLE IF EXISTS apimart_items, apimart_workers, "
                                       "apimart_batches, apimart_rates, apimart_meta")
                    await conn.close()
                rows.append(await one_config(
                    f"{workers} worker{'s' if workers > 1 else ''}, one PostgreSQL journal",
                    n, rps, latency, conc, work, pg, workers))
            work = Path(tmp) / "sqlite"
            work.mkdir()
            rows.append(await one_config("3 independent SQLite runs (n/3 each)", n, rps,
                                         latency, conc, work, None, 3))
        finally:
            if cluster is not None:
                cluster.__exit__(None, None, None)
    print(f"{n} prompts; the key allows {rps:g} requests/s (burst {rps:g}), answers take "
          f"{latency:g} s; each process --concurrency {conc} --rps {rps:g} ({machine()})")
    print(table(["configuration", "tasks created", "duplicates", "requests/s ÷ limit",
                 "429s", "POSTs answered 429", "peak in 1 s", "makespan (s)", "exit"], rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=300)
    p.add_argument("--rps", type=float, default=20)
    p.add_argument("--latency", type=float, default=0.3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--pg", default=None, help="a postgresql:// URL (default: a throwaway one)")
    a = p.parse_args()
    anyio.run(main, a.prompts, a.rps, a.latency, a.concurrency, a.pg)
