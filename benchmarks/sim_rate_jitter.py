"""Rate-limited batches in a pure model with the network's jitter: no HTTP, no clock.

`bench_rate_limit.py` runs the real session against the emulator's token bucket, where
how late the event loop wakes and how late the server reads a request are whatever the
machine does that minute; a bucket of one token has no spare token to absorb either,
so its figures move with the load. This drives the session's pure pacing policy
(`RateLearner`) against a model token bucket with lateness drawn from a seeded
distribution, so a policy change shows in figures only the seeds move.

Each request's lateness is exponential (mean `--jitter-ms`), plus `--hiccup-ms` for a
share `--hiccup-share` of requests (a descheduled process); the client sees half of it
(its wake from the pacing sleep, reported with `RateLearner.sent`), the rest happens
between its send and the server's reading of the request. Printed per rate, burst and
mode (given: ``rps`` and ``burst`` told; learned: nothing told): the makespan over the
floor ``(N - burst) / rate`` and the 429s, worst and median over the seeds.

    python benchmarks/sim_rate_jitter.py [--requests 300] [--seeds 8]
        [--pairs 10:1,20:1,50:1,20:10,50:30] [--jitter-ms 0.4] [--hiccup-ms 4]
        [--hiccup-share 0.01] [--no-sent]

``--no-sent`` leaves out the late-wake report, for the before/after of that change.
"""

from __future__ import annotations

import argparse
import random
import statistics

from _common import table

from apimart_async._core.pacing import RateLearner
from apimart_async.testing._ratelimit import TokenBucket


class Bucket:
    """The server: the emulator's own `TokenBucket` (full at 0), read at the times the
    model says."""

    def __init__(self, rate: float, burst: int) -> None:
        self.now = 0.0
        self._bucket = TokenBucket(rate, burst, clock=lambda: self.now)

    def take(self, now: float) -> bool:
        self.now = now
        return self._bucket.take() is None


def run(rate: float, burst: int, n: int, given: bool, seed: int,
        args: argparse.Namespace) -> tuple[float, int]:
    """One batch of `n`: (makespan over the floor, 429s)."""
    rng = random.Random(seed)
    learner = RateLearner(rate=rate if given else None, burst=burst if given else None,
                          max_window=32)
    server = Bucket(rate, burst)
    now, done, throttled = 0.0, 0, 0
    while done < n:
        wave = [learner.claim(now) for _ in range(min(learner.window or 1, n - done))]
        for start, ticket, _ in wave:
            now = max(now, start)
            late = rng.expovariate(1000 / args.jitter_ms)
            if rng.random() < args.hiccup_share:
                late += args.hiccup_ms / 1000
            woke = now + late / 2
            if args.sent:
                learner.sent(ticket, woke)
            arrived = woke + late / 2
            if server.take(arrived):
                learner.on_accepted(ticket, arrived)
                done += 1
            else:
                throttled += 1
                learner.on_throttled(ticket, arrived, 1.0)
            now = max(now, woke)
    return now / ((n - burst) / rate), throttled


def main(args: argparse.Namespace) -> None:
    rows = []
    for rate, burst in args.pairs:
        for given in (True, False):
            runs = [run(rate, burst, args.requests, given, seed, args)
                    for seed in range(1, args.seeds + 1)]
            ratios = [r for r, _ in runs]
            hits = [t for _, t in runs]
            rows.append(["given" if given else "learned", f"{rate:g}/s", burst,
                         f"{max(ratios):.3f}", f"{statistics.median(ratios):.3f}",
                         max(hits), statistics.median(hits)])
    print(f"{args.requests} requests; lateness exponential, mean {args.jitter_ms} ms, plus"
          f" {args.hiccup_ms} ms for {args.hiccup_share:.0%} of requests; half seen by the"
          f" client{'' if args.sent else ' (not reported: --no-sent)'}; {args.seeds} seeds")
    print(table(["limit", "rate", "burst", "makespan / floor (worst)", "(median)",
                 "429s (worst)", "(median)"], rows))


def parse_pairs(text: str) -> list[tuple[float, int]]:
    out = []
    for part in text.split(","):
        rate, _, burst = part.partition(":")
        try:
            pair = (float(rate), int(burst))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not RATE:BURST") from None
        if not (pair[0] > 0 and pair[0] < float("inf")) or pair[1] < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: the rate must be > 0, the burst >= 1")
        out.append(pair)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--pairs", type=parse_pairs,
                   default=parse_pairs("10:1,20:1,50:1,20:10,50:30"))
    p.add_argument("--jitter-ms", type=float, default=0.4)
    p.add_argument("--hiccup-ms", type=float, default=4.0)
    p.add_argument("--hiccup-share", type=float, default=0.01)
    p.add_argument("--no-sent", dest="sent", action="store_false")
    args = p.parse_args()
    if args.seeds < 1 or args.jitter_ms <= 0 or args.hiccup_ms < 0 \
            or not 0 <= args.hiccup_share <= 1:
        p.error("--seeds must be >= 1, --jitter-ms > 0, --hiccup-ms >= 0, --hiccup-share 0..1")
    if any(args.requests <= burst for _, burst in args.pairs):
        p.error("--requests must be more than every burst (the floor is (N - burst) / rate)")
    main(args)
