"""Telling a command-line user at once that the API host does not answer.

A dead or unreachable host would otherwise mean several seconds of silence while the
transport retries (6-7 s with the default policy). The session's hooks say when an
attempt got no answer; a one-second watch covers a host that does not even refuse.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO
from urllib.parse import urlsplit

import anyio

from .._core.hooks import Hooks, RequestEvent, RetryEvent

__all__ = ["ConnectNotice"]

# Real seconds without any answer before the user is told.
FIRST_ANSWER_WITHIN = 1.0


class ConnectNotice:
    """One line on stderr, at most once per command, while the API host has not answered:
    at the first retry of an attempt that got no answer, or after `FIRST_ANSWER_WITHIN`
    seconds without any answer. Nothing once the host has answered anything."""

    def __init__(self, *, stream: TextIO | None = None) -> None:
        self.base_url = ""
        self._stream = stream
        self.answered = False
        self.told = False
        self.hooks = Hooks(on_request=self._on_request, on_retry=self._on_retry)

    def _on_request(self, event: RequestEvent) -> None:
        if event.status is not None:
            self.answered = True

    def _on_retry(self, event: RetryEvent) -> None:
        if event.status is None and not self.answered:
            self._tell("cannot connect to {host} yet ({error}); retrying", event.error)

    def _tell(self, template: str, error: str = "") -> None:
        if self.told or self.answered:
            return
        self.told = True
        host = urlsplit(self.base_url).netloc or self.base_url or "the API host"
        line = template.format(host=host, error=error)
        print(f"apimart-async: {line} (Ctrl-C to stop)", file=self._stream or sys.stderr,
              flush=True)

    async def watch(self, sent: Callable[[], bool] | None = None) -> None:
        """Run beside the command: tell the user if nothing answered within a second of
        the first request going out (`sent()` says whether one has; None: at once). A
        batch may first open its journal (a database that does not answer is not the
        API host). A slow host that is connected reads the same: still waiting, which
        is true."""
        if sent is not None:
            # (No hook tells when a request starts, only when it ended: look.)
            while not sent():  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await anyio.sleep(FIRST_ANSWER_WITHIN)
        self._tell(f"no answer from {{host}} after {FIRST_ANSWER_WITHIN:g}s; still waiting")
