"""The PostgreSQL journal (#13): one batch shared by many workers, on a real server
(tests/pgcluster.py), never a mock. Leases here are short real seconds: a lease is
judged on the database's clock, which no test clock can step."""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from apimart_async import ItemState, JournalUnavailableError, ValidationError, VideoRequest
from apimart_async._batch.pg import PG_SCHEMA_VERSION, PgJournal
from apimart_async.testing import EmulatorConfig, video_bytes

from .conftest import MakeServer, session_for

pytestmark = pytest.mark.anyio
LEASE = 1.0


def reqs(n: int) -> list[VideoRequest]:
    return [VideoRequest(f"fleet scene {i}", duration=5) for i in range(n)]


async def rows(url: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch("SELECT * FROM apimart_items ORDER BY position"))
    finally:
        await conn.close()


def assert_videos(report: Any) -> None:
    for item in report.items:
        assert item.ok, item
        data = item.path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == item.sha256
        assert data == video_bytes(item.task_id, len(data))


async def test_one_worker_runs_a_batch_on_postgres(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    server = await make_server()
    async with session_for(server) as s:
        report = await s.run_batch(reqs(12), out_dir=tmp_path, journal=pg_url, lease=LEASE)
    assert report.ok and report.completed == 12
    assert_videos(report)
    assert server.stats.submissions == 12 and server.stats.duplicate_submissions == 0
    assert {r["state"] for r in await rows(pg_url)} == {"downloaded"}
    assert all(r["worker"] is None for r in await rows(pg_url))
    # A re-run sends nothing: every item is known by content and done.
    async with session_for(server) as s:
        again = await s.run_batch(reqs(12), out_dir=tmp_path, journal=pg_url, lease=LEASE)
    assert again.ok and server.stats.submissions == 12


async def test_two_workers_share_one_batch_without_paying_twice(
    make_server: MakeServer, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server()
    reports: list[Any] = []

    seen: dict[str, dict[str, ItemState]] = {"a": {}, "b": {}}
    paths: list[Path] = []

    async def worker(out: Path) -> None:
        def on_change(result: Any) -> None:
            seen[out.name][result.key] = result.state
            if result.path is not None:
                paths.append(result.path)

        async with session_for(server, max_concurrency=4) as s:
            reports.append(await s.run_batch(reqs(40), out_dir=out, journal=pg_url,
                                             lease=LEASE, on_change=on_change))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, tmp_path / "a")
        tg.start_soon(worker, tmp_path / "b")
    assert server.stats.submissions == 40 and server.stats.duplicate_submissions == 0
    table = await rows(pg_url)
    assert {r["state"] for r in table} == {"downloaded"}
    # Both did some of the work: each video is in the folder of the worker that fetched it.
    a = sorted(p.name for p in (tmp_path / "a").glob("*.mp4"))
    b = sorted(p.name for p in (tmp_path / "b").glob("*.mp4"))
    assert a and b and not set(a) & set(b) and len(a) + len(b) == 40
    assert all(r.completed == 40 for r in reports)
    # Each one's progress callback followed the whole batch, the other's items too.
    for mine in seen.values():
        assert len(mine) == 40 and set(mine.values()) == {ItemState.DOWNLOADED}
    # Each progress report names the folder the video is in, whichever worker fetched it.
    assert len(paths) == 80 and all(p.is_file() for p in paths)
    assert "is not the batch's folder" in caplog.text


async def test_a_newer_schema_is_refused_in_one_line(pg_url: str) -> None:
    async with PgJournal(pg_url, "b"):
        pass
    conn = await asyncpg.connect(pg_url)
    await conn.execute("UPDATE apimart_meta SET value = $1 WHERE name = 'schema_version'",
                       str(PG_SCHEMA_VERSION + 1))
    await conn.close()
    with pytest.raises(ValidationError) as info:
        async with PgJournal(pg_url, "b"):
            pass
    message = str(info.value)
    assert "newer apimart-async" in message and "\n" not in message


async def test_a_changed_named_item_is_refused_before_sending(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    from apimart_async import BatchItem

    server = await make_server()
    async with session_for(server) as s:
        await s.run_batch([BatchItem(request=VideoRequest("a"), name="one")],
                          out_dir=tmp_path, journal=pg_url, lease=LEASE)
        with pytest.raises(ValidationError, match="differs"):
            await s.run_batch([BatchItem(request=VideoRequest("b"), name="one")],
                              out_dir=tmp_path, journal=pg_url, lease=LEASE)
    assert server.stats.submissions == 1
    assert (await rows(pg_url))[0]["state"] == ItemState.DOWNLOADED.value


def row_for(key: str, position: int) -> tuple[int, Any]:
    from apimart_async._batch.journal import JournalRow

    return position, JournalRow(key=key, name=None, request='{"prompt":"x"}',
                                idempotency_key=f"idem-{key}", state=ItemState.PENDING,
                                path=f"{key}.mp4")


async def state_of(url: str) -> dict[str, tuple[str, Any]]:
    return {r["key"]: (r["state"], r["worker"]) for r in await rows(url)}


async def test_a_dead_worker_is_fenced_its_submitting_item_ambiguous_the_rest_adopted(
    pg_url: str,
) -> None:
    from apimart_async import WorkerFencedError

    async with PgJournal(pg_url, "b", lease=0.3) as one, PgJournal(pg_url, "b", lease=5) as two:
        await one.add([row_for("a", 0), row_for("b", 1), row_for("c", 2)])
        me, other = await one.register(), await two.register()
        assert me != other
        first = await one.claim()
        second = await one.claim()
        assert first is not None and second is not None
        assert (first.row.key, second.row.key) == ("a", "b")
        await one.write("b", ItemState.SUBMITTED, task_id="task_b")
        # The other worker skips what `one` holds: it gets the next pending item.
        third = await two.claim()
        assert third is not None and third.row.key == "c"
        await two.write("c", ItemState.PENDING)
        # Within its lease nobody can declare `one` dead.
        assert await two.reap() == []
        await anyio.sleep(0.4)  # past one's lease, on the server's clock
        # Not declared dead yet, but past its lease: its own writes are refused already.
        with pytest.raises(WorkerFencedError):
            await one.write("b", ItemState.COMPLETED)
        assert await two.reap() == [me]
        assert two.lost_keys == ["a"]
        table = await state_of(pg_url)
        # Submitting: may be billed, so ambiguous, never pending; submitted: adoptable.
        assert table["a"] == ("ambiguous", None)
        assert table["b"] == ("submitted", None)
        assert [r.key for r in await two.adopt()] == ["b"]
        assert (await state_of(pg_url))["b"] == ("submitted", other)
        # The zombie's writes, heartbeat and claims are all refused.
        with pytest.raises(WorkerFencedError, match="lost its lease"):
            await one.write("b", ItemState.COMPLETED)
        with pytest.raises(WorkerFencedError):
            await one.write("a", ItemState.SUBMITTED, task_id="late")
        with pytest.raises(WorkerFencedError):
            await one.heartbeat()
        with pytest.raises(WorkerFencedError):
            await one.claim()
        table = await state_of(pg_url)
        assert table["a"] == ("ambiguous", None) and table["b"] == ("submitted", other)
        # Nothing automatic puts the ambiguous item back in line; asking for it does.
        for _ in range(3):
            assert await two.reap() == []
        assert (await two.claim()) is not None  # "c" again
        await two.write("c", ItemState.PENDING)
        assert (await state_of(pg_url))["a"][0] == "ambiguous"
        assert await two.resubmit_ambiguous() == 1


async def test_a_write_to_an_item_another_worker_holds_is_refused(pg_url: str) -> None:
    from apimart_async import WorkerFencedError

    async with PgJournal(pg_url, "b") as one, PgJournal(pg_url, "b") as two:
        await one.add([row_for("a", 0)])
        await one.register()
        await two.register()
        assert await one.claim() is not None
        with pytest.raises(WorkerFencedError):
            await two.write("a", ItemState.SUBMITTED, task_id="t")
        assert (await state_of(pg_url))["a"][0] == "submitting"


async def test_the_keys_rate_is_one_shared_slot_sequence(pg_url: str) -> None:
    async with PgJournal(pg_url, "b") as one, PgJournal(pg_url, "other") as two:
        await one.set_rate("fp", 10.0)
        slots = []
        for journal in (one, two, one, two, one):
            asked = time.monotonic()
            slots.append(asked + await journal.take_slot("fp"))
        # One sequence for both (even across batches): now, +0.1, +0.2, ...
        for before, after in itertools.pairwise(slots):
            assert 0.05 < after - before < 0.15, slots
        # Unused slots in the past are dropped: an idle key does not burst.
        await anyio.sleep(0.7)
        assert await one.take_slot("fp") < 0.05
        assert 0.07 < await two.take_slot("fp") < 0.13
        # A 429 pushes every worker's next slot back, and halves the key's rate once
        # for the burst it belongs to.
        await one.push_back("fp", 1.0)
        await two.push_back("fp", 1.0)
        assert await one.rate("fp") == pytest.approx(5.0)
        asked = time.monotonic()
        first = asked + await two.take_slot("fp")
        assert first - asked > 0.9
        asked = time.monotonic()
        second = asked + await one.take_slot("fp")
        assert 0.15 < second - first < 0.25  # 5/s now
        # It recovers by 1 % a slot, never above the rate given.
        for _ in range(100):
            await one.take_slot("fp")
        assert await one.rate("fp") == pytest.approx(10.0)
    conn = await asyncpg.connect(pg_url)
    try:
        stored = await conn.fetch("SELECT * FROM apimart_rates")
    finally:
        await conn.close()
    assert [r["fingerprint"] for r in stored] == ["fp"]


async def test_the_key_is_never_stored_only_its_fingerprint(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    from .conftest import KEY

    server = await make_server()
    async with session_for(server, rps=50) as s:
        report = await s.run_batch(reqs(3), out_dir=tmp_path, journal=pg_url, lease=LEASE)
    assert report.ok
    conn = await asyncpg.connect(pg_url)
    try:
        dump = []
        for table in ("apimart_meta", "apimart_batches", "apimart_workers", "apimart_items",
                      "apimart_rates"):
            dump += [str(dict(r)) for r in await conn.fetch(f"SELECT * FROM {table}")]
    finally:
        await conn.close()
    text = "\n".join(dump)
    assert KEY not in text and KEY[3:20] not in text
    assert any("'fingerprint'" in line for line in dump)


async def test_402_stops_the_whole_fleet_and_a_rerun_resumes(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(balance=6))
    reports: list[Any] = []

    async def worker(out: Path) -> None:
        async with session_for(server, max_concurrency=2, rps=40) as s:
            reports.append(await s.run_batch(reqs(30), out_dir=out, journal=pg_url,
                                             lease=LEASE))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, tmp_path / "a")
        tg.start_soon(worker, tmp_path / "b")
    assert server.stats.submissions == 6
    # Every worker stopped claiming: at most one refused POST per request slot.
    assert server.stats.rejected_submissions <= 4
    table = await rows(pg_url)
    states = [r["state"] for r in table]
    assert states.count("downloaded") == 6 and states.count("pending") == 24
    assert all(r.account_error is not None for r in reports)
    conn = await asyncpg.connect(pg_url)
    stopped = await conn.fetchval("SELECT stopped FROM apimart_batches WHERE name = 'default'")
    await conn.close()
    assert stopped is not None and ("402" in stopped or "balance" in stopped.lower())
    # Topped up: a re-run resumes the pending items, and pays for nothing twice.
    server.emulator.set_balance(None)
    async with session_for(server) as s:
        again = await s.run_batch(reqs(30), out_dir=tmp_path / "a", journal=pg_url,
                                  lease=LEASE)
    assert again.ok
    # Each video is reported where it is: in the folder of the worker that fetched it.
    assert_videos(again)
    assert {i.path.parent.name for i in again.items} == {"a", "b"}
    assert server.stats.submissions == 30 and server.stats.duplicate_submissions == 0


async def test_a_worker_leaving_mid_submission_leaves_it_ambiguous_not_orphaned(
    pg_url: str,
) -> None:
    async with PgJournal(pg_url, "b") as one:
        await one.add([row_for("a", 0), row_for("b", 1)])
        await one.register()
        assert await one.claim() is not None
        assert await one.claim() is not None
        await one.write("b", ItemState.SUBMITTED, task_id="task_b")
        # Stopped at once (a second Ctrl-C): "a" may be on the server.
        await one.leave("interrupted")
    table = await state_of(pg_url)
    assert table == {"a": ("ambiguous", None), "b": ("submitted", None)}


async def test_retry_failed_resubmits_failed_items_under_a_new_key(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    server = await make_server(EmulatorConfig(fail_rate=1.0))
    async with session_for(server) as s:
        first = await s.run_batch(reqs(3), out_dir=tmp_path, journal=pg_url, lease=LEASE)
        assert first.failed == 3
        again = await s.run_batch(reqs(3), out_dir=tmp_path, journal=pg_url, lease=LEASE)
        assert again.failed == 3 and server.stats.submissions == 3
        await s.run_batch(reqs(3), out_dir=tmp_path, journal=pg_url, lease=LEASE,
                          retry_failed=True)
    assert server.stats.submissions == 6 and server.stats.duplicate_submissions == 0


async def test_journal_status_reads_an_sqlite_journal_too(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from .conftest import cli

    server = await make_server()
    async with session_for(server) as s:
        report = await s.run_batch(reqs(4), out_dir=tmp_path)
    code, out, _ = await cli(capsys, "journal", "status", "--journal", str(report.journal),
                             "--json")
    assert code == 0
    (batch,) = json.loads(out)["batches"]
    assert batch["counts"] == {"downloaded": 4} and batch["total"] == 4
    code, out, err = await cli(capsys, "journal", "status", "--journal",
                               str(tmp_path / "nope.sqlite3"))
    assert code == 2 and "does not exist" in err


async def test_claim_reserves_inside_its_transaction(pg_url: str) -> None:
    """The seam for a fleet-wide spend cap: `reserve` runs in the claiming transaction,
    holding the item's lock; False leaves it pending, an error rolls everything back."""
    async with PgJournal(pg_url, "b") as one, PgJournal(pg_url, "b") as two:
        await one.add([row_for("a", 0), row_for("b", 1)])
        await one.register()
        await two.register()
        await one._fetch("CREATE TABLE spent (key text)")
        seen: list[str] = []

        async def refuse(conn: Any, row: Any) -> bool:
            seen.append(row.key)
            return False

        assert await one.claim(refuse) is None
        assert seen == ["a"] and (await state_of(pg_url))["a"] == ("pending", None)

        async def fail(conn: Any, row: Any) -> bool:
            await conn.execute("INSERT INTO spent VALUES ($1)", row.key)
            raise RuntimeError("budget row unreadable")

        with pytest.raises(RuntimeError):
            await one.claim(fail)
        assert await one._fetch("SELECT * FROM spent") == []
        assert (await state_of(pg_url))["a"] == ("pending", None)

        async def grant(conn: Any, row: Any) -> bool:
            # Meanwhile another worker skips this locked item and takes the next one.
            other = await two.claim()
            assert other is not None and other.row.key == "b"
            await conn.execute("INSERT INTO spent VALUES ($1)", row.key)
            return True

        claimed = await one.claim(grant)
        assert claimed is not None and claimed.row.key == "a"
        assert claimed.row.state is ItemState.SUBMITTING
        assert [r["key"] for r in await one._fetch("SELECT * FROM spent")] == ["a"]
        table = await state_of(pg_url)
        assert table["a"] == ("submitting", one.worker)
        assert table["b"] == ("submitting", two.worker)


async def test_a_worker_on_an_empty_batch_waits_a_moment_then_says_so(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    server = await make_server()
    async with session_for(server) as s:
        with pytest.raises(ValidationError, match="'nope' has no items"):
            await s.run_worker(journal=pg_url, batch="nope", out_dir=tmp_path, lease=0.3)
        with pytest.raises(ValidationError, match="postgresql:// URL"):
            await s.run_worker(journal=str(tmp_path / "j.sqlite3"), out_dir=tmp_path)

        async def fill_later() -> None:
            await anyio.sleep(0.2)
            async with PgJournal(pg_url, "late") as j:
                await j.add([row_for("a", 0)])
                # The worker that joined first finishes the batch's one item.

        async with anyio.create_task_group() as tg:
            tg.start_soon(fill_later)
            outcome = await s.run_worker(journal=pg_url, batch="late", out_dir=tmp_path,
                                         lease=2.0)
    assert outcome.submitted == 1 and outcome.counts == {"downloaded": 1}


async def test_max_spend_holds_across_three_workers(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    from apimart_async.testing import Price

    server = await make_server(EmulatorConfig(price=Price(per_task=0.5, per_second=0.1)))
    emu = server.emulator
    reports: list[Any] = []

    async def worker(out: Path) -> None:
        async with session_for(server, max_concurrency=4) as s:
            reports.append(await s.run_batch(reqs(30), out_dir=out, journal=pg_url,
                                             lease=LEASE, max_spend=7))

    async with anyio.create_task_group() as tg:
        for name in ("a", "b", "c"):
            tg.start_soon(worker, tmp_path / name)
    # Each item costs 1: the cap of 7 holds across the three. Nearly always exactly 7
    # are sent; on a loaded machine a balance read that overlaps another worker's items
    # can leave an estimate a little high, and the fleet stops at 6 (the safe side).
    assert emu.used_balance <= 7 + 1e-9
    sent = server.stats.submissions
    assert sent in (6, 7) and emu.used_balance == sent
    table = await rows(pg_url)
    assert [r["state"] for r in table].count("downloaded") == sent
    assert [r["state"] for r in table].count("pending") == 30 - sent
    for report in reports:
        assert report.spend is not None and report.spend.left_pending == 30 - sent
        assert report.spend.cap == 7
    # A worker joining without the flag keeps the batch's cap.
    async with session_for(server) as s:
        outcome = await s.run_worker(journal=pg_url, out_dir=tmp_path / "d", lease=LEASE)
    assert outcome.submitted == 0 and outcome.stopped_at_cap
    # A larger cap, from a new run, sends the rest; nothing is paid twice.
    async with session_for(server, max_concurrency=4) as s:
        again = await s.run_batch(reqs(30), out_dir=tmp_path / "a", journal=pg_url,
                                  lease=LEASE, max_spend=100)
    assert again.ok and server.stats.submissions == 30
    assert server.stats.duplicate_submissions == 0 and emu.used_balance == 30


async def test_every_output_of_a_task_is_downloaded_by_the_fleet(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    import json

    from apimart_async.testing import TaskPlan

    server = await make_server(EmulatorConfig(
        planner=lambda body, index: TaskPlan(duration=2, videos=2, images=1)))
    async with session_for(server) as s:
        report = await s.run_batch(reqs(2), out_dir=tmp_path, journal=pg_url, lease=LEASE)
    assert report.ok
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert len(names) == 6 and sum(n.endswith(".png") for n in names) == 2
    for row in await rows(pg_url):
        more = json.loads(row["outputs"])
        assert [m["index"] for m in more] == [1, 2]
        for entry in [{"path": row["path"], "sha256": row["sha256"]}, *more]:
            data = (tmp_path / entry["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]


@pytest.mark.parametrize("database_lost_it", [False, True])
async def test_a_fenced_worker_keeps_the_task_ids_it_gets_after_losing_its_lease(
    make_server: MakeServer, pg_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], database_lost_it: bool,
) -> None:
    """A worker declared dead while its POST is on the wire gets the task id back: its
    journal write is refused, yet the id is printed, appended to the recovery file and
    recorded for the fleet, which adopts the (ambiguous) item as submitted: downloaded
    by the next run, paid once. When the database could not take the record (it was
    the database that went away), the next run reads it from the recovery file."""
    from apimart_async import WorkerFencedError

    # Real seconds on every answer: the POST is on the wire while the worker dies.
    server = await make_server(EmulatorConfig(latency=1.5))
    out = tmp_path / "out"

    async def zombie() -> None:
        with pytest.raises(WorkerFencedError):
            async with session_for(server) as s:
                await s.run_batch(reqs(1), out_dir=out, journal=pg_url, lease=5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(zombie)
        with anyio.fail_after(10):
            while True:
                if any(r["state"] == "submitting" for r in await rows_or_none(pg_url)):
                    break
                await anyio.sleep(0.01)
        async with PgJournal(pg_url, "default", lease=5) as reaper:
            await reaper.register()
            conn = await asyncpg.connect(pg_url)
            # As if paused past its lease: its heartbeat is an hour old.
            await conn.execute("UPDATE apimart_workers SET heartbeat = heartbeat "
                               "- interval '1 hour' WHERE id <> $1", reaper.worker)
            await conn.close()
            assert len(await reaper.reap()) == 1
            assert [r["state"] for r in await rows(pg_url)] == ["ambiguous"]
            await reaper.leave("done")
    assert server.stats.submissions == 1
    [task] = list(server.emulator.tasks)
    err = capsys.readouterr().err
    assert task in err and "lost its lease" in err
    [line] = (out / ".apimart-recovered-task-ids").read_text().splitlines()
    assert f'"task_id": "{task}"' in line
    if database_lost_it:
        conn = await asyncpg.connect(pg_url)
        await conn.execute("DELETE FROM apimart_late_task_ids")
        await conn.close()
    # The next run adopts the item with its task: downloaded, not sent again.
    async with session_for(server) as s:
        report = await s.run_batch(reqs(1), out_dir=out, journal=pg_url, lease=5)
    assert report.ok and report.items[0].task_id == task
    assert server.stats.submissions == 1


async def rows_or_none(url: str) -> list[Any]:
    try:
        return await rows(url)
    except asyncpg.UndefinedTableError:
        return []


async def test_a_file_in_the_way_gets_the_next_tilde_name_and_is_kept(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    """The SQLite runner's naming: a file in the way (or another item's) makes the item
    `NAME~2`, its other outputs `NAME~2-2...`; `-N` numbers only one task's outputs.
    The file in the way is never overwritten."""
    from apimart_async import BatchItem
    from apimart_async.testing import TaskPlan

    server = await make_server(EmulatorConfig(
        planner=lambda body, index: TaskPlan(duration=2, videos=2, images=0)))
    (tmp_path / "fox.mp4").write_bytes(b"mine")
    async with session_for(server) as s:
        report = await s.run_batch([BatchItem(request=VideoRequest("a fox"), name="fox")],
                                   out_dir=tmp_path, journal=pg_url, lease=LEASE)
    assert report.ok
    assert (tmp_path / "fox.mp4").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [
        "fox.mp4", "fox~2-2.mp4", "fox~2.mp4"]
    assert report.items[0].path == tmp_path / "fox~2.mp4"


async def test_a_rerun_downloads_again_a_deleted_video(
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    """As in SQLite mode: a finished batch re-run notices a video deleted from its
    folder and downloads it again (the task is paid: nothing is sent)."""
    server = await make_server()
    async with session_for(server) as s:
        first = await s.run_batch(reqs(2), out_dir=tmp_path, journal=pg_url, lease=LEASE)
    assert first.ok
    gone = first.items[0].path
    gone.unlink()
    async with session_for(server) as s:
        again = await s.run_batch(reqs(2), out_dir=tmp_path, journal=pg_url, lease=LEASE)
    assert again.ok and server.stats.submissions == 2
    assert again.items[0].path == gone
    assert_videos(again)


async def test_journal_status_refuses_a_newer_schema_and_an_unknown_batch(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from .conftest import cli

    async with PgJournal(pg_url, "june"):
        pass
    code, out, err = await cli(capsys, "journal", "status", "--journal", pg_url,
                               "--batch", "juen")
    assert code == 2 and "no batch 'juen'" in err and "'june'" in err
    code, out, err = await cli(capsys, "journal", "status", "--journal", pg_url,
                               "--batch", "june")
    assert code == 0 and "batch june" in out
    conn = await asyncpg.connect(pg_url)
    await conn.execute("UPDATE apimart_meta SET value = $1 WHERE name = 'schema_version'",
                       str(PG_SCHEMA_VERSION + 1))
    await conn.close()
    code, out, err = await cli(capsys, "journal", "status", "--journal", pg_url)
    assert code == 2 and "newer apimart-async" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["june\n", "ju\x1bne", ""])
def test_a_batch_name_with_control_characters_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="batch"):
        PgJournal("postgresql://localhost/x", name)


async def test_a_database_gone_mid_run_is_one_error_naming_it(
    make_server: MakeServer, pg_cluster: Any, tmp_path: Path
) -> None:
    """The journal's server stops while the worker follows its tasks: one
    `JournalUnavailableError` naming the database, not asyncpg's internals."""
    from apimart_async import JournalUnavailableError

    from .pgcluster import Cluster

    server = await make_server(EmulatorConfig(duration=(30, 40)), speed=10)
    own = Cluster(pg_cluster.bindir).__enter__()
    stopped = False
    try:
        url = own.new_database()

        async def stop_when_submitted() -> None:
            nonlocal stopped
            with anyio.fail_after(30):
                while True:
                    if any(r["state"] == "submitted" for r in await rows_or_none(url)):
                        break
                    await anyio.sleep(0.01)
            stopped = True
            await anyio.to_thread.run_sync(own.__exit__)

        caught: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_when_submitted)
            try:
                async with session_for(server) as s:
                    await s.run_batch(reqs(2), out_dir=tmp_path, journal=url, lease=5)
            except JournalUnavailableError as exc:
                caught = exc
    finally:
        if not stopped:
            own.__exit__()
    assert isinstance(caught, JournalUnavailableError)
    message = str(caught)
    assert "cannot be reached" in message and str(own.port) in message
    assert "\n" not in message


async def test_a_database_that_never_answers_is_refused_by_name_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host that takes the connection and says nothing (a wrong port, a hung server):
    a clear error naming it (without its password) after the connect bound, for the
    journal and for `journal status`, not asyncpg's 60 s of silence and a traceback."""
    from apimart_async._batch import pg

    monkeypatch.setattr(pg, "CONNECT_TIMEOUT", 0.3)  # the bound, shortened: 10 s by default
    held: list[Any] = []

    async def hold(stream: Any) -> None:
        async with stream:
            held.append(stream)  # taken, never answered
            await anyio.sleep_forever()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        url = f"postgresql://worker:hunter2@127.0.0.1:{port}/jobs"
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, hold)
            for attempt in (lambda: PgJournal(url, "b").__aenter__(),
                            lambda: pg.fleet_status(url, None)):
                # Unreachable (exit 1), like a database lost mid-run; not bad input.
                with anyio.fail_after(5), pytest.raises(JournalUnavailableError) as info:
                    await attempt()
                message = str(info.value)
                assert "no answer within 0.3 s" in message and str(port) in message
                assert "hunter2" not in message
            tg.cancel_scope.cancel()
    assert held  # the connections were taken: the bound, not a refusal, ended them


async def test_a_later_run_sets_the_batch_budgets_item_cost(pg_url: str) -> None:
    # The budget row outlives runs: the latest run's cap and known price hold for it.
    async with PgJournal(pg_url, "priced") as jr:
        first = await jr.start_budget(5, 0.0)
        assert first.item_cost is None
        again = await jr.start_budget(7, 0.0, 2.5)
        assert again.cap == 7 and again.item_cost == 2.5
        recorded = await jr.budget()
        assert recorded is not None and recorded.item_cost == 2.5
        kept = await jr.start_budget(8, 0.0)  # no price given: the recorded one stays
        assert kept.item_cost == 2.5
