"""The PostgreSQL journal (#13): one batch shared by many workers, on a real server
(tests/pgcluster.py), never a mock. Leases here are short real seconds: a lease is
judged on the database's clock, which no test clock can step."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from apimart_async import ItemState, ValidationError, VideoRequest
from apimart_async._batch.pg import PG_SCHEMA_VERSION, PgJournal
from apimart_async.testing import video_bytes

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
    make_server: MakeServer, pg_url: str, tmp_path: Path
) -> None:
    server = await make_server()
    reports: list[Any] = []

    async def worker(out: Path) -> None:
        async with session_for(server, max_concurrency=4) as s:
            reports.append(await s.run_batch(reqs(40), out_dir=out, journal=pg_url,
                                             lease=LEASE))

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
