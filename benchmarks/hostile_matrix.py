"""Every hostile emulator mode against a real `run_batch`, one fresh process per case.

    python benchmarks/hostile_matrix.py [CASE ...] [--deadline SECONDS]

Each case runs in its own child process (so its peak RSS is its own): an emulator on
loopback (in that process: its memory is counted too, so the figure bounds the SDK's
from above) on a clock running x50, a `Session`, and a one-item `run_batch` (two items
for `repeat_id`) into a fresh folder, with the case's fault injected on its route (for
every request of that route where one is not enough). Printed per case: what the SDK
reported (each item's state and reason), peak RSS, bytes left in the output folder (the
journal included), submissions the emulator counted (paid) and duplicates it saw, whether
the key reached any file in the folder, and wall time. The parent kills a child that
outlives `--deadline` (reported as HUNG): nothing may hang.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = "sk-hostile-matrix-canary-0123456789"
MANY = 5000  # a fault for every request of its route


def _cases() -> dict[str, tuple[str, list[Any]]]:
    from apimart_async.testing import Fault

    return {
        # download route (the file host)
        "download gzip": ("download", [Fault.gzip()] * 10),
        "download gzip bomb": ("download", [Fault.gzip(bomb=True)] * 10),
        "download endless": ("download", [Fault.endless()] * 10),
        "download drip": ("download", [Fault.drip(1.0)] * 10),
        "download html 200": ("download", [Fault.html(200)] * 10),
        "download cut, no length": ("download", [Fault.cut_unframed()] * 10),
        "download wrong_range": ("download", [Fault.cut(), Fault.wrong_range()]),
        "download short_range": ("download", [Fault.cut(), Fault.short_range()]),
        # task route (the API's answers)
        "task answer_id": ("task", [Fault.answer_id("../../x")] * MANY),
        "task echo_key": ("task", [Fault.echo_key()]),
        "task result_url link-local": (
            "task", [Fault.result_url("http://169.254.169.254/latest/meta-data/")] * MANY),
        "task result_url file:": ("task", [Fault.result_url("file:///etc/passwd")] * MANY),
        "task huge_answer 100 MB": ("task", [Fault.huge_answer(100 << 20)] * MANY),
        "task gzip bomb answer": ("task", [Fault.gzip(bomb=True)] * MANY),
        "task status null": ("task", [Fault.task_status(None)] * MANY),
        "task status unknown": ("task", [Fault.task_status("rendering-v9")] * MANY),
        # submit route
        # (The first finds no earlier task id and creates one; the second repeats it.)
        "submit repeat_id": ("submit", [Fault.repeat_id(), Fault.repeat_id()]),
    }


async def one(case: str) -> dict[str, Any]:
    from apimart_async import DownloadPolicy, Session, VideoRequest
    from apimart_async.testing import Clock, EmulatorServer, set_testing

    set_testing(True)
    route, faults = _cases()[case]
    n = 2 if route == "submit" else 1
    # The download cap is lowered to 256 MiB (default 2 GiB) so an endless body ends
    # in seconds; everything else is the default policy.
    policy = DownloadPolicy(max_bytes=256 << 20, low_speed_time=10.0)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        async with EmulatorServer(clock=Clock(speed=50)) as server, Session(
            KEY, base_url=server.base_url, clock=server.emulator.clock, downloads=policy,
        ) as s:
            server.emulator.inject(route, *faults)
            try:
                report = await s.run_batch(
                    [VideoRequest(f"a fox, take {i}") for i in range(n)], out_dir=out)
                outcome = "; ".join(
                    f"{item.state.value}" + (f": {item.reason}" if item.reason else "")
                    for item in report.items)
            except Exception as exc:  # what the SDK raised is the outcome
                outcome = f"raised {type(exc).__name__}: {exc}"
            stats = server.stats
            paid, duplicates = stats.submissions, stats.duplicate_submissions
        files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
        on_disk = sum(p.stat().st_size for p in files)
        leaked = any(KEY.encode() in p.read_bytes() for p in files)
    leaked = leaked or KEY in outcome
    return {
        "outcome": " ".join(outcome.split())[:150], "on_disk": on_disk, "paid": paid,
        "duplicates": duplicates, "key_leaked": leaked,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="*")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds a case may take before it is killed (default 120)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(one(args.cases[0]))))
        return
    names = args.cases or list(_cases())
    print("| case | outcome (what the SDK reported) | peak RSS MB | bytes on disk | paid | "
          "duplicates | key leaked | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    over = []
    for name in names:
        start = time.monotonic()
        try:
            done = subprocess.run([sys.executable, __file__, "--child", name],
                                  capture_output=True, text=True, timeout=args.deadline,
                                  check=False)
        except subprocess.TimeoutExpired:
            print(f"| {name} | HUNG: killed after {args.deadline:g} s | | | | | | |")
            continue
        wall = time.monotonic() - start
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = " ".join(done.stderr.strip().splitlines()[-1:])[:120]
            print(f"| {name} | CRASHED (exit {done.returncode}): {tail} | | | | | | {wall:.1f} |")
            continue
        r = json.loads(lines[-1])
        if r["rss_mb"] >= 200:
            over.append(name)
        print(f"| {name} | {r['outcome'].replace('|', '/')} | {r['rss_mb']:.0f} | "
              f"{r['on_disk']:,} | {r['paid']} | {r['duplicates']} | "
              f"{'YES' if r['key_leaked'] else 'no'} | {wall:.1f} |", flush=True)
    print()
    print(f"peak RSS >= 200 MB: {', '.join(over) if over else 'none'}")


if __name__ == "__main__":
    main()
