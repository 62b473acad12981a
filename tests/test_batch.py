"""The batch engine: submit_many, watch, the shared poller and the combined stream."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from apimart_async import (
    AuthenticationError,
    BadRequestError,
    EventKind,
    InsufficientBalanceError,
    NotFoundError,
    NotSubmittedError,
    PollPolicy,
    Submission,
    TaskStatus,
    TaskUpdate,
    VideoRequest,
)
from apimart_async.testing import Clock, EmulatorConfig, EmulatorServer, TaskPlan

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio


def requests(n: int, **kwargs: Any) -> list[VideoRequest]:
    return [VideoRequest(f"clip {i}", **kwargs) for i in range(n)]


def by_prompt(plans: Mapping[str, TaskPlan], default: TaskPlan | None = None) -> Any:
    def planner(body: Mapping[str, Any], index: int) -> TaskPlan:
        return plans.get(body["prompt"], default or TaskPlan(duration=5, estimated_time=5))
    return planner


# -- submit_many ----------------------------------------------------------------------

async def test_outcomes_in_input_order_and_one_failure_cancels_nothing(
    server: EmulatorServer,
) -> None:
    reqs = requests(30)
    reqs[7] = VideoRequest("rejected by the server", model="kling-9", duration=99)
    async with session_for(server, max_concurrency=8) as s:
        outcomes = await s.submit_many(reqs)
    assert len(outcomes) == 30
    assert isinstance(outcomes[7], BadRequestError)
    others = [o for i, o in enumerate(outcomes) if i != 7]
    assert all(isinstance(o, Submission) for o in others)
    assert [o.request for o in others] == [r for i, r in enumerate(reqs) if i != 7]  # type: ignore[union-attr]
    assert server.stats.submissions == 29
    assert len({o.task_id for o in others}) == 29  # type: ignore[union-attr]


async def test_concurrency_is_reached_and_never_exceeded(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(latency=0.01))
    async with session_for(server, max_concurrency=6) as s:
        outcomes = await s.submit_many(requests(60))
    assert all(isinstance(o, Submission) for o in outcomes)
    assert server.stats.peak_in_flight == 6


async def test_a_429_storm_is_survived_with_every_item_submitted_once(
    make_server: MakeServer,
) -> None:
    # 200 items against a server allowing 200 requests/s with a burst of 10. Retry
    # delays are zero in tests, so without the shared learned pace every 429 would be
    # retried at once and items would run out of attempts.
    server = await make_server(EmulatorConfig(rate_limit=200, burst=10))
    # The emulator's token bucket refills in real time, so this session paces on a
    # real-time clock too (a compressed one would pace 50 times too fast for it).
    async with session_for(server, max_concurrency=32, clock=Clock()) as s:
        outcomes = await s.submit_many(requests(200))
    assert all(isinstance(o, Submission) for o in outcomes), Counter(
        type(o).__name__ for o in outcomes
    )
    assert server.stats.submissions == 200
    assert server.stats.duplicate_submissions == 0
    assert len(set(server.stats.idempotency_keys)) == 200
    # Learning 429s, not a storm: a quiet machine draws 8-9; one busy enough to bunch
    # the requests (this test runs on a real clock) drew 92. Each coroutine retrying on
    # its own draws several hundred.
    assert server.stats.rate_limited <= 120, server.stats.rate_limited
    limits = s._engine.limits  # internal: the pace the session learned
    # The server's rate, learned from the accepts between 429s (real-time jitter at
    # 5 ms a request blurs it a little).
    assert limits.rate.rate == pytest.approx(200, rel=0.15), limits.rate.rate


async def test_balance_running_out_stops_the_rest_promptly(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(balance=5))
    async with session_for(server, max_concurrency=2) as s:
        outcomes = await s.submit_many(requests(40))
    assert sum(isinstance(o, Submission) for o in outcomes) == 5
    assert server.stats.submissions == 5
    # Only the requests already in flight when the 402 came back were sent after it.
    assert server.stats.requests["submit"] <= 5 + 2
    skipped = [o for o in outcomes if isinstance(o, NotSubmittedError)]
    assert len(skipped) >= 40 - 5 - 2
    for o in outcomes:
        if not isinstance(o, Submission):
            reason = o.reason if isinstance(o, NotSubmittedError) else o
            assert isinstance(reason, InsufficientBalanceError)
            if isinstance(o, NotSubmittedError):
                assert "InsufficientBalanceError" in str(o)


async def test_bad_key_stops_the_batch(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(api_key="right"))
    async with session_for(server, max_concurrency=3) as s:
        outcomes = await s.submit_many(requests(25))
    assert server.stats.requests["submit"] <= 3
    assert all(isinstance(o, (AuthenticationError, NotSubmittedError)) for o in outcomes)
    assert sum(isinstance(o, NotSubmittedError) for o in outcomes) >= 22


async def test_submit_many_validates_everything_first(server: EmulatorServer) -> None:
    from apimart_async import ValidationError

    async with session_for(server) as s:
        with pytest.raises(ValidationError) as info:
            await s.submit_many([VideoRequest("ok"), "not a request"])  # type: ignore[list-item]
    assert info.value.field == "requests[1]"
    assert server.stats.requests["submit"] == 0


# -- watch ------------------------------------------------------------------------------

async def test_watch_gives_changes_then_exactly_one_final_update_per_task(
    make_server: MakeServer,
) -> None:
    server = await make_server(EmulatorConfig(fail_rate=0.2, seed=3))
    async with session_for(server) as s:
        subs = [o for o in await s.submit_many(requests(40)) if isinstance(o, Submission)]
        seen: defaultdict[str, list[TaskUpdate]] = defaultdict(list)
        async with s.watch(subs) as updates:
            async for update in updates:
                seen[update.task_id].append(update)
    assert set(seen) == {sub.task_id for sub in subs}
    statuses = Counter()
    for task_id, ups in seen.items():
        assert [u.final for u in ups].count(True) == 1 and ups[-1].final
        pairs = [(u.status, u.progress) for u in ups]
        assert len(pairs) == len(set(pairs)), f"repeated update for {task_id}: {pairs}"
        assert ups[-1].task is not None and ups[-1].task.is_terminal
        statuses[ups[-1].status] += 1
    assert statuses[TaskStatus.FAILED] > 0 and statuses[TaskStatus.COMPLETED] > 0


async def test_polls_share_the_session_limits(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(latency=0.01, duration=(1, 2)))
    async with session_for(server, max_concurrency=3) as s:
        subs = await s.submit_many(requests(30))
        async with s.watch(subs) as updates:  # type: ignore[arg-type]
            async for _ in updates:
                pass
    assert server.stats.peak_in_flight == 3


def _other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than this one, leaving out the emulator's server-side handlers."""
    return {
        t for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and "RequestHandler" not in getattr(t.get_coro(), "__qualname__", "")
    }


