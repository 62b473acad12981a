"""The APIMart emulator: an `aiohttp.web` API host and a separate file host.

It speaks the documented wire format, keeps task time on a (possibly compressed)
`Clock`, injects faults on request, and counts what it saw so tests and benchmarks
can check the client from the server's side.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import secrets
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
from aiohttp import web

from .._io.clock import Clock
from ._profiles import TimingProfile, progress_at, resolve_profile

__all__ = ["Emulator", "EmulatorConfig", "EmulatorStats", "Fault", "Route", "TaskPlan"]

Route = Literal["submit", "task", "download"]
Outcome = Literal["completed", "failed", "cancelled"]


@attrs.frozen(kw_only=True)
class TaskPlan:
    """How one emulated task behaves, in API seconds from its creation.

    The task is ``pending`` for `queue_time`, then renders until `duration`, when it
    ends with `outcome`. Progress runs over `render_time` (default: the time from the
    queue's end to `duration`; longer when the task fails mid-run) in `progress_mode`
    (see `ProgressMode`; `report_progress=False` is mode ``none``).
    """

    duration: float = 6.0
    queue_time: float = 0.0
    estimated_time: float | None = None
    outcome: Outcome = "completed"
    error_code: str = "content_policy_violation"
    error_message: str = "The prompt was rejected by content moderation"
    report_progress: bool = True
    size: int = 64 * 1024
    render_time: float | None = None
    progress_mode: str = "linear"
    stall_at: float = 0.5
    step: int = 10


Planner = Callable[[Mapping[str, Any], int], TaskPlan]


@attrs.frozen(kw_only=True)
class Fault:
    """One injected fault, used once. Build with the class methods."""

    kind: Literal[
        "status", "reset", "html", "lost_answer", "cut", "ignore_range", "slow", "redirect",
        "short_range", "wrong_range",
    ]
    status: int = 500
    location: str = ""
    retry_after: str | None = None
    body_code: int | None = None
    fraction: float = 0.5
    seconds: float = 0.0
    hard: bool = False

    @classmethod
    def http(cls, status: int, *, retry_after: str | None = None) -> Fault:
        """Answer with `status` and a JSON error body (and `Retry-After` if given)."""
        return cls(kind="status", status=status, retry_after=retry_after)

    @classmethod
    def body_status(cls, code: int) -> Fault:
        """Answer HTTP 200 with an error `code` in the body."""
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
        """Answer with a gateway's HTML page under `status`."""
        return cls(kind="html", status=status)

    @classmethod
    def lost_answer(cls, *, hard: bool = False) -> Fault:
        """Submission only: create (and bill) the task, then drop the connection
        (with a TCP RST if `hard`, see `reset`)."""
        return cls(kind="lost_answer", hard=hard)

    @classmethod
    def cut(cls, fraction: float = 0.5) -> Fault:
        """Download only: send `fraction` of the body, then drop the connection."""
        return cls(kind="cut", fraction=fraction)

    @classmethod
    def ignore_range(cls) -> Fault:
        """Download only: answer a Range request with the whole file (200)."""
        return cls(kind="ignore_range")

    @classmethod
    def short_range(cls, fraction: float = 0.5) -> Fault:
        """Download only: answer a Range request with a valid 206 for only the first
        `fraction` of the bytes asked for (a host may serve less than asked)."""
        return cls(kind="short_range", fraction=fraction)

    @classmethod
    def wrong_range(cls) -> Fault:
        """Download only: answer a Range request with a 206 of the length asked for but
        from offset 0, not the offset asked for (a broken cache); Content-Range says so."""
        return cls(kind="wrong_range")

    @classmethod
    def redirect(cls, location: str, status: int = 307) -> Fault:
        """Answer with a redirect to `location` (a client must not follow it with its key)."""
        return cls(kind="redirect", status=status, location=location)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait `seconds` of real time before answering normally."""
        return cls(kind="slow", seconds=seconds)


def _unit(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _profile(_: object, __: object, value: str | TimingProfile) -> None:
    resolve_profile(value)


def _profiles(_: object, __: object, value: Mapping[str, str | TimingProfile]) -> None:
    for profile in value.values():
        resolve_profile(profile)


@attrs.frozen(kw_only=True)
class EmulatorConfig:
    """Knobs for the emulator. Durations are API seconds (see `Clock`); latency is real time.

    - `api_key`: the only key accepted; None accepts any non-empty bearer token.
    - `duration`, `queue_time`: ranges drawn from for each task.
    - `estimate_error`: `estimated_time` is off by up to this fraction either way.
    - `fail_rate`: fraction of tasks that end failed.
    - `latency`: real seconds added to every API answer.
    - `rate_limit`, `burst`: requests per real second the API host allows (429 beyond).
    - `balance`: submissions the account can pay for (402 beyond); None is unlimited.
    - `url_ttl`: how long result links live, in API seconds.
    - `honour_idempotency_key`: answer a repeated `Idempotency-Key` with the first task.
    - `submit_faults`, `poll_faults`, `download_faults`: probabilities of a random fault
      on each such request (429/503 on submission; 5xx, reset or HTML on polling; a cut
      download), drawn from a generator seeded with `seed`.
    - `profile`: how tasks are timed: a `TimingProfile` or a name (``kind``, the default,
      uses `duration`, `queue_time`, `estimate_error` and `fail_rate` above; ``realistic``,
      ``hostile`` and the benchmark scenarios are in `PROFILES`). `profiles` chooses
      one per model (the request's ``model``), falling back to `profile`.
    - `planner`: decides each task's `TaskPlan` from its body and index instead.
    """

    api_key: str | None = None
    duration: tuple[float, float] = (4.0, 8.0)
    queue_time: tuple[float, float] = (0.0, 0.3)
    estimate_error: float = attrs.field(default=0.3, validator=_unit)
    fail_rate: float = attrs.field(default=0.0, validator=_unit)
    latency: float = 0.0
    rate_limit: float | None = None
    burst: int | None = None
    balance: int | None = None
    url_ttl: float = 86400.0
    video_size: int = 64 * 1024
    honour_idempotency_key: bool = False
    submit_faults: float = attrs.field(default=0.0, validator=_unit)
    poll_faults: float = attrs.field(default=0.0, validator=_unit)
    download_faults: float = attrs.field(default=0.0, validator=_unit)
    seed: int = 0
    profile: str | TimingProfile = attrs.field(default="kind", validator=_profile)
    profiles: Mapping[str, str | TimingProfile] = attrs.field(factory=dict, validator=_profiles)
    planner: Planner | None = None


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


@attrs.define
class _Task:
    id: str
    created: float
    created_wall: float
    plan: TaskPlan
    body: Mapping[str, Any]
    idempotency_key: str | None
    token: str
    expires_wall: float
    observed_terminal: bool = False


_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>"
)


def video_bytes(task_id: str, size: int) -> bytes:
    """The deterministic content of a task's video: an MP4 `ftyp` box, then noise."""
    head = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    out = bytearray(head)
    counter = 0
    seed = task_id.encode()
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


class Emulator:
    """The emulator's state and its two `aiohttp.web` applications.

    `api_app()` serves ``/v1/...``; `file_app()` serves the result videos and must be
    reachable at `file_base_url` (set by `EmulatorServer`, or by you).
    """

    def __init__(self, config: EmulatorConfig | None = None, *, clock: Clock | None = None):
        self.config = config or EmulatorConfig()
        self.clock = clock or Clock()
        self.stats = EmulatorStats()
        self.tasks: dict[str, _Task] = {}
        self.file_base_url = "http://127.0.0.1"
        self._rng = random.Random(self.config.seed)
        self._faults: dict[str, deque[Fault]] = {
            "submit": deque(), "task": deque(), "download": deque()
        }
        self._keys: dict[str, str] = {}
        self._balance = self.config.balance
        #: Answer a repeated Idempotency-Key with the first task (settable at run time).
        self.honour_idempotency_key = self.config.honour_idempotency_key
        self._bucket = float(self._burst)
        self._bucket_at = time.monotonic()
        self._videos: dict[str, bytes] = {}
        self._per_model: Counter[str] = Counter()

    # -- controls ---------------------------------------------------------------------

    def inject(self, route: Route, *faults: Fault) -> None:
        """Queue `faults` for the next requests on `route`, one each, in order."""
        if route not in self._faults:
            raise ValueError(f"route must be 'submit', 'task' or 'download', got {route!r}")
        self._faults[route].extend(faults)

    def pending_faults(self, route: Route) -> int:
        """How many injected faults on `route` are still unused."""
        return len(self._faults[route])

    def expire(self, task_id: str) -> None:
        """Expire the task's current link now; the next query hands out a fresh one."""
        task = self.tasks[task_id]
        task.expires_wall = self.clock.wall() - 1

    def set_balance(self, balance: int | None) -> None:
        """Change the account's remaining balance (None: unlimited)."""
        self._balance = balance

    def complete_all(self) -> None:
        """Make every task reach its end now (for tests that do not care about timing)."""
        now = self.clock.now()
        for task in self.tasks.values():
            shift = task.plan.duration - (now - task.created)
            if shift > 0:
                task.created -= shift
                task.created_wall -= shift

    # -- task model -------------------------------------------------------------------

    @property
    def _burst(self) -> int:
        rate = self.config.rate_limit
        return self.config.burst or (max(1, math.ceil(rate)) if rate else 1)

    def _plan(self, body: Mapping[str, Any], index: int) -> TaskPlan:
        if self.config.planner is not None:
            return self.config.planner(body, index)
        model = str(body.get("model", ""))
        profile = self.config.profiles.get(model, self.config.profile)
        if profile != "kind":
            # Seeded per model and per task of that model: the same submissions get the
            # same timings whatever else the emulator is serving.
            nth = self._per_model[model]
            self._per_model[model] += 1
            draw = resolve_profile(profile).draw(random.Random(f"{self.config.seed}:{model}:{nth}"))
            return TaskPlan(size=self.config.video_size, **draw)
        rng = random.Random(f"{self.config.seed}:{index}")
        duration = rng.uniform(*self.config.duration)
        queue = min(rng.uniform(*self.config.queue_time), duration / 2)
        error = self.config.estimate_error
        estimate = duration * (1 + rng.uniform(-error, error))
        failed = rng.random() < self.config.fail_rate
        return TaskPlan(
            duration=duration,
            queue_time=queue,
            estimated_time=estimate,
            outcome="failed" if failed else "completed",
            size=self.config.video_size,
        )

    def status_of(self, task: _Task) -> tuple[str, int]:
        """(status, progress) of `task` now."""
        elapsed = self.clock.now() - task.created
        plan = task.plan
        if elapsed >= plan.duration:
            return plan.outcome, 100 if plan.outcome == "completed" else 0
        if elapsed < plan.queue_time:
            return "pending", 0
        if not plan.report_progress:
            return "processing", 0
        render = plan.render_time
        if render is None:
            render = plan.duration - plan.queue_time
        fraction = (elapsed - plan.queue_time) / max(render, 1e-9)
        return "processing", progress_at(plan.progress_mode, fraction, stall_at=plan.stall_at,
                                         step=plan.step)

    def task_data(self, task: _Task) -> dict[str, Any]:
        """The ``data`` object of ``GET /v1/tasks/{id}`` for `task`."""
        status, progress = self.status_of(task)
        plan = task.plan
        estimate = plan.estimated_time if plan.estimated_time is not None else plan.duration
        data: dict[str, Any] = {
            "id": task.id,
            "status": status,
            "progress": progress,
            "created": int(task.created_wall),
            "estimated_time": max(1, round(estimate)),
            "model": task.body.get("model"),
            "object": "video.generation.task",
            "type": "video",
        }
        if status == "completed":
            if self.clock.wall() >= task.expires_wall:
                # A fresh query hands out a fresh link.
                task.token = secrets.token_hex(8)
                task.expires_wall = self.clock.wall() + self.config.url_ttl
            data["completed"] = int(task.created_wall + plan.duration)
            data["actual_time"] = max(1, round(plan.duration))
            data["result"] = {
                "videos": [
                    {
                        "url": [f"{self.file_base_url}/files/{task.id}.mp4?token={task.token}"],
                        "expires_at": int(task.expires_wall),
                    }
                ]
            }
            data["usage"] = {"credits": 1}
        elif status in ("failed", "cancelled"):
            data["error"] = {"code": plan.error_code, "message": plan.error_message}
        return data

    def video(self, task: _Task) -> bytes:
        """The video file of `task` (deterministic bytes)."""
        if task.id not in self._videos:
            self._videos[task.id] = video_bytes(task.id, task.plan.size)
        return self._videos[task.id]

    # -- helpers ----------------------------------------------------------------------

    def _next_fault(self, route: Route, random_kinds: Iterable[Fault], rate: float) -> Fault | None:
        queue = self._faults[route]
        if queue:
            fault = queue.popleft()
        elif rate and self._rng.random() < rate:
            choices = list(random_kinds)
            fault = choices[self._rng.randrange(len(choices))]
        else:
            return None
        self.stats.faults_injected[f"{route}:{fault.kind}:{fault.status}"] += 1
        return fault

    def _rate_limited(self) -> float | None:
        """None if the request may go; else the seconds until a token is free."""
        rate = self.config.rate_limit
        if not rate:
            return None
        now = time.monotonic()
        self._bucket = min(float(self._burst), self._bucket + (now - self._bucket_at) * rate)
        self._bucket_at = now
        if self._bucket >= 1:
            self._bucket -= 1
            return None
        return (1 - self._bucket) / rate

    def _authorized(self, request: web.Request) -> str | None:
        """The presented key if it is accepted, else None."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if self.config.api_key is not None and token != self.config.api_key:
            return None
        return token

    # -- applications -----------------------------------------------------------------

    def api_app(self) -> web.Application:
        """The API host: ``POST /v1/videos/generations`` and ``GET /v1/tasks/{id}``."""
        app = web.Application(middlewares=[self._api_middleware])
        app.router.add_post("/v1/videos/generations", self._submit)
        app.router.add_get("/v1/tasks/{task_id}", self._get_task)
        app.router.add_get(STATS_PATH, self._stats)
        app.router.add_post(STATS_PATH + "/reset", self._reset_stats)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats_dict())

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.stats = EmulatorStats()
        return web.json_response({"reset": True})

    def stats_dict(self) -> dict[str, Any]:
        """`stats` as JSON-ready data (also served at ``GET /_emulator/stats``)."""
        data = attrs.asdict(self.stats)
        data["authorization_headers"] = len(self.stats.authorization_headers)
        data["idempotency_keys"] = len(self.stats.idempotency_keys)
        data["if_range_headers"] = len(self.stats.if_range_headers)
        return data

    def file_app(self) -> web.Application:
        """The file host serving result videos, with Range, ETag and expiry."""
        app = web.Application()
        app.router.add_get("/files/{name}", self._download)
        return app

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(STATS_PATH):
            # The control endpoints are for test harnesses: no auth, latency or limits.
            control: web.StreamResponse = await handler(request)
            return control
        stats = self.stats
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        stats.user_agents[request.headers.get("User-Agent", "")] += 1
        try:
            if self.config.latency:
                await asyncio.sleep(self.config.latency)
            wait = self._rate_limited()
            if wait is not None:
                stats.rate_limited += 1
                return _error(429, "Rate limit exceeded", "rate_limit_error",
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})
            token = self._authorized(request)
            if token is None:
                presented = request.headers.get("Authorization", "").partition(" ")[2]
                # Like many real APIs, echo what was presented: the SDK must scrub it.
                return _error(401, f"Invalid API key provided: {presented or '(none)'}",
                              "authentication_error")
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            stats.in_flight -= 1

    async def _apply(self, request: web.Request, fault: Fault | None) -> web.StreamResponse | None:
        """Carry out a fault that ends the request; None when the request goes on."""
        if fault is None:
            return None
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
            return None
        if fault.kind == "reset":
            _drop(request, hard=fault.hard)
            return web.Response()
        if fault.kind == "redirect":
            location = fault.location.replace("{files}", self.file_base_url)
            return web.Response(status=fault.status, headers={"Location": location})
        if fault.kind == "html":
            return web.Response(status=fault.status, body=_HTML_PAGE, content_type="text/html")
        if fault.kind == "status":
            if fault.body_code is not None:
                return web.json_response(
                    {"code": fault.body_code, "msg": f"error {fault.body_code}", "data": None}
                )
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return _error(fault.status, _REASONS.get(fault.status, "Error"), "api_error",
                          headers=headers)
        return None

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests["submit"] += 1
        self.stats.idempotency_keys.append(request.headers.get("Idempotency-Key"))
        fault = self._next_fault(
            "submit", (Fault.http(429, retry_after="1"), Fault.http(503)), self.config.submit_faults
        )
        answer = await self._apply(request, fault)
        if answer is not None:
            return answer
        try:
            body = await request.json()
        except ValueError:
            return self._reject("body is not valid JSON")
        problem = _validate(body)
        if problem:
            return self._reject(problem)
        if self._balance is not None and self._balance <= 0:
            self.stats.rejected_submissions += 1
            return _error(402, "Insufficient balance", "insufficient_balance")
        key = request.headers.get("Idempotency-Key")
        if key and key in self._keys and self.honour_idempotency_key:
            return _submitted(self._keys[key])
        if key and key in self._keys:
            self.stats.duplicate_submissions += 1
        task = self._create(body, key)
        if fault is not None and fault.kind == "lost_answer":
            _drop(request, hard=fault.hard)
            return web.Response()
        return _submitted(task.id)

    def _reject(self, message: str) -> web.Response:
        self.stats.rejected_submissions += 1
        return _error(400, message, "invalid_request_error")

    def _create(self, body: Mapping[str, Any], key: str | None) -> _Task:
        index = self.stats.submissions
        self.stats.submissions += 1
        if self._balance is not None:
            self._balance -= 1
        task_id = "task_" + hashlib.sha256(f"{self.config.seed}:{index}".encode()).hexdigest()[:26]
        now, wall = self.clock.now(), self.clock.wall()
        task = _Task(
            id=task_id,
            created=now,
            created_wall=wall,
            plan=self._plan(body, index),
            body=body,
            idempotency_key=key,
            token=secrets.token_hex(8),
            expires_wall=wall + self.config.url_ttl,
        )
        # Links expire relative to completion, not creation.
        task.expires_wall += task.plan.duration
        self.tasks[task_id] = task
        if key:
            self._keys.setdefault(key, task_id)
        return task

    async def _get_task(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        self.stats.requests["task"] += 1
        self.stats.polls[task_id] += 1
        fault = self._next_fault(
            "task", (Fault.http(500), Fault.http(502), Fault.reset(), Fault.html(200)),
            self.config.poll_faults,
        )
        answer = await self._apply(request, fault)
        if answer is not None:
            return answer
        task = self.tasks.get(task_id)
        if task is None:
            return _error(404, f"task {task_id} not found", "not_found_error")
        data = self.task_data(task)
        if data["status"] in ("completed", "failed", "cancelled") and not task.observed_terminal:
            task.observed_terminal = True
            lag = self.clock.now() - (task.created + task.plan.duration)
            self.stats.detection_lags[task_id] = max(0.0, lag)
        return web.json_response({"code": 200, "data": data})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.downloads_in_flight += 1
        stats.peak_downloads_in_flight = max(
            stats.peak_downloads_in_flight, stats.downloads_in_flight
        )
        try:
            return await self._serve_file(request)
        finally:
            stats.downloads_in_flight -= 1

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests["download"] += 1
        auth = request.headers.get("Authorization")
        if auth is not None:
            stats.credential_leaks += 1
            stats.authorization_headers.append(auth)
        elif any(h.lower().startswith("x-api") or h.lower() == "idempotency-key"
                 for h in request.headers):
            stats.credential_leaks += 1
        stats.downloads += 1
        name = request.match_info["name"]
        task = self.tasks.get(name.removesuffix(".mp4"))
        if task is None or self.status_of(task)[0] != "completed":
            return web.Response(status=404, text="not found")
        if request.query.get("token") != task.token or self.clock.wall() >= task.expires_wall:
            return web.Response(status=403, text="link expired")
        data = self.video(task)
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        fault = self._next_fault("download", (Fault.cut(0.5),), self.config.download_faults)
        range_header = request.headers.get("Range")
        if range_header is not None:
            stats.range_requests += 1
            # What a resume presented (None: a Range without If-Range).
            stats.if_range_headers.append(request.headers.get("If-Range"))
        if fault is not None and fault.kind in ("status", "html", "reset", "redirect", "slow"):
            answer = await self._apply(request, fault)
            if answer is not None:
                return answer
        start, end = 0, len(data) - 1
        if_range = request.headers.get("If-Range")
        status = 200
        if (
            range_header
            and not (fault and fault.kind == "ignore_range")
            and (if_range is None or if_range == etag)
        ):
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if match is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            start = int(match.group(1))
            end = min(int(match.group(2)), end) if match.group(2) else end
            if start > end:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            if fault is not None and fault.kind == "short_range":
                end = start + max(1, int((end - start + 1) * fault.fraction)) - 1
            elif fault is not None and fault.kind == "wrong_range":
                # As many bytes as asked for, from the wrong place: appended, they would
                # make a file of the right size and the wrong content.
                start, end = 0, end - start
        headers = {
            "Content-Type": "video/mp4",
            "Content-Length": str(end - start + 1),
            "ETag": etag,
            "Accept-Ranges": "bytes",
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        body = data[start : end + 1]
        if fault is not None and fault.kind == "cut":
            await response.write(body[: int(len(body) * fault.fraction)])
            # close(), not abort(): the bytes already written reach the client first.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response


STATS_PATH = "/_emulator/stats"

_REASONS = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Insufficient balance",
    403: "Forbidden",
    404: "Not found",
    429: "Rate limit exceeded",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def _error(
    status: int, message: str, kind: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": status, "message": message, "type": kind}}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json",
        headers=dict(headers or {}),
    )


def _submitted(task_id: str) -> web.Response:
    return web.json_response({"code": 200, "data": [{"status": "submitted", "task_id": task_id}]})


def _drop(request: web.Request, *, hard: bool = False) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if hard and sock is not None:
        # Linger on, timeout 0: closing sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _validate(body: Any) -> str | None:
    """The documented parameter checks; a message for the first problem found."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model is required"
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt is required"
    duration = body.get("duration")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or not 1 <= duration <= 60
    ):
        return f"duration {duration!r} is not supported by model {model}"
    ratio = body.get("aspect_ratio")
    if ratio is not None and ratio not in ("16:9", "9:16"):
        return f"aspect_ratio {ratio!r} is not supported"
    urls = body.get("image_urls")
    if urls is not None:
        if not isinstance(urls, list):
            return "image_urls must be an array"
        for url in urls:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                return f"image_urls entry {url!r} is not a public http(s) URL"
    return None
