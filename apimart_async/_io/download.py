"""Downloading result videos: resumable, verified, atomic, and keyless.

The file host is not the API host: nothing but `Range`/`If-Range` and a User-Agent
is ever sent there. Bytes go to a hidden ``.NAME.part`` beside the destination, so
a destination path is either absent or whole. An existing file is never replaced
by different bytes unless the caller says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import anyio
import attrs

from .._core.errors import (
    APIConnectionError,
    DownloadError,
    ResultExpiredError,
    ServerError,
    ValidationError,
)
from .._core.models import Task, TaskStatus
from .._core.retry import RetryPolicy, backoff
from .clock import Clock
from .http import USER_AGENT, Http, StreamedResponse
from .stats import SessionStats

__all__ = ["DownloadResult", "Downloader", "part_path"]

log = logging.getLogger("apimart_async")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED = re.compile(r"bytes \*/(\d+)")


@attrs.frozen(kw_only=True)
class DownloadResult:
    """A video on disk: where, how big, its sha256, and what it took to get it."""

    task_id: str
    path: Path
    size: int
    sha256: str
    resumed: int = 0
    restarted: int = 0
    refreshed: bool = False


def part_path(dest: Path) -> Path:
    """Where the bytes of `dest` collect until they are whole."""
    return dest.with_name(f".{dest.name}.part")


class _Restart(Exception):
    """The host did not continue where we asked; start the file over."""


class Downloader:
    """Downloads under their own concurrency limit, separate from API requests."""

    def __init__(
        self,
        *,
        http: Http,
        concurrency: int,
        retry: RetryPolicy,
        clock: Clock,
        refresh: Callable[[str], Awaitable[Task]],
        stats: SessionStats,
    ) -> None:
        self._http = http
        self._limit = anyio.Semaphore(concurrency)
        self._retry = retry
        self._clock = clock
        self._refresh = refresh
        self._stats = stats

    async def download(self, task: Task, dest: Path, *, overwrite: bool = False) -> DownloadResult:
        """Fetch `task`'s video into `dest` (see `Session.download`)."""
        if task.status is not TaskStatus.COMPLETED:
            ended = task.status.is_terminal
            raise DownloadError(
                task.id, f"task is {task.status.value}, not completed: "
                + ("it has no video" if ended else "wait until it completes"),
                resumable=False,
            )
        async with self._limit:
            return await self._download(task, dest, overwrite)

    async def _fresh(self, task: Task) -> Task:
        fresh = await self._refresh(task.id)
        if not fresh.video_urls or fresh.is_expired(self._clock.wall()):
            raise ResultExpiredError(task.id, "result link expired and no fresh one was given")
        log.info("task %s: result link refreshed", task.id)
        return fresh

    async def _download(self, task: Task, dest: Path, overwrite: bool) -> DownloadResult:
        refreshed = False
        if not task.video_urls or task.is_expired(self._clock.wall()):
            task, refreshed = await self._fresh(task), True
        await anyio.to_thread.run_sync(lambda: dest.parent.mkdir(parents=True, exist_ok=True))
        part = part_path(dest)
        etag: str | None = None
        resumed = restarted = failures = 0
        while True:
            offset = await _size(part)
            headers = {"User-Agent": USER_AGENT}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if etag:
                    headers["If-Range"] = etag
            # Opened before the request: once the body flows, reads are the only awaits,
            # so bytes that arrive just before a cut are written, not dropped.
            handle = await anyio.to_thread.run_sync(_open_append, part)
            try:
                async with self._http.stream(task.video_urls[0], headers=headers) as resp:
                    if resp.status in (401, 403, 410):
                        if refreshed:
                            raise ResultExpiredError(task.id, f"file host answered {resp.status}")
                        task, refreshed = await self._fresh(task), True
                        continue
                    if offset and resp.status == 206:
                        resumed += 1  # the host continues where the last attempt stopped
                    if resp.status in (200, 206):
                        # Taken before the body: a resume after a cut must name (If-Range)
                        # the version its bytes came from, or a changed file gets spliced.
                        etag = resp.headers.get("etag") or etag
                    total = await self._receive(task.id, resp, handle, offset)
            except _Restart:
                restarted += 1
                await anyio.Path(part).unlink(missing_ok=True)
                continue
            except (APIConnectionError, ServerError) as exc:
                handle.close()
                grown = await _size(part) > offset
                failures = 0 if grown else failures + 1
                if failures >= self._retry.max_attempts:
                    raise DownloadError(
                        task.id, f"gave up after {failures} failures: {exc}"
                    ) from exc
                log.info("task %s: download interrupted at %d bytes (%s); resuming",
                         task.id, await _size(part), type(exc).__name__)
                await self._clock.delay(backoff(self._retry, failures or 1))
                continue
            finally:
                handle.close()
            size = await _size(part)
            if total is not None and size != total:
                # A short answer that brought bytes is progress (a host may serve a
                # range in pieces); only answers that bring nothing count as failures.
                failures = 0 if size > offset else failures + 1
                if failures >= self._retry.max_attempts:
                    raise DownloadError(task.id, f"got {size} of {total} bytes")
                continue
            break
        try:
            digest = await anyio.to_thread.run_sync(_finish, part, dest, overwrite)
        except FileExistsError:
            raise ValidationError(
                "dest", f"{dest} exists and holds something else: not replaced (choose "
                "another path, or allow overwriting: overwrite=True, --overwrite)",
            ) from None
        self._stats.downloads += 1
        self._stats.bytes_downloaded += size
        return DownloadResult(
            task_id=task.id, path=dest, size=size, sha256=digest,
            resumed=resumed, restarted=restarted, refreshed=refreshed,
        )

    async def _receive(
        self, task_id: str, resp: StreamedResponse, handle: BinaryIO, offset: int
    ) -> int | None:
        """Append the body to `handle`; returns the file's expected total size, if known."""
        status = resp.status
        if status == 416:
            match = _UNSATISFIED.fullmatch(resp.headers.get("content-range", ""))
            if match and int(match.group(1)) == offset:
                return offset  # already whole: a previous run was cut after the last byte
            raise _Restart
        if status == 429 or status >= 500:
            raise ServerError(f"file host answered {status}", status=status)
        if status not in (200, 206):
            raise DownloadError(task_id, f"file host answered {status}")
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != offset:
                raise _Restart
            total = None if match.group(3) == "*" else int(match.group(3))
        else:
            if offset:
                log.info("task %s: file host ignored Range; starting over", task_id)
            length = resp.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            handle.seek(0)
            handle.truncate()
        async for chunk in resp.chunks():
            # A page-cache write of one chunk takes microseconds: no thread hop here.
            handle.write(chunk)
        return total


def _open_append(path: Path) -> BinaryIO:
    return path.open("ab")


async def _size(path: Path) -> int:
    try:
        return (await anyio.Path(path).stat()).st_size
    except FileNotFoundError:
        return 0


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _finish(part: Path, dest: Path, overwrite: bool) -> str:
    """Hash, flush to disk and move into place; returns the sha256 hex digest. A file
    already at `dest` is replaced only with `overwrite`, or when it holds these very
    bytes (fetching a video twice is harmless); else FileExistsError."""
    digest = _digest(part)
    if not overwrite and dest.exists():
        same = dest.is_file() and dest.stat().st_size == part.stat().st_size
        part.unlink()
        if not (same and _digest(dest) == digest):
            raise FileExistsError(str(dest))
        return digest
    os.replace(part, dest)
    return digest
