"""Injected faults: what can go wrong on each route, and the queue that hands them out.

Each fault says on which routes it has an effect (`Fault.routes`); `inject` refuses it
anywhere else, so a test cannot pass because its fault was silently used up where it
does nothing.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from typing import Literal

import attrs

__all__ = ["Fault", "FaultQueue", "Route"]

Route = Literal["submit", "task", "download", "balance"]
ROUTES: tuple[Route, ...] = ("submit", "task", "download", "balance")

_EVERY_ROUTE = frozenset(ROUTES)
_ROUTES_OF_KIND: dict[str, frozenset[str]] = {
    "status": _EVERY_ROUTE,
    "reset": _EVERY_ROUTE,
    "html": _EVERY_ROUTE,
    "redirect": _EVERY_ROUTE,
    "slow": _EVERY_ROUTE,
    "lost_answer": frozenset({"submit"}),
    "created_with_error": frozenset({"submit"}),
    "cut": frozenset({"download"}),
    "ignore_range": frozenset({"download"}),
    "short_range": frozenset({"download"}),
    "wrong_range": frozenset({"download"}),
    "gzip": frozenset({"download", "task"}),
    "endless": frozenset({"download"}),
    "drip": frozenset({"download"}),
    "cut_unframed": frozenset({"download"}),
    "result_url": frozenset({"task"}),
    "answer_id": frozenset({"task"}),
    "echo_key": frozenset({"task"}),
    "huge_answer": frozenset({"task"}),
    "task_status": frozenset({"task"}),
    "repeat_id": frozenset({"submit"}),
    # The API host's gateway refuses everything: the file host is another host.
    "storm": frozenset({"submit", "task", "balance"}),
}
# Faults that act only on a request carrying Range: they wait for one.
_RANGE_KINDS = frozenset({"ignore_range", "short_range", "wrong_range"})


_REDIRECTS = (301, 302, 303, 307, 308)


# What a gzip bomb inflates to unless told: 1 GiB.
_BOMB_INFLATED = 1 << 30


def _check_int(name: str, value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be {what} ({low}..{high}), got {value!r}")
    return value


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_fraction(name: str, value: object) -> float:
    # 1.0 (or more) would send everything asked for: the fault would do nothing.
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 <= value < 1):
        raise ValueError(f"{name} must be >= 0 and < 1 (the share of the bytes sent), "
                         f"got {value!r}")
    return float(value)


@attrs.frozen(kw_only=True)
class Fault:
    """One injected fault, used once. Build with the class methods."""

    kind: Literal[
        "status", "reset", "html", "lost_answer", "cut", "ignore_range", "slow", "redirect",
        "short_range", "wrong_range", "gzip", "endless", "drip", "cut_unframed",
        "result_url", "answer_id", "echo_key", "huge_answer", "task_status", "repeat_id",
        "storm", "created_with_error",
    ]
    status: int = 500
    location: str = ""
    retry_after: str | None = None
    body_code: int | None = None
    fraction: float = 0.5
    seconds: float = 0.0
    hard: bool = False
    value: str = ""

    @property
    def routes(self) -> frozenset[str]:
        """The routes on which this fault has an effect (`Emulator.inject` refuses others)."""
        return _ROUTES_OF_KIND[self.kind]

    @property
    def needs_range(self) -> bool:
        """True for faults that act only on a request with a ``Range`` header: such a fault
        waits in its queue until a download asks for a range."""
        return self.kind in _RANGE_KINDS

    def describe(self) -> str:
        """The fault as the class method call that builds it, e.g. ``Fault.http(503)``."""
        if self.kind == "status":
            if self.body_code is not None:
                return f"Fault.body_status({self.body_code})"
            extra = f", retry_after={self.retry_after!r}" if self.retry_after is not None else ""
            extra += ", echo_key=True" if self.hard else ""
            return f"Fault.http({self.status}{extra})"
        if self.kind in ("cut", "short_range"):
            return f"Fault.{self.kind}({self.fraction})"
        if self.kind == "storm":
            extra = f", retry_after={self.retry_after!r}" if self.retry_after != "1" else ""
            return f"Fault.storm({self.seconds}{extra})"
        if self.kind in ("slow", "drip"):
            return f"Fault.{self.kind}({self.seconds})"
        if self.kind == "cut_unframed":
            return f"Fault.cut_unframed({self.fraction})"
        if self.kind == "gzip":
            if not self.hard:
                return "Fault.gzip()"
            if self.status != _BOMB_INFLATED:
                return f"Fault.gzip(bomb=True, inflated={self.status})"
            return "Fault.gzip(bomb=True)"
        if self.kind in ("result_url", "answer_id"):
            return f"Fault.{self.kind}({self.value!r})"
        if self.kind == "huge_answer":
            return f"Fault.huge_answer({self.status}{', framed=True' if self.hard else ''})"
        if self.kind == "task_status":
            return f"Fault.task_status({None if self.hard else self.value!r})"
        if self.kind == "html":
            return f"Fault.html({self.status})"
        if self.kind == "redirect":
            return f"Fault.redirect({self.location!r}, {self.status})"
        if self.kind in ("reset", "lost_answer") and self.hard:
            return f"Fault.{self.kind}(hard=True)"
        return f"Fault.{self.kind}()"

    @classmethod
    def http(
        cls, status: int, *, retry_after: str | None = None, echo_key: bool = False
    ) -> Fault:
        """Answer with `status` (an error status, 400..599) and a JSON error body (and
        `Retry-After` if given). With `echo_key`, the answer echoes the request's bearer
        token in its message, in a header's value and in a header's name (a gateway
        that leaks whatever it is sent: a client must scrub it everywhere)."""
        _check_int("Fault.http: status", status, 400, 599, "an error status")
        if retry_after is not None and not isinstance(retry_after, str):
            raise ValueError(f"Fault.http: retry_after must be the header's text (a str), "
                             f"got {retry_after!r}")
        _check_bool("Fault.http: echo_key", echo_key)
        return cls(kind="status", status=status, retry_after=retry_after, hard=echo_key)

    @classmethod
    def body_status(cls, code: int) -> Fault:
        """Answer HTTP 200 with an error `code` (400..599) in the body."""
        _check_int("Fault.body_status: code", code, 400, 599, "an error code")
        return cls(kind="status", status=200, body_code=code)

    @classmethod
    def reset(cls, *, hard: bool = False) -> Fault:
        """Drop the connection after reading the request, before acting on it.

        `hard` sends a TCP RST (as a crashed proxy does) instead of closing in order:
        the client then meets ECONNRESET, which aiohttp raises as a bare `ClientOSError`.
        """
        return cls(kind="reset", hard=hard)

    @classmethod
    def html(cls, status: int = 200) -> Fault:
        """Answer with a gateway's HTML page under `status` (200..599)."""
        _check_int("Fault.html: status", status, 200, 599, "a status with a body")
        return cls(kind="html", status=status)

    @classmethod
    def lost_answer(cls, *, hard: bool = False) -> Fault:
        """Submission only: create (and bill) the task, then drop the connection
        (with a TCP RST if `hard`, see `reset`)."""
        return cls(kind="lost_answer", hard=hard)

    @classmethod
    def created_with_error(cls) -> Fault:
        """Submission only: create (and bill) the task, then answer 200 with its id and an
        ``error`` object beside it (a gateway reporting a failure of its own): a client
        must not take the task for a rejected one."""
        return cls(kind="created_with_error")

    @classmethod
    def cut(cls, fraction: float = 0.5) -> Fault:
        """Download only: send `fraction` (>= 0, < 1) of the body, then drop the connection."""
        _check_fraction("Fault.cut: fraction", fraction)
        return cls(kind="cut", fraction=fraction)

    @classmethod
    def ignore_range(cls) -> Fault:
        """Download only: answer a Range request with the whole file (200)."""
        return cls(kind="ignore_range")

    @classmethod
    def short_range(cls, fraction: float = 0.5) -> Fault:
        """Download only: answer a Range request with a valid 206 for only the first
        `fraction` (>= 0, < 1; at least one byte) of the bytes asked for (a host may
        serve less than asked)."""
        _check_fraction("Fault.short_range: fraction", fraction)
        return cls(kind="short_range", fraction=fraction)

    @classmethod
    def wrong_range(cls) -> Fault:
        """Download only: answer a Range request with a 206 of the length asked for but
        from offset 0, not the offset asked for (a broken cache); Content-Range says so."""
        return cls(kind="wrong_range")

    @classmethod
    def redirect(cls, location: str, status: int = 307) -> Fault:
        """Answer with a redirect (`status` 301, 302, 303, 307 or 308) to `location` (a
        client must not follow it with its key)."""
        if not isinstance(location, str) or not location:
            raise ValueError(f"Fault.redirect: location must be a non-empty URL, got {location!r}")
        if isinstance(status, bool) or status not in _REDIRECTS:
            raise ValueError("Fault.redirect: status must be a redirect status "
                             f"(301, 302, 303, 307 or 308), got {status!r}")
        return cls(kind="redirect", status=status, location=location)

    @classmethod
    def gzip(cls, *, bomb: bool = False, inflated: int = _BOMB_INFLATED) -> Fault:
        """Send the body gzip-encoded (``Content-Encoding: gzip``) whatever the request
        accepted; with `bomb`, a body that inflates to `inflated` bytes (whole MiB;
        default 1 GiB from ~1 MB; 256 MiB from ~270 KB, under a client's cap for what
        it reads on the wire). On the download route the body is the video; on the task
        route, the task answer's JSON."""
        _check_bool("Fault.gzip: bomb", bomb)
        # 16 GiB inflated is ~16 MB built in memory: as far as a test needs to go.
        _check_int("Fault.gzip: inflated", inflated, 1 << 20, 1 << 34, "a size in bytes")
        if inflated % (1 << 20):
            raise ValueError(f"Fault.gzip: inflated must be whole MiB, got {inflated!r}")
        if not bomb and inflated != _BOMB_INFLATED:
            raise ValueError("Fault.gzip: inflated sizes a bomb: pass bomb=True with it")
        return cls(kind="gzip", hard=bomb, status=inflated)

    @classmethod
    def endless(cls) -> Fault:
        """Download only: a 200 with a video's first bytes, no length, and a body that
        never ends (until the client hangs up)."""
        return cls(kind="endless")

    @classmethod
    def drip(cls, seconds: float = 1.0) -> Fault:
        """Download only: announce the whole file, then send one byte every `seconds` of
        the emulator's clock (API seconds), never stopping."""
        return cls(kind="drip", seconds=seconds)

    @classmethod
    def cut_unframed(cls, fraction: float = 0.5) -> Fault:
        """Download only: a 200 with neither ``Content-Length`` nor chunked framing, then
        `fraction` of the body and a closed connection: looks complete unless the client
        demands a length."""
        return cls(kind="cut_unframed", fraction=fraction)

    @classmethod
    def result_url(cls, url: str) -> Fault:
        """Task only: the answer is the completed task with `url` as its video link
        (``file:///etc/passwd``, ``http://169.254.169.254/...``: an SSRF attempt)."""
        return cls(kind="result_url", value=url)

    @classmethod
    def answer_id(cls, task_id: str) -> Fault:
        """Task only: the answer's ``id`` is `task_id` (e.g. ``../../x``), not the id asked for."""
        return cls(kind="answer_id", value=task_id)

    @classmethod
    def huge_answer(cls, size: int = 100 << 20, *, framed: bool = False) -> Fault:
        """Task only: the answer is the task's JSON padded with spaces to `size` bytes,
        streamed without ``Content-Length`` (a client must stop reading at its cap), or
        with `framed`, stating its length up front (a client can refuse it unread)."""
        # Under 64 KiB the "huge" answer would be an ordinary one: the fault would do
        # nothing a client must bound.
        _check_int("Fault.huge_answer: size", size, 1 << 16, 1 << 40, "a size in bytes")
        _check_bool("Fault.huge_answer: framed", framed)
        return cls(kind="huge_answer", status=size, hard=framed)

    @classmethod
    def task_status(cls, status: str | None) -> Fault:
        """Task only: the answer's ``status`` is `status` (None sends JSON null)."""
        return cls(kind="task_status", value=status or "", hard=status is None)

    @classmethod
    def repeat_id(cls) -> Fault:
        """Submit only: create nothing and answer with the task id of the previous
        submission (two requests get one task id back). With no submission before
        it, it has nothing to repeat: the request creates a task as usual."""
        return cls(kind="repeat_id")

    @classmethod
    def echo_key(cls) -> Fault:
        """Task only: the answer is a failed task whose ``error.message`` echoes the
        request's Authorization header (the SDK must scrub it everywhere)."""
        return cls(kind="echo_key")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait `seconds` (> 0, finite) of real time before answering normally."""
        if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                or not math.isfinite(seconds) or seconds <= 0):
            raise ValueError(f"Fault.slow: seconds must be a finite number > 0, got {seconds!r}")
        return cls(kind="slow", seconds=seconds)

    @classmethod
    def storm(cls, seconds: float, *, retry_after: str | None = "1") -> Fault:
        """API host only: answer this request, and every request to the API host for the
        next `seconds` (> 0, finite) of the emulator's clock, 429 with `Retry-After`
        (None: no header), before its rate limit is consulted (a gateway refusing all
        traffic for a while; its bucket keeps refilling)."""
        if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                or not math.isfinite(seconds) or seconds <= 0):
            raise ValueError(f"Fault.storm: seconds must be a finite number > 0, got {seconds!r}")
        if retry_after is not None and not isinstance(retry_after, str):
            raise ValueError(f"Fault.storm: retry_after must be the header's text (a str) "
                             f"or None, got {retry_after!r}")
        return cls(kind="storm", seconds=float(seconds), retry_after=retry_after)


RANDOM_FAULTS: dict[str, tuple[Fault, ...]] = {
    "submit": (Fault.http(429, retry_after="1"), Fault.http(503)),
    "task": (Fault.http(500), Fault.http(502), Fault.reset(), Fault.html(200)),
    "download": (Fault.cut(0.5),),
    "balance": (Fault.http(500), Fault.http(502), Fault.reset()),
}
"""What `EmulatorConfig`'s ``submit_faults``, ``poll_faults`` and ``download_faults`` draw
(``poll_faults`` also on the balance route)."""


class FaultQueue:
    """The faults waiting on each route, then random ones drawn at configured rates."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._queues: dict[str, deque[Fault]] = {route: deque() for route in ROUTES}

    def inject(self, route: Route, *faults: Fault) -> None:
        """Queue `faults` for the next requests on `route`, one each, in order.

        Refuses (ValueError, nothing queued) a fault that would have no effect on `route`.
        """
        if route not in self._queues:
            raise ValueError(
                f"route must be 'submit', 'task', 'download' or 'balance', got {route!r}")
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"faults must be Fault objects (see Fault.http(...)), "
                                f"got {fault!r}")
            if route not in fault.routes:
                accepted = " and ".join(repr(r) for r in ROUTES if r in fault.routes)
                raise ValueError(
                    f"{fault.describe()} has no effect on route {route!r}; "
                    f"it acts on {accepted} only"
                )
        self._queues[route].extend(faults)

    def pending(self, route: Route) -> int:
        """How many injected faults on `route` are still unused."""
        return len(self._queues[route])

    def next(
        self, route: Route, random_kinds: Iterable[Fault], rate: float, *, ranged: bool = False
    ) -> Fault | None:
        """The fault for this request on `route`: the next injected one, else a random
        draw from `random_kinds` with probability `rate`, else None.

        An injected fault that needs a Range request waits (with those behind it) until
        one comes: `ranged` says whether this request is one.
        """
        queue = self._queues[route]
        if queue:
            if queue[0].needs_range and not ranged:
                return None
            fault = queue.popleft()
        elif rate and self._rng.random() < rate:
            choices = list(random_kinds)
            fault = choices[self._rng.randrange(len(choices))]
        else:
            return None
        return fault
