"""Benchmark (a): polls per task and detection lag over a matrix of task timings.

For each timing scenario (a named emulator profile: pending phases, s-curves, stalls,
long tails, no progress, failures mid-run, minutes-long tasks, coarse steps, and mixes)
the SDK's adaptive poller runs side by side with fixed 1-s and 5-s loops. Each strategy
has its own emulator process with the same seed, so the three see the same tasks
(plans are drawn per model and per task of that model). Lag is the emulator's record,
in API seconds: from the moment a task ended to the first poll that saw it ended.

The emulators and the sessions share a compressed clock (`--speed`), so a minute of
task time takes 60/speed real seconds; all waits (the loops' too) and the per-request
latency are scaled by it, so the figures are in API seconds for every strategy alike.

    python benchmarks/bench_polling.py [--tasks 100] [--speed 4] [--latency 0.02] [--seed 7]

`--scenarios queue-30-60,queue-30-60+` runs the long-queue scenarios, left out of the
default matrix (its fresh batch is where the policy still lags: see RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Sequence

import anyio
from _common import emulator_process, emulator_stats, machine, percentile, table

from apimart_async import Session, Submission, TaskStatus, VideoRequest
from apimart_async.testing import Clock

SCENARIOS: dict[str, str] = {
    "linear": "4-8 s renders, linear progress (the old benchmark)",
    "pending-15": "pending for the first 15 % of the render",
    "pending-30-60": "pending for 30-60 % of the render",
    "queue-2-10": "pending 2-10 s, then a 4-8 s render",
    "s-curve": "progress follows an s-curve (slow start)",
    "long-tail": "durations long-tailed (2-40 s, median 6 s)",
    "stall-99": "progress reaches 99 % half-way, then stalls",
    "no-progress": "progress never reported (0 until done)",
    "fail-10": "10 % of tasks fail mid-run",
    "fail-10+": "the same, as the session's next batch (it learned the model fails mid-run)",
    "minutes": "tasks of 30-60 s",
    "steps-10": "progress in steps of 10 %",
    "mix": "all of the above in one batch",
    "realistic": "the realistic preset (queues, heavy tail, 3 % failing)",
    "hostile": "the hostile preset (every bad case, 10 % failing)",
}
# Run only when named (--scenarios): long queues, fresh and as the session's next batch.
EXTRA: dict[str, str] = {
    "queue-30-60": "pending 30-60 s, then a 4-8 s render (the estimate includes the queue)",
    "queue-30-60+": "the same, as the session's next batch (it learned the queue and render)",
}
STRATEGIES = ("apimart_async", "fixed 1 s", "fixed 5 s")
MIXED = [s for s in SCENARIOS if s not in ("mix", "realistic", "hostile") and "+" not in s]


async def fixed_loop(session: Session, request: VideoRequest, interval: float,
                     outcome: dict[str, TaskStatus], ids: list[str]) -> None:
    """What a user writes by hand: submit, then poll every `interval` until it ends."""
    sub = await session.submit(request)
    ids.append(sub.task_id)
    while True:
        await session.clock.sleep(interval)
        task = await session.get_task(sub)
        if task.is_terminal:
            outcome[sub.task_id] = task.status
            return


async def run_strategy(session: Session, strategy: str, models: Sequence[str],
                       outcome: dict[str, TaskStatus]) -> list[str]:
    reqs = [VideoRequest(f"clip {i}", model=m) for i, m in enumerate(models)]
    if strategy == "apimart_async":
        subs = [s for s in await session.submit_many(reqs) if isinstance(s, Submission)]
        async for update in session.watch(subs):
            if update.final:
                outcome[update.task_id] = update.status
        return [s.task_id for s in subs]
    interval = 1.0 if strategy == "fixed 1 s" else 5.0
    ids: list[str] = []
    async with anyio.create_task_group() as tg:
        for req in reqs:
            tg.start_soon(fixed_loop, session, req, interval, outcome, ids)
    return ids


def summarise(ids: list[str], outcome: dict[str, TaskStatus],
              stats: dict[str, object]) -> dict[str, float]:
    polls_by_id: dict[str, int] = stats["polls"]  # type: ignore[assignment]
    lags_by_id: dict[str, float] = stats["detection_lags"]  # type: ignore[assignment]
    done = [lags_by_id[t] for t in ids if outcome.get(t) == TaskStatus.COMPLETED]
    failed = [lags_by_id[t] for t in ids if outcome.get(t) == TaskStatus.FAILED]
    return {
        "polls": statistics.mean(polls_by_id.get(t, 0) for t in ids),
        "p50": percentile(done, 50), "p95": percentile(done, 95),
        "max": max(done) if done else float("nan"),
        "fail95": percentile(failed, 95), "failures": len(failed),
    }


def ratio(a: float, b: float) -> float:
    return a / b if b == b and b > 0 else float("nan")  # nan-safe


async def main(n: int, speed: float, latency: float, only: list[str], seed: int = 7) -> None:
    flags = ["--speed", str(speed), "--latency", str(latency / speed), "--seed", str(seed)]
    for name in {**SCENARIOS, **EXTRA}:
        if name != "mix" and "+" not in name:
            flags += ["--model-profile", f"{name}={name}"]
    clock = Clock(speed=speed)
    results: dict[str, dict[str, dict[str, float]]] = {}
    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        urls = {s: await stack.enter_async_context(emulator_process(*flags)) for s in STRATEGIES}
        sessions = {
            s: await stack.enter_async_context(
                Session("bench", base_url=urls[s], max_concurrency=64, clock=clock))
            for s in STRATEGIES
        }
        outcome: dict[str, TaskStatus] = {}
        ids: dict[tuple[str, str], list[str]] = {}
        for scenario in only:
            # "name+" runs name's model again: a later batch of the same session.
            models = ([MIXED[i % len(MIXED)] for i in range(n)] if scenario == "mix"
                      else [scenario.rstrip("+")] * n)

            async def one(strategy: str, scenario: str = scenario,
                          models: list[str] = models) -> None:
                ids[scenario, strategy] = await run_strategy(
                    sessions[strategy], strategy, models, outcome)

            async with anyio.create_task_group() as tg:
                for strategy in STRATEGIES:
                    tg.start_soon(one, strategy)
        stats = {s: await emulator_stats(urls[s]) for s in STRATEGIES}
    for scenario in only:
        results[scenario] = {
            s: summarise(ids[scenario, s], outcome, stats[s]) for s in STRATEGIES
        }

    print(f"Polling over {len(only)} timing scenarios, {n} tasks per scenario and strategy,"
          f" {latency * 1000:.0f} ms per request, clock x{speed}, seed {seed} ({machine()};"
          f" {time.perf_counter() - started:.0f} s)")
    print("Times in API seconds. x1s: the ratio to the fixed 1-s loop on the same tasks.\n")
    rows: list[list[object]] = []
    ratios: dict[str, list[float]] = {"polls": [], "p95": [], "fail95": []}
    for scenario in only:
        base = results[scenario]["fixed 1 s"]
        for strategy in STRATEGIES:
            r = results[scenario][strategy]
            rows.append([scenario if strategy == STRATEGIES[0] else "", strategy, r["polls"],
                         r["p50"], r["p95"], r["max"],
                         r["fail95"] if r["failures"] else "-",
                         ratio(r["polls"], base["polls"]), ratio(r["p95"], base["p95"]),
                         ratio(r["fail95"], base["fail95"]) if r["failures"] else "-"])
        sdk = results[scenario]["apimart_async"]
        ratios["polls"].append(ratio(sdk["polls"], base["polls"]))
        ratios["p95"].append(ratio(sdk["p95"], base["p95"]))
        if sdk["failures"]:
            ratios["fail95"].append(ratio(sdk["fail95"], base["fail95"]))
    headers = ["scenario", "strategy", "polls/task", "lag p50", "lag p95", "lag max",
               "fail lag p95", "polls x1s", "lag p95 x1s", "fail p95 x1s"]
    print(table(headers, rows))

    def pick(values: list[float], how: str) -> float | str:
        clean = [v for v in values if v == v]
        if not clean:
            return "-"
        return max(clean) if how == "worst" else statistics.median(clean)

    print()
    print(table(["apimart_async vs the 1-s loop", "polls x1s", "lag p95 x1s", "fail p95 x1s"], [
        ["worst scenario", pick(ratios["polls"], "worst"), pick(ratios["p95"], "worst"),
         pick(ratios["fail95"], "worst")],
        ["median scenario", pick(ratios["polls"], "median"), pick(ratios["p95"], "median"),
         pick(ratios["fail95"], "median")],
    ]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100, help="tasks per scenario and strategy")
    parser.add_argument("--speed", type=float, default=4.0, help="clock compression")
    parser.add_argument("--latency", type=float, default=0.02, help="API seconds per request")
    parser.add_argument("--seed", type=int, default=7, help="the emulators' seed (the tasks)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset of: " + ", ".join(SCENARIOS)
                        + "; or the extra " + ", ".join(EXTRA))
    args = parser.parse_args()
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS and s not in EXTRA]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    # "name+" is a session's next batch of name's model: alone it would measure a fresh
    # session (nothing learned yet), so name runs first in the same session.
    ordered: list[str] = []
    for name in chosen:
        first = name.rstrip("+")
        if name.endswith("+") and first not in ordered:
            print(f"--scenarios {name}: running {first} first (a later batch needs one before)")
            ordered.append(first)
        if name not in ordered:
            ordered.append(name)
    chosen = ordered
    anyio.run(main, args.tasks, args.speed, args.latency, chosen, args.seed)
