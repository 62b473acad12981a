"""What the SDK costs over a hand-written raw aiohttp loop, GET and POST, told by ratios.

Clients: a raw aiohttp loop, the SDK, and httpx on the stock asyncio loop with the
standard library's JSON; raw aiohttp and the SDK with the ``speed`` extra (uvloop +
orjson). Each makes calls at concurrency C of ``GET /v1/tasks/{id}`` (decoding the
answer; the SDK also checks it into a `Task`) or ``POST /v1/videos/generations`` (a JSON
body and an Idempotency-Key; the SDK reads the task id). Operations:

- ``get``: one task whose answer does not change between polls (the usual poll); the
  SDK's `get_task` gives back the `Task` it read last time for the same bytes, where
  raw aiohttp and httpx decode every answer (the session's watch/wait polls do not:
  their answers are read each time);
- ``get-changing``: the answer changes at every poll (status and progress move): no
  client can reuse what it read last time;
- ``post``: submissions.

The server: by default a replay server (`_replay.py`, its own process) answering with
the bytes the emulator sent for that GET and that POST; it costs a few microseconds a
request, so the client under test is the bottleneck and what is measured. With
``--server emulator`` the emulator answers itself; it spends as much CPU per request as
a client, so every client's figure converges to the server's.

Noise: this is meant for small shared machines (2 cores, a VM whose speed drifts by 2x
over seconds). So (1) the server and the clients are pinned to different cores where
the OS allows; (2) clients on the same event loop live in one process and take turns
in short blocks (a few hundred calls each, in a new order every pair): each block is
divided by raw aiohttp's adjacent block (a paired ratio), so drift over seconds cancels;
(3) each round starts fresh processes. The table gives the median of the paired ratios
and their 10th-90th percentile range. The speed-extra clients run on another loop, so
they are in another process: their "x raw" is per round (the whole child against the
stock-loop child of the same round), and their "x same-loop raw" pairs blocks with raw
aiohttp on uvloop + orjson.

    python benchmarks/bench_overhead.py [--rounds 5] [--pairs 10] [--block 400]
        [--ops get,get-changing,post] [--server replay|emulator] [--no-pin]

``--count`` measures what no load on the machine can move: each client runs alone in
its own process under valgrind's cachegrind (simulated caches and branch predictor),
once for a short run and once for a long one, and the difference divided by the extra
calls is what one call costs: instructions, mispredicted branches, first-level cache
misses (instruction + data). Repeat it on another day, another VM: the same figures
within about 1 %. (It leaves out the kernel's share, which a client's socket calls
make about the same for all; and an instruction of the SDK's Python is dearer than
one of aiohttp's C, so a ratio of instructions is a floor for the ratio of CPU time.)

    python benchmarks/bench_overhead.py --count [--ops ...] [--count-requests 500,2500]

``--bytecodes`` counts the Python bytecodes each client executes per call (stock loop,
``sys.settrace`` with opcode events, sequential calls after a warm-up), with the
functions where the SDK and raw aiohttp differ most. Load-proof like ``--count`` and
faster (seconds); it sees no C-level work, so a change that trades bytecodes for C calls
must be checked with ``--count`` too (this pass's "quick pass" ran 140 fewer bytecodes
and 24 % more instructions).

    python benchmarks/bench_overhead.py --bytecodes [--ops ...] [--top 25]

Needs the ``bench`` extra (``pip install -e '.[bench]'``: httpx, orjson, uvloop).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from _common import emulator_process, machine, table

LOOPS: dict[str, tuple[str, ...]] = {
    "asyncio": ("raw", "sdk", "httpx"),
    "uvloop": ("raw-speed", "sdk-speed"),
}
LABELS = {
    "raw": "raw aiohttp",
    "sdk": "apimart_async",
    "httpx": "httpx",
    "raw-speed": "raw aiohttp + uvloop + orjson",
    "sdk-speed": "apimart_async[speed] (uvloop + orjson)",
}
OPS = ("get", "get-changing", "post")
BODY = {"model": "sora-2", "prompt": "a lighthouse at dusk"}
WARM_UP = 200
CHILD_ENV = dict(os.environ)
REPLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_replay.py")


# -- the child: the clients of one event loop, taking turns -----------------------------

async def drive(call: Callable[[], Awaitable[object]], n: int, c: int) -> tuple[float, float]:
    """`n` calls, `c` at a time: (wall seconds, CPU seconds)."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    wall, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(min(c, n)):
            tg.start_soon(worker)
    return time.perf_counter() - wall, time.process_time() - cpu


