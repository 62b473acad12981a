"""The poll policy replayed against the emulator's timing model: no HTTP, no clock, no noise.

`bench_polling.py` measures the real poller over real sockets on a compressed clock,
which a busy machine distorts (the 1-s loop's own lag p95 moves by a third). This
replays the same pure pieces the poller runs (`observe`, `next_delay`, `ModelStats`,
and the re-planning of a model's rendering tasks after its first failure) against the
emulator's own task plans and `task_state`, with a fixed latency per poll, so a policy
change shows in figures that only the seeds move. Each scenario is a fresh session
(``name+``: the session's next batch of that model), 100 tasks submitted at once,
side by side with a 1-s loop on the same tasks.

    python benchmarks/sim_polling.py [--tasks 100] [--seeds 1-8] [--scenarios a,b]

The default scenarios are the matrix's but `mix`; `--scenarios` also takes the extra
queue-30-60, queue-30-60+, realistic+ and hostile+.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
from collections.abc import Callable, Iterable

from _common import table

from apimart_async import PollPolicy, Task, TaskStatus
from apimart_async._core.polling import ModelStats, PollState, next_delay, observe
from apimart_async.testing import PROFILES
from apimart_async.testing._tasks import TaskPlan, task_state

LATENCY = 0.02
SCENARIOS = ["linear", "pending-15", "pending-30-60", "queue-2-10", "s-curve", "long-tail",
             "stall-99", "no-progress", "fail-10", "fail-10+", "minutes", "steps-10",
             "realistic", "hostile"]
EXTRA = ["queue-30-60", "queue-30-60+", "realistic+", "hostile+"]
_STATUS = {"pending": TaskStatus.PENDING, "processing": TaskStatus.PROCESSING,
           "completed": TaskStatus.COMPLETED, "failed": TaskStatus.FAILED}


def plans(profile: str, seed: int, first: int, n: int) -> list[TaskPlan]:
    """The emulator's plans for tasks first..first+n-1 of model `profile`."""
    return [TaskPlan(**PROFILES[profile].draw(random.Random(f"{seed}:{profile}:{i}")))
            for i in range(first, first + n)]


def answer(plan: TaskPlan, t: float) -> Task:
    status, progress = task_state(plan, t)
    estimate = plan.estimated_time if plan.estimated_time is not None else plan.duration
    return Task(id="t", status=_STATUS[status], raw_status=status, progress=progress,
                estimated_time=max(1, round(estimate)))


Outcome = tuple[list[int], list[float], list[bool]]
"""Polls per task, detection lag per task, failed per task."""


def run_policy(tasks: list[TaskPlan], stats: ModelStats, policy: PollPolicy) -> Outcome:
    """Every task submitted at 0, polled as the poller would, learning into `stats`."""
    states = [PollState(started_at=0.0) for _ in tasks]
    heap = [(next_delay(policy, s, 0.0, stats if stats.ended else None), i)
            for i, s in enumerate(states)]
    heapq.heapify(heap)
    due = {i: t for t, i in heap}
    rendering: set[int] = set()
    polls, lags, failed = [0] * len(tasks), [math.nan] * len(tasks), [False] * len(tasks)
    while heap:
        sent, i = heapq.heappop(heap)
        if due.get(i) != sent:
            continue  # re-planned
        polls[i] += 1
        seen = sent + LATENCY / 2  # the server answers half-way through the request
        got = answer(tasks[i], seen)
        now = sent + LATENCY
        observe(states[i], now, got)
        if got.is_terminal:
            del due[i]
            rendering.discard(i)
            lags[i], failed[i] = seen - tasks[i].duration, got.status is TaskStatus.FAILED
            warned = stats.fails_mid_run
            stats.learn(states[i], now, got)
            if stats.fails_mid_run and not warned:  # Poller._tighten
                for j in rendering:
                    if due[j] > now + policy.failure_interval:
                        due[j] = now + policy.failure_interval
                        heapq.heappush(heap, (due[j], j))
            continue
        (rendering.add if got.status is TaskStatus.PROCESSING else rendering.discard)(i)
        if states[i].top_reads == 2:
            stats.note(states[i])
        due[i] = now + next_delay(policy, states[i], now, stats)
        heapq.heappush(heap, (due[i], i))
    return polls, lags, failed


