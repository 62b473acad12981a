"""What the SDK costs over a hand-written raw aiohttp loop, GET and POST, told by ratios.

Clients: a raw aiohttp loop, raw aiohttp on uvloop + orjson (the floor's headroom), the
SDK on the stock asyncio loop with the standard library's JSON, the SDK with the
``speed`` extra (uvloop + orjson), and httpx. Each makes N calls at concurrency C of
``GET /v1/tasks/{id}`` (decoding the answer; the SDK also checks it into a `Task`) or
``POST /v1/videos/generations`` (a JSON body and an Idempotency-Key; the SDK reads the
task id) against one emulator in its own process.

Every measurement is a fresh child process (so each client gets its own event loop,
warmed up with 200 calls first), and the clients take turns within each round, in a new
order every round: drift from the other work on the machine hits them alike. Per round,
each client's throughput and CPU per request are divided by raw aiohttp's in that same
round (a paired ratio); the table gives the median over rounds and the spread (min-max).

    python benchmarks/bench_overhead.py [--rounds 7] [--get 2000] [--post 500]
        [--get-concurrency 64] [--post-concurrency 32] [--clients raw,sdk,sdk-speed,...]

Needs the ``bench`` extra (``pip install -e '.[bench]'``: httpx, orjson, uvloop).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from _common import emulator_process, machine, table

CLIENTS = ("raw", "raw-speed", "sdk", "sdk-speed", "httpx")
LABELS = {
    "raw": "raw aiohttp",
    "raw-speed": "raw aiohttp + uvloop + orjson",
    "sdk": "apimart_async",
    "sdk-speed": "apimart_async[speed] (uvloop + orjson)",
    "httpx": "httpx",
}
BODY = {"model": "sora-2", "prompt": "a lighthouse at dusk"}
WARM_UP = 200
CHILD_ENV = dict(os.environ)
REPLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_replay.py")


# -- the child: one client, one operation, one measurement -------------------------------

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


async def child(client: str, op: str, url: str, task_id: str, n: int, c: int) -> dict[str, Any]:
    speed = client.endswith("-speed")
    headers = {"Authorization": "Bearer bench", "Accept": "application/json"}
    task_url = f"{url}/v1/tasks/{task_id}"
    submit_url = f"{url}/v1/videos/generations"
    if client.startswith("raw"):
        import aiohttp

        loads = json.loads
        if speed:
            import orjson

            loads = orjson.loads
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:
            async def raw_get() -> object:
                async with http.get(task_url, headers=headers) as r:
                    return loads(await r.read())["data"]

            async def raw_post() -> object:
                h = dict(headers, **{"Idempotency-Key": os.urandom(16).hex()})
                async with http.post(submit_url, json=BODY, headers=h) as r:
                    return loads(await r.read())["data"][0]["task_id"]

            call = raw_get if op == "get" else raw_post
            await drive(call, WARM_UP, c)
            wall, cpu = await drive(call, n, c)
    elif client.startswith("sdk"):
        from apimart_async import Session, VideoRequest
        from apimart_async._core import wire

        wire.use_orjson(speed)
        request = VideoRequest(BODY["prompt"], model=BODY["model"])
        async with Session("bench", base_url=url, max_concurrency=c) as session:
            async def sdk_get() -> object:
                return await session.get_task(task_id)

            async def sdk_post() -> object:
                return await session.submit(request)

            call = sdk_get if op == "get" else sdk_post
            await drive(call, WARM_UP, c)
            wall, cpu = await drive(call, n, c)
    elif client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(limits=limits) as hx:
            async def hx_get() -> object:
                r = await hx.get(task_url, headers=headers)
                return r.json()["data"]

            async def hx_post() -> object:
                h = dict(headers, **{"Idempotency-Key": os.urandom(16).hex()})
                r = await hx.post(submit_url, json=BODY, headers=h)
                return r.json()["data"][0]["task_id"]

            call = hx_get if op == "get" else hx_post
            await drive(call, WARM_UP, c)
            wall, cpu = await drive(call, n, c)
    else:
        raise SystemExit(f"unknown client {client!r}")
    return {"wall": wall, "cpu": cpu}


def run_child(client: str, op: str, url: str, task_id: str, n: int, c: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", client, op, url, task_id, str(n), str(c)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=CHILD_ENV).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- the parent: rounds, pairs, medians ------------------------------------------------

async def first_task(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
        f"{url}/v1/videos/generations", json=BODY, headers={"Authorization": "Bearer bench"}
    ) as r:
        task_id: str = (await r.json())["data"][0]["task_id"]
        return task_id


async def recorded(url: str, task_id: str) -> tuple[bytes, bytes]:
    """The emulator's answers to one GET and one POST, as bytes on the wire."""
    import aiohttp

    answers = []
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", f"/v1/tasks/{task_id}"), ("POST", "/v1/videos/generations")):
            async with http.request(
                method, url + path, json=BODY if method == "POST" else None,
                headers={"Authorization": "Bearer bench"},
            ) as r:
                body = await r.read()
                lines = [f"HTTP/1.1 {r.status} {r.reason}"]
                lines += [f"{k}: {v}" for k, v in r.headers.items()
                          if k.lower() not in ("content-length", "transfer-encoding")]
                lines.append(f"Content-Length: {len(body)}")
                answers.append(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return answers[0], answers[1]


def _write_answers(folder: str, get: bytes, post: bytes) -> list[str]:
    files = [os.path.join(folder, name) for name in ("get", "post")]
    for name, data in zip(files, (get, post), strict=True):
        with open(name, "wb") as f:
            f.write(data)
    return files


@asynccontextmanager
async def replay_process(get: bytes, post: bytes) -> AsyncIterator[str]:
    """`_replay.py` in its own process, answering with `get` and `post`; its base URL."""
    with tempfile.TemporaryDirectory() as folder:
        files = _write_answers(folder, get, post)
        async with await anyio.open_process([sys.executable, REPLAY, *files]) as proc:
            assert proc.stdout is not None
            banner = b""
            async for chunk in proc.stdout:
                banner += chunk
                if banner.endswith(b"\n"):
                    break
            try:
                yield banner.decode().split()[-1]
            finally:
                proc.terminate()
                await proc.wait()


@asynccontextmanager
async def server(kind: str) -> AsyncIterator[tuple[str, str]]:
    """The server the clients run against, and a task id it knows."""
    async with emulator_process() as url:
        task_id = await first_task(url)
        if kind == "emulator":
            yield url, task_id
            return
        get, post = await recorded(url, task_id)
    async with replay_process(get, post) as url:
        yield url, task_id


def spread(values: list[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}"


async def main(args: argparse.Namespace) -> None:
    clients = [c for c in args.clients.split(",") if c]
    if "raw" not in clients:
        raise SystemExit("--clients must include raw: every ratio is to it")
    ops = {"get": (args.get, args.get_concurrency), "post": (args.post, args.post_concurrency)}
    rows = []
    pinned = args.pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    if pinned:
        # The emulator (started next) inherits core 0; every client child moves to core 1.
        # Two processes on two cores otherwise trade places under the scheduler, and a
        # client sharing a core with the server for part of a round skews that round.
        os.sched_setaffinity(0, {0})
        CHILD_ENV["BENCH_PIN"] = "1"
    async with server(args.server) as (url, task_id):
        # results[op][client] -> one (requests/s, CPU us/request) per round
        results: dict[str, dict[str, list[tuple[float, float]]]] = {
            op: {c: [] for c in clients} for op in ops
        }
        rng = random.Random(args.seed)
        for round_no in range(args.rounds):
            for op, (n, c) in ops.items():
                order = clients[:]
                rng.shuffle(order)
                for client in order:
                    # httpx is ~10x slower: a tenth of the calls keeps a round short.
                    calls = max(WARM_UP, n // 10) if client == "httpx" else n
                    r = await anyio.to_thread.run_sync(
                        run_child, client, op, url, task_id, calls, c
                    )
                    results[op][client].append((calls / r["wall"], r["cpu"] / calls * 1e6))
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    for op, per_client in results.items():
        raw = per_client["raw"]
        for client in clients:
            runs = per_client[client]
            ratios = [rps / raw_rps for (rps, _), (raw_rps, _) in zip(runs, raw, strict=True)]
            cpu_ratios = [cpu / raw_cpu for (_, cpu), (_, raw_cpu) in zip(runs, raw, strict=True)]
            rows.append([
                op.upper(), LABELS[client],
                statistics.median(r for r, _ in runs),
                statistics.median(cpu for _, cpu in runs),
                statistics.median(ratios), spread(ratios),
                statistics.median(cpu_ratios), spread(cpu_ratios),
            ])
    print(f"Overhead against raw aiohttp: {args.rounds} interleaved rounds, GET {args.get} calls"
          f" at {args.get_concurrency}, POST {args.post} at {args.post_concurrency},"
          f" each a fresh process ({machine()})")
    print("Ratios are paired: each round's figure over raw aiohttp's in the same round.")
    print(table(
        ["op", "client", "requests/s (median)", "CPU/request us (median)",
         "x raw throughput (median)", "spread", "x raw CPU (median)", "spread"],
        rows,
    ))
    print("\nPer round, x raw throughput:")
    for op, per_client in results.items():
        raw = per_client["raw"]
        for client in clients:
            if client == "raw":
                continue
            pairs = zip(per_client[client], raw, strict=True)
            ratios = [rps / raw_rps for (rps, _), (raw_rps, _) in pairs]
            print(f"  {op.upper()} {LABELS[client]}: " + " ".join(f"{x:.3f}" for x in ratios))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        client, op, url, task_id, n, c = sys.argv[2:8]
        if os.environ.get("BENCH_PIN") == "1":
            os.sched_setaffinity(0, {1})
        backend_options = {"use_uvloop": True} if client.endswith("-speed") else {}
        result = anyio.run(child, client, op, url, task_id, int(n), int(c),
                           backend_options=backend_options)
        print(json.dumps(result))
        sys.exit(0)
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--get", type=int, default=2000)
    p.add_argument("--post", type=int, default=500)
    p.add_argument("--get-concurrency", type=int, default=64)
    p.add_argument("--post-concurrency", type=int, default=32)
    p.add_argument("--clients", default=",".join(CLIENTS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server", choices=("replay", "emulator"), default="replay",
                   help="replay: the emulator's recorded answers sent back by a minimal server,"
                        " so the client is the bottleneck (default); emulator: the emulator"
                        " itself, whose own CPU per request caps every client alike")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the scheduler place the emulator and the clients (default: pinned"
                        " to cores 0 and 1 where the OS allows)")
    anyio.run(main, p.parse_args())