async def make_client(
    stack: AsyncExitStack, client: str, op: str, url: str, task_id: str, c: int
) -> Callable[[], Awaitable[object]]:
    """One call of `op` by `client`, with its session opened on `stack`."""
    headers = {"Authorization": "Bearer bench", "Accept": "application/json"}
    task_url = f"{url}/v1/tasks/{task_id}"
    submit_url = f"{url}/v1/videos/generations"
    if client.startswith("raw"):
        import aiohttp

        loads: Callable[[bytes], Any] = json.loads
        if client == "raw-speed":
            import orjson

            loads = orjson.loads
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)))

        async def raw_get() -> object:
            async with http.get(task_url, headers=headers) as r:
                return loads(await r.read())["data"]

        async def raw_post() -> object:
            h = dict(headers, **{"Idempotency-Key": os.urandom(16).hex()})
            async with http.post(submit_url, json=BODY, headers=h) as r:
                return loads(await r.read())["data"][0]["task_id"]

        return raw_post if op == "post" else raw_get
    if client.startswith("sdk"):
        from apimart_async import Session, VideoRequest
        from apimart_async._core import wire

        wire.use_orjson(client == "sdk-speed")
        request = VideoRequest(BODY["prompt"], model=BODY["model"])
        session = await stack.enter_async_context(
            Session("bench", base_url=url, max_concurrency=c))

        async def sdk_get() -> object:
            return await session.get_task(task_id)

        async def sdk_post() -> object:
            return await session.submit(request)

        return sdk_post if op == "post" else sdk_get
    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        hx = await stack.enter_async_context(httpx.AsyncClient(limits=limits))

        async def hx_get() -> object:
            r = await hx.get(task_url, headers=headers)
            return r.json()["data"]

        async def hx_post() -> object:
            h = dict(headers, **{"Idempotency-Key": os.urandom(16).hex()})
            r = await hx.post(submit_url, json=BODY, headers=h)
            return r.json()["data"][0]["task_id"]

        return hx_post if op == "post" else hx_get
    raise SystemExit(f"unknown client {client!r}")


