"""What the emulator saw: counters for tests and benchmarks to check the client by."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import attrs

from ._faults import Fault

__all__ = ["EmulatorStats", "RequestLog", "RequestRecord", "stats_dict"]


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


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One request the emulator answered (or dropped), as `Emulator.request_log` keeps it.

    - `route`: ``submit``, ``task``, ``download`` or ``balance``; None for a path the
      hosts do not serve (answered 404).
    - `method`, `path`: the request line's method and path (without the query string,
      which holds the file host's link token).
    - `status`: the HTTP status answered; None when the connection was dropped before an
      answer (`Fault.reset`, `Fault.lost_answer`) or the client went away; 500 when a
      `planner` raised (aiohttp answers 500). A `Fault.cut`
      download keeps its 200/206: the head was sent, the body cut short.
    - `fault`: the injected (or randomly drawn) `Fault` this request met, if any.
    - `authorization`: whether an ``Authorization`` header came (never its value).
    - `idempotency_key`: the ``Idempotency-Key`` header, if any.
    - `range`: the ``Range`` header, if any.
    - `time`: when it arrived, on the emulator's clock (API seconds, `Clock.now`).
    - `accept_encoding`: the ``Accept-Encoding`` header, if any.
    - `request_id`: the ``x-request-id`` the API host answered with (every answer has
      one); None on the file host and when no answer was sent.
    """

    route: str | None
    method: str
    path: str
    status: int | None
    fault: Fault | None
    authorization: bool
    idempotency_key: str | None
    range: str | None
    time: float
    accept_encoding: str | None = None
    request_id: str | None = None


class RequestLog:
    """The last `maxlen` requests, oldest first (a ring: older ones fall off)."""

    def __init__(self, maxlen: int) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=maxlen)

    def append(self, record: RequestRecord) -> None:
        """Keep `record` (dropping the oldest when full)."""
        self._records.append(record)

    def snapshot(self) -> tuple[RequestRecord, ...]:
        """The records kept, oldest first."""
        return tuple(self._records)

    def clear(self) -> None:
        """Forget every record."""
        self._records.clear()
