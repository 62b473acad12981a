"""Helpers for the benchmarks: an emulator in its own process, stats, tables."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from typing import Any

import aiohttp

from apimart_async.testing import emulator_process

__all__ = ["emulator_process", "emulator_stats", "machine", "percentile", "table"]


async def emulator_stats(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(base_url + "/_emulator/stats") as r:
        data: dict[str, Any] = await r.json()
        return data


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores"
