"""The APIMart emulator's state and controls.

It speaks the documented wire format (`_apps`), keeps task time on a (possibly
compressed) `Clock` (`_tasks`), injects faults on request (`_faults`), limits the
request rate (`_ratelimit`), and counts what it saw (`_stats`) so tests and benchmarks
can check the client from the server's side.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs
from aiohttp import web

from .._io.clock import Clock
from ._apps import api_app, file_app
from ._config import EmulatorConfig
from ._faults import RANDOM_FAULTS, Fault, FaultQueue, Route
from ._ratelimit import TokenBucket
from ._stats import EmulatorStats, RequestLog, RequestRecord, stats_dict
from ._tasks import (
    EmulatedTask,
    TaskPlan,
    TaskRecord,
    TaskView,
    image_bytes,
    output_names,
    plan_task,
    task_id_for,
    task_state,
    video_bytes,
)

__all__ = ["Emulator", "EmulatorConfig", "EmulatorStats", "Fault", "Route", "TaskPlan"]

_RATES = {"submit": "submit_faults", "task": "poll_faults", "download": "download_faults",
          "balance": "poll_faults"}


class Emulator:
    """The emulator's state and its two `aiohttp.web` applications.

    `api_app()` serves ``/v1/...``; `file_app()` serves the result videos and must be
    reachable at `file_base_url` (set by `EmulatorServer`, or by you).

    For tests: `inject` faults, read `tasks` / `task(id)` (read-only `EmulatedTask`
    snapshots), assert on `request_log`, and count with `stats`.
    """

    def __init__(self, config: EmulatorConfig | None = None, *, clock: Clock | None = None):
        config = config or EmulatorConfig()
        #: The seed of this emulator's task ids, plans and fault draws: the config's, or a
        #: fresh one drawn here (so two emulators, or two runs, never share task ids).
        self.seed: int = config.seed if config.seed is not None else secrets.randbits(64)
        self.config = attrs.evolve(config, seed=self.seed)
        self.clock = clock or Clock()
        self.stats = EmulatorStats()
        self.file_base_url = "http://127.0.0.1"
        self._tasks: dict[str, TaskRecord] = {}
        # The id the last submission was answered with (`Fault.repeat_id` sends it again).
        self.last_task_id: str | None = None
        self._faults = FaultQueue(random.Random(self.seed))
        self._keys: dict[str, str] = {}
        self._balance = self.config.balance
        self._used = 0.0
        #: Answer a repeated Idempotency-Key with the first task (settable at run time).
        self.honour_idempotency_key = self.config.honour_idempotency_key
        rate = self.config.rate_limit
        self._bucket = (
            TokenBucket(rate, self.config.burst, clock=self.clock.now
                        if self.config.rate_limit_clock else time.monotonic)
            if rate else None
        )
        self._videos: dict[str, bytes] = {}
        self._per_model: Counter[str] = Counter()
        self._log = RequestLog(self.config.request_log_size)
        # A `Fault.storm` in force: until when (the clock's time), and its 429's hint.
        self._storm_until = -math.inf
        self._storm_hint: str | None = None

    # -- what tests read --------------------------------------------------------------

    @property
    def tasks(self) -> Mapping[str, EmulatedTask]:
        """Every task created so far, by id, oldest first: a live read-only mapping whose
        values are `EmulatedTask` snapshots at the clock's time when read."""
        return TaskView(self._tasks, self.clock.now)

    def task(self, task_id: str) -> EmulatedTask:
        """A snapshot of `task_id` at the clock's time now (KeyError if there is none)."""
        record = self._tasks.get(task_id)
        if record is None:
            raise KeyError(f"the emulator has no task {task_id!r}")
        return EmulatedTask.of(record, self.clock.now())

    @property
    def request_log(self) -> tuple[RequestRecord, ...]:
        """The requests the API host and file host saw (the latest
        `EmulatorConfig.request_log_size`), oldest first. The ``/_emulator/stats`` control
        endpoints are not logged."""
        return self._log.snapshot()

    def clear_request_log(self) -> None:
        """Forget the requests logged so far."""
        self._log.clear()

    def log_request(self, record: RequestRecord) -> None:
        """Add `record` to `request_log` (the hosts call this once per request)."""
        self._log.append(record)

    # -- controls ---------------------------------------------------------------------

    def inject(self, route: Route, *faults: Fault) -> None:
        """Queue `faults` for the next requests on `route`, one each, in order.

        A fault that would have no effect on `route` (see `Fault.routes`) is refused with
        a ValueError, and none of `faults` is queued. The range faults wait for the next
        download that asks for a range.
        """
        self._faults.inject(route, *faults)

    def pending_faults(self, route: Route) -> int:
        """How many injected faults on `route` are still unused."""
        return self._faults.pending(route)

    def expire(self, task_id: str) -> None:
        """Expire the task's current link now; the next query hands out a fresh one."""
        task = self._tasks[task_id]
        task.expires_wall = self.clock.wall() - 1

    def replan(self, task_id: str, plan: TaskPlan) -> None:
        """Make `task_id` follow `plan` from now on, timed from its creation as before."""
        if not isinstance(plan, TaskPlan):
            raise TypeError(f"plan must be a TaskPlan, got {plan!r}")
        record = self._tasks.get(task_id)
        if record is None:
            raise KeyError(f"the emulator has no task {task_id!r}")
        record.plan = plan

    def set_balance(self, balance: float | None) -> None:
        """Change the account's remaining balance (None: unlimited quota)."""
        self._balance = balance

    @property
    def remain_balance(self) -> float | None:
        """What the key has left (None: unlimited quota)."""
        return self._balance

    @property
    def used_balance(self) -> float:
        """What accepted submissions were charged in all (``used_balance``)."""
        return self._used

    def cost(self, body: Mapping[str, Any]) -> float:
        """What submitting `body` costs (`EmulatorConfig.prices`, else `price`)."""
        model = body.get("model")
        price = self.config.prices.get(model, self.config.price) if isinstance(model, str) \
            else self.config.price
        return price.cost(body)

    def balance_answer(self) -> dict[str, Any]:
        """The body of ``GET /v1/balance`` now."""
        unlimited = self._balance is None
        return {"success": True, "remain_balance": -1 if unlimited else self._balance,
                "used_balance": self._used, "unlimited_quota": unlimited}

    def complete_all(self) -> None:
        """Make every task reach its end now (for tests that do not care about timing)."""
        now = self.clock.now()
        for task in self._tasks.values():
            shift = task.plan.duration - (now - task.created)
            if shift > 0:
                task.created -= shift
                task.created_wall -= shift

    # -- what the hosts call ----------------------------------------------------------

    def next_fault(self, route: Route, *, ranged: bool = False) -> Fault | None:
        """The fault the next request on `route` meets: the next injected one, else a
        random one at the configured rate, else None. Counted in `stats`. `ranged`: the
        request carries a Range header (range faults wait for one)."""
        rate: float = getattr(self.config, _RATES[route])
        fault = self._faults.next(route, RANDOM_FAULTS[route], rate, ranged=ranged)
        if fault is not None:
            self.stats.faults_injected[f"{route}:{fault.kind}:{fault.status}"] += 1
            if fault.kind == "status" and 429 in (fault.status, fault.body_code):
                # A 429 is a 429 to the client, whoever decided to send it.
                self.stats.rate_limited += 1
        return fault

    def start_storm(self, fault: Fault) -> None:
        """Refuse every API request (429) for `fault.seconds` from now (`Fault.storm`)."""
        self._storm_until = self.clock.now() + fault.seconds
        self._storm_hint = fault.retry_after

    def storming(self) -> tuple[bool, str | None]:
        """Whether a storm refuses API requests now, and its ``Retry-After`` text."""
        if self._storm_until == -math.inf:
            return False, None
        return self.clock.now() < self._storm_until, self._storm_hint

    def admit(self) -> float | None:
        """Take a rate-limit token: None if a request may go now, else the seconds until
        one is free (real seconds, or the clock's with `rate_limit_clock`)."""
        return self._bucket.take() if self._bucket is not None else None

    def accept(
        self, body: Mapping[str, Any], idempotency_key: str | None
    ) -> tuple[str, bool] | None:
        """Accept a valid submission: (task id, whether a task was created), or None when
        the balance cannot pay for it. A repeated key gets its first task (at no charge)
        when `honour_idempotency_key` is set."""
        key = idempotency_key
        if key and key in self._keys and self.honour_idempotency_key:
            return self._keys[key], False
        # A hair of slack: float sums of prices must not refuse an exact fit.
        if self._balance is not None and self.cost(body) > self._balance + 1e-9:
            self.stats.rejected_submissions += 1
            return None
        if key and key in self._keys:
            self.stats.duplicate_submissions += 1
        return self._create(body, key).id, True

    def record(self, task_id: str) -> TaskRecord | None:
        """The emulator's own (mutable) record of `task_id`, if there is one."""
        return self._tasks.get(task_id)

    # -- task model -------------------------------------------------------------------

    def _plan(self, body: Mapping[str, Any], index: int) -> TaskPlan:
        model = str(body.get("model", ""))
        nth = self._per_model[model]
        plan = plan_task(self.config, body, index, nth)
        if self.config.planner is None and self.config.profiles.get(
            model, self.config.profile
        ) != "kind":
            self._per_model[model] += 1
        return plan

    def _create(self, body: Mapping[str, Any], key: str | None) -> TaskRecord:
        index = self.stats.submissions
        self.stats.submissions += 1
        cost = self.cost(body)
        self._used += cost
        if self._balance is not None:
            self._balance -= cost
        task_id = task_id_for(self.seed, index)
        now, wall = self.clock.now(), self.clock.wall()
        task = TaskRecord(
            id=task_id,
            created=now,
            created_wall=wall,
            plan=self._plan(body, index),
            body=body,
            idempotency_key=key,
            token=secrets.token_hex(8),
            expires_wall=wall + self.config.url_ttl,
            cost=cost,
        )
        # Links expire relative to completion, not creation.
        task.expires_wall += task.plan.duration
        self._tasks[task_id] = task
        if key:
            self._keys.setdefault(key, task_id)
        return task

    def status_of(self, task: TaskRecord) -> tuple[str, int]:
        """(status, progress) of `task` now."""
        return task_state(task.plan, self.clock.now() - task.created)

    def task_data(self, task: TaskRecord) -> dict[str, Any]:
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
            expires = int(task.expires_wall)
            link = f"{self.file_base_url}/files/{{}}?token={task.token}"
            result: dict[str, Any] = {"videos": [{
                "url": [link.format(name) for name in output_names(task.id, plan)[0]],
                "expires_at": expires,
            }]}
            if plan.images:
                result["images"] = [{"url": link.format(name), "expires_at": expires}
                                    for name in output_names(task.id, plan)[1]]
            data["result"] = result
            # Emulator behaviour (the API documents `usage` only as "billing
            # information"): what the submission was charged, in the balance's unit.
            data["usage"] = {"credits": 1, "cost": task.cost}
        elif status in ("failed", "cancelled"):
            data["error"] = {"code": plan.error_code, "message": plan.error_message}
        return data

    def video(self, task: TaskRecord) -> bytes:
        """The (first) video file of `task` (deterministic bytes)."""
        return self.output(task, f"{task.id}.mp4")

    def output(self, task: TaskRecord, name: str) -> bytes:
        """The file the file host serves as `name` for `task` (see `output_names`):
        deterministic bytes, a video's or an image's."""
        if name not in self._videos:
            if name.endswith(".png"):
                self._videos[name] = image_bytes(name, max(64, task.plan.size // 4))
            else:
                seed = task.id if name == f"{task.id}.mp4" else name
                self._videos[name] = video_bytes(seed, task.plan.size)
        return self._videos[name]

    # -- applications -----------------------------------------------------------------

    def api_app(self) -> web.Application:
        """The API host: ``POST /v1/videos/generations`` and ``GET /v1/tasks/{id}``."""
        return api_app(self)

    def file_app(self) -> web.Application:
        """The file host serving result videos, with Range, ETag and expiry."""
        return file_app(self)

    def stats_dict(self) -> dict[str, Any]:
        """`stats` as JSON-ready data (also served at ``GET /_emulator/stats``)."""
        return stats_dict(self.stats)