async def test_breaking_out_stops_polling_at_once_and_leaves_nothing(
    make_server: MakeServer,
) -> None:
    server = await make_server(EmulatorConfig(duration=(500, 600)))
    before = _other_tasks()
    # Short intervals: within 3 API seconds every task comes up for its next poll.
    policy = PollPolicy(first_delay=0.5, min_interval=0.25, max_interval=2.0)
    async with session_for(server, poll=policy) as s:
        subs = await s.submit_many(requests(20))
        async for update in s.watch(subs):  # type: ignore[arg-type]  # plain async for
            assert not update.final
            break
        # The dropped iterator is gone at once (no __del__ involved: the poller holds it
        # weakly), so no poll for it is sent from here on.
        polls = sum(server.stats.polls.values())
        await server.emulator.clock.sleep(3)
        poller = s._engine.poller_started
        assert poller is not None and poller.watched == 0
    # At most the polls already on the wire at the break still reach the server.
    assert sum(server.stats.polls.values()) <= polls + s.max_concurrency
    assert _other_tasks() - before == set()


async def test_cancelling_the_consumer_stops_polling(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(duration=(500, 600)))
    async with session_for(server) as s:
        subs = await s.submit_many(requests(10))
        got = anyio.Event()

        async def consume() -> None:
            async for _ in s.watch(subs):  # type: ignore[arg-type]
                got.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await got.wait()
            tg.cancel_scope.cancel()
        poller = s._engine.poller_started
        assert poller is not None and poller.watched == 0


async def test_unknown_task_ends_with_an_error_update(server: EmulatorServer) -> None:
    async with session_for(server) as s:
        updates = [u async for u in s.watch(["task_missing"])]
    assert len(updates) == 1 and updates[0].final
    assert isinstance(updates[0].error, NotFoundError)