def run_loop(tasks: list[TaskPlan], interval: float = 1.0) -> Outcome:
    """Submit, then sleep `interval` and poll, until the task has ended."""
    polls, lags, failed = [], [], []
    for plan in tasks:
        t, k = 0.0, 0
        while True:
            t, k = t + interval, k + 1
            status, _ = task_state(plan, t + LATENCY / 2)
            if status in ("completed", "failed"):
                break
            t += LATENCY
        polls.append(k)
        lags.append(t + LATENCY / 2 - plan.duration)
        failed.append(status == "failed")
    return polls, lags, failed


def p95(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def ratios(sdk: Outcome, loop: Outcome) -> tuple[float, float, float]:
    """(polls, completion lag p95, failure lag p95), each as a ratio to the loop's."""
    def lag(o: Outcome, fail: bool) -> float:
        return p95([x for x, f in zip(o[1], o[2], strict=True) if f is fail])

    fail = lag(sdk, True) / lag(loop, True) if any(sdk[2]) else math.nan
    return sum(sdk[0]) / sum(loop[0]), lag(sdk, False) / lag(loop, False), fail


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seeds", default="1-8", help="a range (1-8) or a list (1,7)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, of: " + ", ".join(SCENARIOS + EXTRA))
    args = parser.parse_args()
    if "-" in args.seeds:
        low, high = map(int, args.seeds.split("-"))
        seeds = list(range(low, high + 1))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
    chosen = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in chosen if s not in SCENARIOS + EXTRA]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    policy, n = PollPolicy(), args.tasks
    rows: list[list[object]] = []
    summary: dict[str, list[tuple[float, float, float]]] = {}
    for name in chosen:
        model = name.rstrip("+")
        per_seed = []
        for seed in seeds:
            stats = ModelStats()
            first = 0
            if name.endswith("+"):  # the session's earlier batch of this model
                run_policy(plans(model, seed, 0, n), stats, policy)
                first = n
            tasks = plans(model, seed, first, n)
            per_seed.append(ratios(run_policy(tasks, stats, policy), run_loop(tasks)))
        summary[name] = per_seed

        def clean(k: int, values: list[tuple[float, float, float]] = per_seed) -> list[float]:
            return [v[k] for v in values if not math.isnan(v[k])]

        rows.append([name, statistics.mean(clean(0)), max(clean(0)),
                     statistics.mean(clean(1)), max(clean(1)),
                     statistics.mean(clean(2)) if clean(2) else "-",
                     max(clean(2)) if clean(2) else "-"])
    print(f"Poll policy replayed (no HTTP), {n} tasks per scenario, seeds {args.seeds},"
          f" {LATENCY * 1000:.0f} ms per request; ratios to a 1-s loop on the same tasks\n")
    print(table(["scenario", "polls x1s mean", "polls x1s worst", "lag p95 x1s mean",
                 "lag p95 x1s worst", "fail p95 x1s mean", "fail p95 x1s worst"], rows))
    means = {k: [statistics.mean(v[k] for v in per if not math.isnan(v[k])) if any(
        not math.isnan(v[k]) for v in per) else math.nan for per in summary.values()]
        for k in range(3)}
    print()

    def over(figure: Callable[[list[float]], float], values: Iterable[float]) -> float | str:
        # A figure no chosen scenario has (no failures: no failure lag) is "n/a".
        known = [x for x in values if not math.isnan(x)]
        return figure(known) if known else "n/a"

    print(table(["over the scenarios (seed means)", "polls x1s", "lag p95 x1s",
                 "fail p95 x1s"], [
        ["median", *(over(statistics.median, means[k]) for k in range(3))],
        ["worst", *(over(max, means[k]) for k in range(3))],
        ["worst seed of the worst", *(over(max, (v[k] for per in summary.values()
                                                 for v in per)) for k in range(3))],
    ]))


if __name__ == "__main__":
    main()
