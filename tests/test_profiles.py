"""Emulator timing profiles: seeded plans, progress modes, per-model choice, the CLI flag."""

from __future__ import annotations

import random

import pytest

from apimart_async import Session, TaskStatus, VideoRequest
from apimart_async.testing import (
    PRESETS,
    PROFILES,
    Clock,
    Emulator,
    EmulatorConfig,
    TaskPlan,
    TimingProfile,
    emulator_process,
)
from apimart_async.testing._profiles import progress_at
from apimart_async.testing._tasks import TaskRecord

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio


def plans(config: EmulatorConfig, model: str, n: int) -> list[TaskPlan]:
    emulator = Emulator(config)
    return [emulator._plan({"model": model, "prompt": "x"}, i) for i in range(n)]


def answers(plan: TaskPlan, times: list[float]) -> list[tuple[str, int]]:
    """(status, progress) of a task with `plan` at each of `times` after its creation."""
    emulator = Emulator(clock=Clock())
    task = TaskRecord(id="t", created=0.0, created_wall=0.0, plan=plan, body={}, idempotency_key=None,
                 token="", expires_wall=0.0)
    out = []
    for t in times:
        task.created = emulator.clock.now() - t
        out.append(emulator.status_of(task))
    return out


def test_presets_are_named_and_kind_is_the_default() -> None:
    assert set(PRESETS) == {"kind", "realistic", "hostile"}
    assert EmulatorConfig().profile == "kind"
    # The default keeps the knobs: 4-8 s tasks, linear progress, queue within the duration.
    for plan in plans(EmulatorConfig(), "sora-2", 20):
        assert 4.0 <= plan.duration <= 8.0 and plan.queue_time <= 0.3
        assert plan.progress_mode == "linear" and plan.render_time is None


def test_plans_are_seeded_per_model_and_task() -> None:
    config = EmulatorConfig(profile="hostile", seed=3)
    assert plans(config, "m", 30) == plans(config, "m", 30)
    assert plans(config, "m", 30) != plans(EmulatorConfig(profile="hostile", seed=4), "m", 30)
    # Another model's traffic does not shift this model's plans.
    emulator = Emulator(config)
    mixed = []
    for i in range(30):
        emulator._plan({"model": "other"}, 2 * i)
        mixed.append(emulator._plan({"model": "m"}, 2 * i + 1))
    assert mixed == plans(config, "m", 30)


def test_hostile_covers_every_bad_case() -> None:
    drawn = plans(EmulatorConfig(profile="hostile"), "m", 400)
    assert {p.progress_mode for p in drawn} == {"linear", "none", "s-curve", "stall", "steps"}
    failed = [p for p in drawn if p.outcome == "failed"]
    assert 20 <= len(failed) <= 60
    # Failures come mid-run: before the render they were due to finish.
    assert all(p.render_time is not None and p.duration < p.queue_time + p.render_time
               for p in failed)
    assert max(p.queue_time for p in drawn) > 10
    assert max(p.duration for p in drawn) > 60 and min(p.duration for p in drawn) < 10


@pytest.mark.parametrize(("mode", "expected"), [
    ("linear", [0, 10, 50, 90, 99]),
    ("none", [0, 0, 0, 0, 0]),
    ("s-curve", [0, 2, 50, 97, 99]),
    ("stall", [0, 20, 99, 99, 99]),
    ("steps", [0, 10, 50, 90, 90]),
])
def test_progress_modes(mode: str, expected: list[int]) -> None:
    got = [progress_at(mode, f, stall_at=0.5, step=10) for f in (0.0, 0.1, 0.5, 0.9, 1.0)]
    assert got == expected
    assert progress_at("steps", 0.37, stall_at=0.5, step=10) == 30


def test_progress_is_a_function_of_plan_and_time() -> None:
    plan = TaskPlan(duration=10.0, queue_time=2.0, render_time=10.0, outcome="failed",
                    progress_mode="linear")
    got = answers(plan, [1.0, 3.0, 7.0, 9.9, 10.5])
    assert got[0] == ("pending", 0)
    assert got[1][0] == "processing" and got[1][1] in (9, 10)
    assert got[2][1] in (49, 50) and got[3][1] in (78, 79)
    assert got[4] == ("failed", 0)  # failed at 80 % of its render


async def test_profile_per_model(make_server: MakeServer) -> None:
    config = EmulatorConfig(profiles={"slow": "minutes", "sticky": TimingProfile(
        render=(5.0, 5.0), queue_time=(1.0, 1.0), progress=("stall",))})
    server = await make_server(config)
    async with session_for(server) as s:
        subs = [await s.submit(VideoRequest("x", model=m)) for m in ("slow", "sticky", "sora-2")]
    slow, sticky, default = (server.emulator.tasks[sub.task_id].plan for sub in subs)
    assert slow.duration >= 30
    assert sticky.queue_time == 1.0 and sticky.progress_mode == "stall"
    assert 4.0 <= default.duration <= 8.0


def test_unknown_profile_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"'nope' is not known; choose one of .*hostile"):
        EmulatorConfig(profile="nope")
    with pytest.raises(ValueError, match="'bad' is not known"):
        EmulatorConfig(profiles={"m": "bad"})
    with pytest.raises(ValueError, match="render must be a range"):
        TimingProfile(render=(5.0, 1.0))
    assert all(isinstance(p, TimingProfile) for p in PROFILES.values())


async def test_cli_profile_flags() -> None:
    flags = ("--speed", "50", "--profile", "no-progress", "--model-profile", "long=minutes")
    async with emulator_process(*flags) as url, Session(
        "k", base_url=url, clock=Clock(speed=50)
    ) as s:
        quick = await s.submit(VideoRequest("a", model="quick"))
        long = await s.submit(VideoRequest("b", model="long"))
        first = await s.get_task(long)
        # 30-60 s renders, estimates off by up to 30 %.
        assert first.estimated_time is not None and first.estimated_time >= 21
        seen = set()
        while True:
            task = await s.get_task(quick)
            seen.add(task.progress)
            if task.is_terminal:
                break
            await s.clock.sleep(0.5)
    assert task.status is TaskStatus.COMPLETED
    assert seen == {0, 100}  # no progress until done


def test_lognormal_has_a_heavy_tail() -> None:
    rng = random.Random(0)
    profile = PROFILES["long-tail"]
    renders = sorted(profile.draw(rng)["render_time"] for _ in range(1000))
    assert 5.0 <= renders[500] <= 7.0  # median 6 s
    assert renders[-1] == 40.0 and renders[990] > 25.0


def test_the_readme_profile_table_is_the_one_the_code_describes() -> None:
    # Generated from PROFILES: a profile changed in the code and not in the README fails.
    from pathlib import Path

    from apimart_async.testing._profiles import profile_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert profile_table() in readme, "README's profile table is stale; paste:\n" + profile_table()