async def child(
    clients: list[str], op: str, url: str, task_id: str, block: int, pairs: int, c: int,
    seed: int,
) -> dict[str, list[tuple[int, float, float]]]:
    """Per client, one (calls, wall, CPU) per block; the clients take turns."""
    rng = random.Random(seed)
    out: dict[str, list[tuple[int, float, float]]] = {client: [] for client in clients}
    async with AsyncExitStack() as stack:
        calls = {client: await make_client(stack, client, op, url, task_id, c)
                 for client in clients}
        for client in clients:
            await drive(calls[client], WARM_UP, c)
        for _ in range(pairs):
            order = clients[:]
            rng.shuffle(order)
            for client in order:
                # httpx is ~10x slower: a tenth of the calls keeps its turn as short.
                n = max(c, block // 10) if client == "httpx" else block
                wall, cpu = await drive(calls[client], n, c)
                out[client].append((n, wall, cpu))
    return out


def run_child(
    loop: str, clients: list[str], op: str, url: str, task_id: str, block: int, pairs: int,
    c: int, seed: int,
) -> dict[str, list[tuple[int, float, float]]]:
    cmd = [sys.executable, __file__, "--child", loop, ",".join(clients), op, url, task_id,
           str(block), str(pairs), str(c), str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=CHILD_ENV)
    if done.returncode:
        raise SystemExit(f"a client process failed:\n{done.stderr[-3000:]}")
    out = done.stdout
    result: dict[str, list[tuple[int, float, float]]] = json.loads(out.strip().splitlines()[-1])
    return result


# -- counting (--count): each client alone, under cachegrind -------------------------------

COUNTED = ("raw", "sdk", "raw-speed", "sdk-speed")
# cachegrind's summary lines: what each figure is called there.
_EVENTS = {"instructions": "I refs", "branches": "Branches", "mispredicted": "Mispredicts",
           "I1 misses": "I1 misses", "D1 misses": "D1 misses"}


async def count_child(client: str, op: str, url: str, task_id: str, n: int, c: int) -> None:
    """`n` calls of `op` by `client` after a warm-up: what one process under cachegrind runs."""
    async with AsyncExitStack() as stack:
        call = await make_client(stack, client, op, url, task_id, c)
        await drive(call, WARM_UP, c)
        await drive(call, n, c)


def counted(client: str, op: str, url: str, task_id: str, n: int, c: int) -> dict[str, int]:
    """The whole process's counts for `n` calls (cachegrind's summary)."""
    loop = "uvloop" if client.endswith("-speed") else "asyncio"
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes",
           "--cachegrind-out-file=/dev/null", sys.executable, __file__, "--count-child",
           loop, client, op, url, task_id, str(n), str(c)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=CHILD_ENV)
    if done.returncode:
        raise SystemExit(f"a counted client failed:\n{done.stderr[-3000:]}")
    found: dict[str, int] = {}
    for line in done.stderr.splitlines():
        head, _, rest = line.partition(":")
        name = " ".join(head.split("==")[-1].split())
        if rest.strip() and name in _EVENTS.values():
            found[name] = int(rest.split()[0].replace(",", ""))
    return {event: found[name] for event, name in _EVENTS.items()}