async def test_task_deadline_and_whole_deadline(make_server: MakeServer) -> None:
    plans = {"slow": TaskPlan(duration=500, estimated_time=500)}
    server = await make_server(EmulatorConfig(planner=by_prompt(plans)))
    async with session_for(server) as s:
        subs = await s.submit_many([VideoRequest("fast"), VideoRequest("slow")])
        finals = {u.task_id: u async for u in s.watch(subs, task_timeout=30) if u.final}  # type: ignore[arg-type]
        slow = await s.submit(VideoRequest("slow"))
        whole = [u async for u in s.watch([slow], timeout=20)]
    fast_id, slow_id = (o.task_id for o in subs)  # type: ignore[union-attr]
    assert finals[fast_id].completed and not finals[fast_id].timed_out
    assert finals[slow_id].timed_out and finals[slow_id].status is TaskStatus.PROCESSING
    assert whole[-1].timed_out and [u.final for u in whole].count(True) == 1


@pytest.mark.parametrize(
    ("duration", "estimate"),
    [(19, 60), (30, 5)],
    ids=["estimate-far-too-long", "estimate-far-too-short"],
)
async def test_wrong_estimates_are_caught_promptly(
    make_server: MakeServer, duration: float, estimate: float
) -> None:
    plan = TaskPlan(duration=duration, estimated_time=estimate)
    server = await make_server(EmulatorConfig(planner=lambda body, i: plan), speed=20)
    async with session_for(server) as s:
        task = await s.wait(await s.submit(VideoRequest("x")))
    assert task.status is TaskStatus.COMPLETED
    # Trusting the estimate would be 41 s late (first case) or poll ~30 times at 1 s.
    assert server.stats.detection_lags[task.id] < 3.0
    assert server.stats.polls[task.id] <= 6


# -- the combined stream -----------------------------------------------------------------

async def test_stream_reports_every_item_to_exactly_one_end(make_server: MakeServer) -> None:
    plans = {"doomed": TaskPlan(duration=5, outcome="failed")}
    server = await make_server(EmulatorConfig(planner=by_prompt(plans)))
    reqs = [*requests(12), VideoRequest("doomed"),
            VideoRequest("bad", model="kling-9", duration=99)]
    kinds: defaultdict[int, list[EventKind]] = defaultdict(list)
    async with session_for(server) as s, s.stream(reqs) as events:
        async for event in events:
            kinds[event.index].append(event.kind)
            assert event.request is reqs[event.index]
            if event.kind is EventKind.COMPLETED:
                assert event.task is not None and event.task.video_urls
    assert set(kinds) == set(range(len(reqs)))
    for index, ks in kinds.items():
        assert sum(k in {EventKind.COMPLETED, EventKind.FAILED, EventKind.SUBMIT_FAILED,
                         EventKind.TIMED_OUT} for k in ks) == 1, (index, ks)
    assert kinds[12][0] is EventKind.SUBMITTED and kinds[12][-1] is EventKind.FAILED
    assert kinds[13] == [EventKind.SUBMIT_FAILED]
    assert all(kinds[i][0] is EventKind.SUBMITTED and kinds[i][-1] is EventKind.COMPLETED
               for i in range(12))
    assert server.stats.submissions == 13


async def test_stream_whole_deadline_times_out_sent_and_unsent_items(
    make_server: MakeServer,
) -> None:
    server = await make_server(EmulatorConfig(duration=(500, 600)))
    # Paced on the session's clock (2 per API second), so the 3 s deadline passes with
    # some items sent and the rest not; an emulator rate limit (real time) would answer
    # 429s instead, and an item could end SUBMIT_FAILED under load.
    async with session_for(server, max_concurrency=2, rps=2) as s:
        events = [e async for e in s.stream(requests(30), timeout=3)]
    finals = [e for e in events if e.final]
    assert sorted(e.index for e in finals) == list(range(30))
    last_event = {e.index: e for e in events}
    assert all(last_event[e.index] is e for e in finals)  # nothing after an item's end
    assert all(e.kind is EventKind.TIMED_OUT for e in finals)
    sent = [e for e in finals if e.task_id is not None]
    assert 0 < len(sent) < 30  # the deadline caught some sent and some not
    # Every task that was created is reported with its id: nothing paid for is lost.
    assert len(sent) == server.stats.submissions
