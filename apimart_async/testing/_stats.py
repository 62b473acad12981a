"""What the emulator saw: counters for tests and benchmarks to check the client by."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

__all__ = ["EmulatorStats", "stats_dict"]


@attrs.define
class EmulatorStats:
    """What the emulator saw. Times are API seconds."""

    submissions: int = 0
    duplicate_submissions: int = 0
    rejected_submissions: int = 0
    polls: Counter[str] = attrs.field(factory=Counter)
    requests: Counter[str] = attrs.field(factory=Counter)
    rate_limited: int = 0
    faults_injected: Counter[str] = attrs.field(factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    credential_leaks: int = 0
    downloads: int = 0
    downloads_in_flight: int = 0
    peak_downloads_in_flight: int = 0
    range_requests: int = 0
    if_range_headers: list[str | None] = attrs.field(factory=list)
    detection_lags: dict[str, float] = attrs.field(factory=dict)
    authorization_headers: list[str] = attrs.field(factory=list)
    idempotency_keys: list[str | None] = attrs.field(factory=list)
    user_agents: Counter[str] = attrs.field(factory=Counter)


def stats_dict(stats: EmulatorStats) -> dict[str, Any]:
    """`stats` as JSON-ready data: the lists of headers become counts (never the values)."""
    data = attrs.asdict(stats)
    data["authorization_headers"] = len(stats.authorization_headers)
    data["idempotency_keys"] = len(stats.idempotency_keys)
    data["if_range_headers"] = len(stats.if_range_headers)
    return data