async def count_main(args: argparse.Namespace, ops: list[str]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--count needs valgrind (apt-get install valgrind)")
    try:
        short, long_ = (int(v) for v in args.count_requests.split(","))
    except ValueError:
        raise SystemExit(f"--count-requests: want SHORT,LONG (two whole numbers), got"
                         f" {args.count_requests!r}") from None
    if not 0 < short < long_:
        raise SystemExit(f"--count-requests: want 0 < SHORT < LONG, got {short},{long_}")
    clients = [c for c in COUNTED if not c.endswith("-speed") or _speed_available()]
    conc = {"get": args.get_concurrency, "get-changing": args.get_concurrency,
            "post": args.post_concurrency}
    per_call: dict[tuple[str, str], dict[str, float]] = {}
    limiter = anyio.CapacityLimiter(max(1, (os.cpu_count() or 1)))
    async with servers(args.server) as where:
        async def one(op: str, client: str) -> None:
            url, task_id = where[op]
            async with limiter:
                a = await anyio.to_thread.run_sync(
                    counted, client, op, url, task_id, short, conc[op])
            async with limiter:
                b = await anyio.to_thread.run_sync(
                    counted, client, op, url, task_id, long_, conc[op])
            per_call[op, client] = {k: (b[k] - a[k]) / (long_ - short) for k in a}

        async with anyio.create_task_group() as tg:
            for op in ops:
                for client in clients:
                    tg.start_soon(one, op, client)
    rows = []
    for op in ops:
        raw = per_call[op, "raw"]
        for client in clients:
            mine = per_call[op, client]
            same = per_call[op, "raw-speed" if client.endswith("-speed") else "raw"]
            rows.append([op.upper(), LABELS[client]]
                        + [round(mine[k]) for k in _EVENTS]
                        + [f"{mine['instructions'] / raw['instructions']:.3f}",
                           f"{mine['mispredicted'] / raw['mispredicted']:.3f}",
                           f"{mine['instructions'] / same['instructions']:.3f}"])
    print(f"Per call, counted by cachegrind ({long_} minus {short} calls, each client alone"
          f" in its process, {args.server} server; {machine()})")
    print(table(["op", "client", *_EVENTS, "x raw instructions", "x raw mispredicted",
                 "x same-loop raw instructions"], rows))


async def bytecodes_main(args: argparse.Namespace, ops: list[str]) -> None:
    """Bytecodes per call of raw aiohttp and the SDK (difference of two runs), and where
    they differ most, function by function."""
    counts: Counter[tuple[str, str]] = Counter()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts["/".join(code.co_filename.split("/")[-2:]), code.co_name] += 1
        return tracer

    async def run(call: Callable[[], Awaitable[object]], n: int) -> Counter[Any]:
        counts.clear()
        sys.settrace(tracer)
        try:
            for _ in range(n):
                await call()
        finally:
            sys.settrace(None)
        return Counter(counts)

    async with servers(args.server) as where:
        for op in ops:
            url, task_id = where[op]
            per_call = {}
            for client in ("raw", "sdk"):
                async with AsyncExitStack() as stack:
                    call = await make_client(stack, client, op, url, task_id, 1)
                    await drive(call, WARM_UP, 4)
                    short, long_ = await run(call, 50), await run(call, 250)
                    per_call[client] = {k: (long_[k] - short.get(k, 0)) / 200 for k in long_}
            raw, sdk = (sum(per_call[c].values()) for c in ("raw", "sdk"))
            print(f"{op.upper()}: raw aiohttp {raw:.0f} bytecodes a call, apimart_async "
                  f"{sdk:.0f} ({sdk / raw:.3f}x)")
            keys = set(per_call["raw"]) | set(per_call["sdk"])
            diff = sorted(((per_call["sdk"].get(k, 0) - per_call["raw"].get(k, 0), k)
                           for k in keys), key=lambda d: -abs(d[0]))
            print(table(["SDK - raw", "function"],
                        [[f"{d:+.0f}", f"{k[0]}:{k[1]}"] for d, k in diff[:args.top]
                         if abs(d) >= 1]))


def _speed_available() -> bool:
    try:
        import orjson  # noqa: F401
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# -- the servers --------------------------------------------------------------------------

async def first_task(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
        f"{url}/v1/videos/generations", json=BODY, headers={"Authorization": "Bearer bench"}
    ) as r:
        task_id: str = (await r.json())["data"][0]["task_id"]
        return task_id


def _wire_answer(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers
              if k.lower() not in ("content-length", "transfer-encoding")]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def recorded(url: str, task_id: str) -> tuple[bytes, list[bytes]]:
    """The emulator's answers to one POST and one GET, as bytes on the wire, and a
    second GET answer: the same with the task moved on (status and progress)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/videos/generations", json=BODY,
                             headers={"Authorization": "Bearer bench"}) as r:
            post = _wire_answer(r.status, r.reason or "", list(r.headers.items()),
                                await r.read())
        async with http.get(f"{url}/v1/tasks/{task_id}",
                            headers={"Authorization": "Bearer bench"}) as r:
            status, reason, headers = r.status, r.reason or "", list(r.headers.items())
            body = await r.read()
    answer = json.loads(body)
    answer["data"].update(status="processing", progress=37)
    moved = json.dumps(answer).encode()
    return post, [_wire_answer(status, reason, headers, body),
                  _wire_answer(status, reason, headers, moved)]


def _write_answers(folder: str, answers: list[bytes]) -> list[str]:
    files = []
    for i, data in enumerate(answers):
        name = os.path.join(folder, f"answer-{i}")
        with open(name, "wb") as f:
            f.write(data)
        files.append(name)
    return files


@asynccontextmanager
async def replay_process(post: bytes, gets: list[bytes]) -> AsyncIterator[str]:
    """`_replay.py` in its own process, answering with `post` and `gets`; its base URL."""
    with tempfile.TemporaryDirectory() as folder:
        files = _write_answers(folder, [post, *gets])
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
async def servers(kind: str) -> AsyncIterator[dict[str, tuple[str, str]]]:
    """Per operation, the base URL it runs against and a task id that server knows."""
    async with emulator_process() as url:
        task_id = await first_task(url)
        if kind == "emulator":
            # The emulator's task moves on by itself; "get-changing" is the same here.
            yield {op: (url, task_id) for op in OPS}
            return
        post, gets = await recorded(url, task_id)
    async with replay_process(post, gets[:1]) as steady, replay_process(post, gets) as moving:
        yield {"get": (steady, task_id), "get-changing": (moving, task_id),
               "post": (steady, task_id)}


# -- the parent: rounds, pairs, medians ------------------------------------------------

def _q(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _spread(values: list[float]) -> str:
    return f"{_q(values, 0.1):.3g}-{_q(values, 0.9):.3g}"


def _rate(blocks: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Requests/s and CPU us/request over `blocks`."""
    calls = sum(n for n, _, _ in blocks)
    return calls / sum(w for _, w, _ in blocks), sum(c for _, _, c in blocks) / calls * 1e6


def _paired(mine: list[tuple[int, float, float]], base: list[tuple[int, float, float]]
            ) -> tuple[list[float], list[float]]:
    """Per pair of blocks: throughput ratio and CPU-per-request ratio."""
    thr, cpu = [], []
    for (n, w, c), (bn, bw, bc) in zip(mine, base, strict=True):
        thr.append((n / w) / (bn / bw))
        cpu.append((c / n) / (bc / bn))
    return thr, cpu


async def main(args: argparse.Namespace) -> None:
    ops = [op for op in args.ops.split(",") if op]
    for op in ops:
        if op not in OPS:
            raise SystemExit(f"--ops: unknown operation {op!r} (known: {', '.join(OPS)})")
    if args.count:
        await count_main(args, ops)
        return
    if args.bytecodes:
        await bytecodes_main(args, ops)
        return
    loops = dict(LOOPS)
    try:
        import orjson  # noqa: F401
        import uvloop  # noqa: F401
    except ImportError:
        print("uvloop or orjson missing: the speed-extra clients are skipped", file=sys.stderr)
        del loops["uvloop"]
    pinned = args.pin and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    if pinned:
        # The servers (started next) inherit core 0; every client child moves to core 1.
        os.sched_setaffinity(0, {0})
        CHILD_ENV["BENCH_PIN"] = "1"
    conc = {"get": args.get_concurrency, "get-changing": args.get_concurrency,
            "post": args.post_concurrency}
    # results[op][loop] -> one child result per round
    results: dict[str, dict[str, list[dict[str, list[tuple[int, float, float]]]]]] = {
        op: {loop: [] for loop in loops} for op in ops}
    rng = random.Random(args.seed)
    async with servers(args.server) as where:
        for round_no in range(args.rounds):
            for op in ops:
                url, task_id = where[op]
                block = args.block if op != "post" else max(args.post_concurrency,
                                                           args.block // 2)
                order = list(loops)
                rng.shuffle(order)
                for loop in order:
                    r = await anyio.to_thread.run_sync(
                        run_child, loop, list(loops[loop]), op, url, task_id, block,
                        args.pairs, conc[op], rng.randrange(1 << 30))
                    results[op][loop].append(r)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

    rows = []
    for op in ops:
        stock = results[op]["asyncio"]
        for loop, clients in loops.items():
            runs = results[op][loop]
            base = "raw" if loop == "asyncio" else "raw-speed"
            for client in clients:
                blocks = [b for run in runs for b in run[client]]
                rps, cpu = _rate(blocks)
                same_thr: list[float] = []
                same_cpu: list[float] = []
                for run in runs:
                    t, c = _paired(run[client], run[base])
                    same_thr += t
                    same_cpu += c
                if loop == "asyncio":
                    x_raw, x_cpu = same_thr, same_cpu
                else:  # per round, this child against the stock-loop child's raw
                    x_raw, x_cpu = [], []
                    for run, stock_run in zip(runs, stock, strict=True):
                        (r1, c1), (r0, c0) = _rate(run[client]), _rate(stock_run["raw"])
                        x_raw.append(r1 / r0)
                        x_cpu.append(c1 / c0)
                rows.append([
                    op.upper(), LABELS[client], rps, cpu,
                    statistics.median(x_raw), _spread(x_raw),
                    statistics.median(x_cpu),
                    statistics.median(same_thr) if loop != "asyncio" else "",
                ])
    print(f"Overhead against raw aiohttp ({args.server} server): {args.rounds} rounds x"
          f" {args.pairs} paired blocks of {args.block} GETs at {args.get_concurrency} /"
          f" {max(args.post_concurrency, args.block // 2)} POSTs at {args.post_concurrency}"
          f"{', cores pinned' if pinned else ''} ({machine()})")
    print("x raw: median of paired ratios (stock-loop clients: adjacent blocks in one process;"
          " speed-extra clients: per round, against the stock-loop process); p10-p90 range.")
    print("GET polls one task whose answer does not change: get_task gives back the Task it"
          " read last time (raw aiohttp and httpx decode every answer). GET-CHANGING: the"
          " answer changes at every call, nothing can be reused.")
    print(table(
        ["op", "client", "requests/s", "CPU/request us", "x raw throughput (median)",
         "p10-p90", "x raw CPU (median)", "x same-loop raw throughput"],
        rows,
    ))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        loop, clients, op, url, task_id, block, pairs, c, seed = sys.argv[2:11]
        if os.environ.get("BENCH_PIN") == "1":
            os.sched_setaffinity(0, {1})
        backend_options = {"use_uvloop": True} if loop == "uvloop" else {}
        result = anyio.run(child, clients.split(","), op, url, task_id, int(block),
                           int(pairs), int(c), int(seed), backend_options=backend_options)
        print(json.dumps(result))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--count-child":
        loop, client, op, url, task_id, n, c = sys.argv[2:9]
        anyio.run(count_child, client, op, url, task_id, int(n), int(c),
                  backend_options={"use_uvloop": True} if loop == "uvloop" else {})
        sys.exit(0)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pairs", type=int, default=10, help="turns each client takes per round")
    p.add_argument("--block", type=int, default=400, help="GET calls per turn (POST: half)")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--get-concurrency", type=int, default=64)
    p.add_argument("--post-concurrency", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server", choices=("replay", "emulator"), default="replay",
                   help="replay: the emulator's recorded answers sent back by a minimal server,"
                        " so the client is the bottleneck (default); emulator: the emulator"
                        " itself, whose own CPU per request caps every client alike")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the scheduler place the server and the clients (default: pinned"
                        " to cores 0 and 1 where the OS allows)")
    p.add_argument("--count", action="store_true",
                   help="count instructions, mispredicted branches and cache misses per call"
                        " under valgrind's cachegrind instead of timing (load-proof)")
    p.add_argument("--count-requests", default="500,2500", metavar="SHORT,LONG",
                   help="with --count: the calls of the short and the long run")
    p.add_argument("--bytecodes", action="store_true",
                   help="count the Python bytecodes per call of raw aiohttp and the SDK, and"
                        " where they differ (load-proof, seconds; blind to C-level work)")
    p.add_argument("--top", type=int, default=25,
                   help="with --bytecodes: the functions listed per operation")
    anyio.run(main, p.parse_args())
