"""The emulated task model: a task's plan, and its state as a pure function of plan and time.

A `TaskPlan` says how one task behaves in API seconds from its creation; `task_state`
turns a plan and the time elapsed since creation into the (status, progress) the API
reports. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._profiles import PROGRESS_MODES, progress_at, resolve_profile

if TYPE_CHECKING:
    from ._config import EmulatorConfig

__all__ = [
    "EmulatedTask", "Outcome", "Planner", "TaskPlan", "TaskRecord", "TaskView", "image_bytes",
    "output_names", "plan_task", "task_id_for", "task_of_file", "task_state", "video_bytes",
]

Outcome = Literal["completed", "failed", "cancelled"]
_OUTCOMES = ("completed", "failed", "cancelled")


def _seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None and attribute.name in ("estimated_time", "render_time"):
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"TaskPlan: {attribute.name} must be a finite number of seconds "
                         f">= 0, got {value!r}")


def _one_of(choices: tuple[str, ...]) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            raise ValueError(f"TaskPlan: {attribute.name} must be one of "
                             f"{', '.join(map(repr, choices))}, got {value!r}")
    return check


def _outputs(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"TaskPlan: {attribute.name} must be a whole number from 0 to 100, "
                         f"got {value!r}")


@attrs.frozen(kw_only=True)
class TaskPlan:
    """How one emulated task behaves, in API seconds from its creation.

    The task is ``pending`` for `queue_time`, then renders until `duration`, when it
    ends with `outcome`: `duration` is the whole life of the task, queue included
    (`queue_time` <= `duration`). Bad values (negative or non-finite times, an unknown
    `outcome` or `progress_mode`) are refused with a ValueError naming the field.
    Progress runs over `render_time` (default: the time from the
    queue's end to `duration`; longer when the task fails mid-run) in `progress_mode`
    (see `ProgressMode`; `report_progress=False` is mode ``none``).

    A completed task yields `videos` videos (MP4, `size` bytes each; ``result.videos``:
    one entry whose ``url`` lists them all) and `images` PNG images (``result.images``:
    one entry per image, its ``url`` a plain string, as some answers have it).
    """

    duration: float = attrs.field(default=6.0, validator=_seconds)
    queue_time: float = attrs.field(default=0.0, validator=_seconds)
    estimated_time: float | None = attrs.field(default=None, validator=_seconds)
    outcome: Outcome = attrs.field(default="completed", validator=_one_of(_OUTCOMES))
    error_code: str = "content_policy_violation"
    error_message: str = "The prompt was rejected by content moderation"
    report_progress: bool = True
    size: int = 64 * 1024
    render_time: float | None = attrs.field(default=None, validator=_seconds)
    progress_mode: str = attrs.field(default="linear", validator=_one_of(PROGRESS_MODES))
    stall_at: float = 0.5
    step: int = 10
    videos: int = attrs.field(default=1, validator=_outputs)
    images: int = attrs.field(default=0, validator=_outputs)

    def __attrs_post_init__(self) -> None:
        if self.queue_time > self.duration:
            raise ValueError(
                f"TaskPlan: queue_time must be <= duration (duration includes the queue), "
                f"got queue_time={self.queue_time!r} > duration={self.duration!r}"
            )


Planner = Callable[[Mapping[str, Any], int], TaskPlan]


def task_state(plan: TaskPlan, elapsed: float) -> tuple[str, int]:
    """(status, progress) of a task with `plan`, `elapsed` API seconds after its creation."""
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


def plan_task(
    config: EmulatorConfig, body: Mapping[str, Any], index: int, nth_of_model: int
) -> TaskPlan:
    """The plan of the `index`-th submission, the `nth_of_model`-th of its model.

    Seeded per model and per task of that model: the same submissions get the same
    timings whatever else the emulator is serving.
    """
    if config.planner is not None:
        return config.planner(body, index)
    model = str(body.get("model", ""))
    profile = config.profiles.get(model, config.profile)
    if profile != "kind":
        draw = resolve_profile(profile).draw(random.Random(f"{config.seed}:{model}:{nth_of_model}"))
        return TaskPlan(size=config.video_size, **draw)
    rng = random.Random(f"{config.seed}:{index}")
    duration = rng.uniform(*config.duration)
    queue = min(rng.uniform(*config.queue_time), duration / 2)
    error = config.estimate_error
    estimate = duration * (1 + rng.uniform(-error, error))
    failed = rng.random() < config.fail_rate
    return TaskPlan(
        duration=duration,
        queue_time=queue,
        estimated_time=estimate,
        outcome="failed" if failed else "completed",
        size=config.video_size,
    )


def task_id_for(seed: int, index: int) -> str:
    """The id of the `index`-th task of an emulator seeded with `seed`."""
    return "task_" + hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:26]


@attrs.define
class TaskRecord:
    """The emulator's own record of a task (mutable: links expire and are renewed)."""

    id: str
    created: float
    created_wall: float
    plan: TaskPlan
    body: Mapping[str, Any]
    idempotency_key: str | None
    token: str
    expires_wall: float
    observed_terminal: bool = False
    #: What the submission was charged (see `Price`).
    cost: float = 0.0


@attrs.frozen(kw_only=True)
class EmulatedTask:
    """A read-only snapshot of one emulated task, taken at the emulator's clock time `now`.

    - `id`, `model`: as the API reports them.
    - `status`, `progress`: what ``GET /v1/tasks/{id}`` answers at `now` (see `task_state`).
    - `plan`: the `TaskPlan` it follows; `created` is its creation time on the emulator's
      clock (`Clock.now`, API seconds), `created_wall` the Unix time reported, and
      `ends_at` = `created` + `plan.duration`, when it reaches its outcome.
    - `body`: the submitted JSON body, read-only all the way down (objects are read-only
      mappings, arrays tuples; the API key travels in a header and is never part of it);
      `idempotency_key`: the header it came with, if any.
    """

    id: str
    model: str | None
    status: str
    progress: int
    plan: TaskPlan
    created: float
    created_wall: float
    ends_at: float
    now: float
    body: Mapping[str, Any] = attrs.field(eq=False, hash=False)
    idempotency_key: str | None

    @property
    def is_terminal(self) -> bool:
        """Whether the task had ended (completed, failed or cancelled) at `now`."""
        return self.status in ("completed", "failed", "cancelled")

    @classmethod
    def of(cls, record: TaskRecord, now: float) -> EmulatedTask:
        """The snapshot of `record` at clock time `now`."""
        status, progress = task_state(record.plan, now - record.created)
        model = record.body.get("model")
        return cls(
            id=record.id,
            model=model if isinstance(model, str) else None,
            status=status,
            progress=progress,
            plan=record.plan,
            created=record.created,
            created_wall=record.created_wall,
            ends_at=record.created + record.plan.duration,
            now=now,
            body=_frozen(record.body),
            idempotency_key=record.idempotency_key,
        )


def _frozen(value: Any) -> Any:
    """`value` (decoded JSON) read-only all the way down: read-only mappings and tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class TaskView(Mapping[str, EmulatedTask]):
    """The emulator's tasks by id, oldest first: a live, read-only mapping whose values
    are `EmulatedTask` snapshots taken when read."""

    def __init__(self, records: Mapping[str, TaskRecord], now: Callable[[], float]) -> None:
        self._records = records
        self._now = now

    def __getitem__(self, task_id: str) -> EmulatedTask:
        return EmulatedTask.of(self._records[task_id], self._now())

    def __iter__(self) -> Iterator[str]:
        # A copy: the caller may await (and tasks be created) while iterating.
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"<TaskView of {len(self)} emulated tasks>"


def output_names(task_id: str, plan: TaskPlan) -> tuple[list[str], list[str]]:
    """The file host's names for a task's videos (``ID.mp4``, ``ID-2.mp4``, ...) and
    images (``ID-image-1.png``, ...)."""
    videos = [f"{task_id}.mp4" if n == 1 else f"{task_id}-{n}.mp4"
              for n in range(1, plan.videos + 1)]
    return videos, [f"{task_id}-image-{n}.png" for n in range(1, plan.images + 1)]


def task_of_file(name: str) -> str:
    """The task id a file host name (see `output_names`) belongs to."""
    stem = name.rsplit(".", 1)[0]
    head, _, tail = stem.rpartition("-image-")
    if head and tail.isdigit():
        return head
    head, _, tail = stem.rpartition("-")
    return head if head and tail.isdigit() else stem


def image_bytes(seed: str, size: int) -> bytes:
    """The deterministic content of an emulated image: a PNG signature, then noise."""
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


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
