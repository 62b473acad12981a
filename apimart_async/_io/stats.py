"""`SessionStats`: what a session sent and what it met."""

from __future__ import annotations

import attrs

__all__ = ["SessionStats"]


@attrs.define
class SessionStats:
    """Counters for one session: what it sent and what it met.

    - `requests`: attempts sent to the API host, retries included.
    - `submissions`: tasks created. `get_task_calls`: successful ``get_task`` calls,
      the poller's and the caller's alike.
    - `retries`, `rate_limited` (429 answers met, from the API host or the file host,
      in the status or in the body).
    - `downloads`: files saved whole, one per output (videos and images alike), each
      time one is fetched: downloading the same output again counts again.
      `bytes_downloaded`: the sizes of those files (one resumed from a ``.part`` counts
      whole, not just the bytes fetched this time).
    - `balance_calls`: successful ``balance`` calls (a spend-capped batch reads it too).
    """

    requests: int = 0
    submissions: int = 0
    get_task_calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    downloads: int = 0
    bytes_downloaded: int = 0
    balance_calls: int = 0

    @property
    def polls(self) -> int:
        """The old name of `get_task_calls` (it always counted every get_task)."""
        return self.get_task_calls
