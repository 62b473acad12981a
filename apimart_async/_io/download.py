"""Downloading result videos: resumable, verified, atomic, and keyless.

The file host is not the API host: nothing but `Range`/`If-Range` and a User-Agent
is ever sent there. Bytes go to a hidden ``.NAME.part`` beside the destination, so
a destination path is either absent or whole. An existing file is never replaced
by different bytes unless the caller says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit, urlunsplit

import anyio
import attrs

from .._core.config import DownloadPolicy, check_file_url
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
from .http import USER_AGENT, Http, NonPublicAddressError, StreamedResponse
from .stats import SessionStats

__all__ = ["DownloadResult", "Downloader", "meta_path", "part_path", "sniff"]

log = logging.getLogger("apimart_async")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED = re.compile(r"bytes \*/(\d+)")


@attrs.frozen(kw_only=True)
class DownloadResult:
    """A task's files on disk: where, how big, their sha256, and what it took to get them.

    `path`, `size`, `sha256`, `kind` and `index` describe the task's first output (for a
    one-video task, the whole result); `more` holds one `DownloadResult` per further
    output (a task's second video, its images...), and `files` / `paths` list them all.
    """

    task_id: str
    path: Path
    size: int
    sha256: str
    resumed: int = 0
    restarted: int = 0
    refreshed: bool = False
    #: "video" or "image" (see `Task.outputs`).
    kind: str = "video"
    #: The output's position in `Task.outputs`.
    index: int = 0
    more: tuple[DownloadResult, ...] = ()

    @property
    def files(self) -> tuple[DownloadResult, ...]:
        """One result per file saved, the first output first."""
        return (attrs.evolve(self, more=()), *self.more)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file saved, in output order."""
        return (self.path, *(f.path for f in self.more))


# attrs builds `__init__` before the class's name exists, and its annotation of `more`
# names the class: resolved here, so `typing.get_type_hints` reads it (autodoc, tools).
attrs.resolve_types(DownloadResult)
DownloadResult.__init__.__annotations__["more"] = attrs.fields(DownloadResult).more.type


def part_path(dest: Path) -> Path:
    """Where the bytes of `dest` collect until they are whole."""
    return dest.with_name(f".{dest.name}.part")


class _Restart(Exception):
    """The host did not continue where we asked; start the file over."""


class _Again(Exception):
    """This attempt failed in a way another attempt may not (too slow, no framing)."""


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_SNIFF = 16
# ISO base media (MP4, MOV) files open with a box: its type is bytes 4..8.
_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"})


def sniff(head: bytes) -> str | None:
    """The media container `head` starts with, or None when it is not a video or image."""
    if len(head) >= 8 and head[4:8] in _BOXES:
        return "MP4/MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM/Matroska"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    return None


def _what(head: bytes) -> str:
    """What arrived instead of media, for the error message (never the bytes themselves)."""
    text = head.lstrip().lower()
    if text.startswith(b"<"):
        return "an HTML/XML page"
    if head.startswith(b"\x1f\x8b"):
        return "gzip data"
    if text.startswith((b"{", b"[")):
        return "JSON"
    if not head:
        return "an empty body"
    return f"bytes starting {head[:8].hex(' ')}"


def meta_path(dest: Path) -> Path:
    """The sidecar saying which task, URL and version the bytes of `part_path(dest)` are."""
    return dest.with_name(f".{dest.name}.part.meta")


def _identity(url: str) -> str:
    """A result link without its query: a refreshed link for the same file keeps it."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path, "", ""))


def _safe_url(url: str) -> str:
    """A URL for messages: no query (signed links carry tokens there), no credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:  # (not a URL at all: its start, for the message)
        return url[:80]
    return urlunsplit((parts.scheme, host, parts.path, "", "")) if host else url[:80]


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_meta(
    path: Path, task_id: str, url: str, validator: str | None, total: int | None
) -> None:
    path.write_text(json.dumps(
        {"task_id": task_id, "url": _identity(url), "validator": validator, "total": total}
    ), "utf-8")


def _validator(resp: StreamedResponse) -> str | None:
    return resp.headers.get("etag") or resp.headers.get("last-modified")


def _announced_total(resp: StreamedResponse) -> int | None:
    """The whole file's size as this answer states it: a 200's Content-Length, or a
    206's numeric Content-Range total (``/*`` states nothing)."""
    if resp.status == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", ""))
        return int(match.group(3)) if match and match.group(3) != "*" else None
    length = resp.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


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
        policy: DownloadPolicy | None = None,
    ) -> None:
        self._http = http
        self._limit = anyio.Semaphore(concurrency)
        self._retry = retry
        self._clock = clock
        self._refresh = refresh
        self._stats = stats
        self._policy = policy or DownloadPolicy()

    async def download(
        self, task: Task, dest: Path, *, overwrite: bool = False, index: int = 0
    ) -> DownloadResult:
        """Fetch output `index` of `task` (see `Task.outputs`) into `dest`
        (see `Session.download`)."""
        if task.status is not TaskStatus.COMPLETED:
            ended = task.status.is_terminal
            raise DownloadError(
                task.id, f"task is {task.status.value}, not completed: "
                + ("it has no video" if ended else "wait until it completes"),
                resumable=False,
            )
        async with self._limit:
            deadline = self._policy.deadline
            with self._clock.move_on_at(self._clock.now() + (deadline or math.inf)) as scope:
                try:
                    return await self._download(task, dest, overwrite, index)
                except DownloadError:
                    # Nothing kept of a refused body (an HTML page, an unwanted encoding).
                    if await _size(part_path(dest)) == 0:
                        await anyio.Path(part_path(dest)).unlink(missing_ok=True)
                        await anyio.Path(meta_path(dest)).unlink(missing_ok=True)
                    raise
            # Only the scope's own deadline lands here; the .part stays for a later resume.
            assert scope.cancelled_caught
            raise DownloadError(task.id, f"not finished within its deadline of {deadline:g} s")

    async def _fresh(self, task: Task, index: int) -> Task:
        fresh = await self._refresh(task.id)
        if not fresh.outputs:
            raise ResultExpiredError(
                task.id, "the completed task's answer carries no result link")
        if len(fresh.outputs) <= index or fresh.is_expired(self._clock.wall()):
            raise ResultExpiredError(task.id, "result link expired and no fresh one was given")
        log.info("task %s: result link refreshed", task.id)
        return fresh

    def _check_url(self, task_id: str, url: str) -> None:
        problem = check_file_url(url, self._policy.allowed_hosts)
        if problem is not None:
            raise DownloadError(task_id, f"result link {_safe_url(url)!r} {problem}")

    async def _download(
        self, task: Task, dest: Path, overwrite: bool, index: int
    ) -> DownloadResult:
        refreshed = False
        if len(task.outputs) <= index or task.is_expired(self._clock.wall()):
            task, refreshed = await self._fresh(task, index), True
        self._check_url(task.id, task.outputs[index].url)
        await anyio.to_thread.run_sync(lambda: dest.parent.mkdir(parents=True, exist_ok=True))
        part, meta = part_path(dest), meta_path(dest)
        validator, known_total = await anyio.to_thread.run_sync(
            self._claim_partial, task.id, task.outputs[index].url, part, meta
        )
        url, hops = task.outputs[index].url, 0
        resumed = restarted = failures = 0
        while True:
            offset = await _size(part)
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if validator:
                    headers["If-Range"] = validator
            # Opened before the request: once the body flows, reads are the only awaits,
            # so bytes that arrive just before a cut are written, not dropped.
            handle = await anyio.to_thread.run_sync(_open_append, part)
            try:
                self._check_url(task.id, url)
                async with self._http.stream(url, headers=headers) as resp:
                    if resp.status in _REDIRECTS:
                        hops += 1
                        target = resp.headers.get("location")
                        if not target or hops > _MAX_REDIRECTS:
                            raise DownloadError(task.id, f"file host redirected {hops} times "
                                                         "or without a Location")
                        try:
                            url = urljoin(url, target)  # checked before it is fetched
                        except ValueError:
                            raise DownloadError(task.id, "file host redirected to a Location "
                                                         "that is not a URL") from None
                        continue
                    if resp.status in (401, 403, 410):
                        if refreshed:
                            raise ResultExpiredError(task.id, f"file host answered {resp.status}")
                        task, refreshed = await self._fresh(task, index), True
                        url, hops = task.outputs[index].url, 0
                        continue
                    if offset and resp.status == 206:
                        resumed += 1  # the host continues where the last attempt stopped
                    if resp.status == 200 or (resp.status == 206 and not offset):
                        # Taken before the body and written beside it before its first
                        # byte: a later resume must name (If-Range) the version its bytes
                        # came from, and a partial of another task or link is never resumed.
                        validator, known_total = _validator(resp), _announced_total(resp)
                        # No await between the headers and the body: bytes that come
                        # just before a cut must be read before the cut is seen (a tiny
                        # write, like the chunk writes).
                        _write_meta(meta, task.id, task.outputs[index].url, validator,
                                    known_total)
                    elif offset and resp.status in (206, 416):
                        # A resume continues one version of one file: If-Range is the
                        # host's promise of that, and a host may not keep it. Bytes of
                        # another version (validator) or size (total) are never spliced.
                        now_total = (_announced_total(resp) if resp.status == 206 else
                                     _unsatisfied_total(resp))
                        if (known_total is None or now_total != known_total
                                or (resp.status == 206 and _validator(resp) != validator)):
                            log.info("task %s: file host answered a resume for another "
                                     "version or size of the file; starting over", task.id)
                            raise _Restart
                    total = await self._receive(task.id, resp, handle, offset)
            except NonPublicAddressError as exc:
                raise DownloadError(
                    task.id, f"result link {_safe_url(url)!r} {exc}") from None
            except _Restart:
                restarted += 1
                if restarted > self._retry.max_attempts:
                    raise DownloadError(task.id, f"file host did not continue one version "
                                                 f"of the file ({restarted} restarts)") from None
                await anyio.Path(part).unlink(missing_ok=True)
                continue
            except (APIConnectionError, ServerError, _Again) as exc:
                handle.close()
                grown = await _size(part) > offset
                # A stalled drip grows, yet is a failure: it must not be waited on forever.
                failures = 0 if grown and not isinstance(exc, _Again) else failures + 1
                if failures >= self._retry.max_attempts:
                    raise DownloadError(
                        task.id, f"gave up after {failures} failures: {exc}"
                    ) from None
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
            kind=task.outputs[index].kind, index=index,
        )

    @staticmethod
    def _claim_partial(
        task_id: str, url: str, part: Path, meta: Path
    ) -> tuple[str | None, int | None]:
        """The validator and total size to resume `part` with, after proving it is this
        task's and link's; a partial that cannot be proven so is deleted (start over)."""
        if not part.exists():
            meta.unlink(missing_ok=True)
            return None, None
        record = _read_meta(meta)
        total = None if record is None else record.get("total")
        if (record is not None and record.get("task_id") == task_id
                and record.get("url") == _identity(url)
                and isinstance(record.get("validator"), str) and record["validator"]
                and isinstance(total, int) and not isinstance(total, bool) and total > 0):
            return str(record["validator"]), total
        log.info("task %s: %s is not provably this task's partial download; starting over",
                 task_id, part.name)
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return None, None

    async def _receive(
        self, task_id: str, resp: StreamedResponse, handle: BinaryIO, offset: int
    ) -> int | None:
        """Append the body to `handle`; returns the file's expected total size, if known.

        Completeness must be provable: by ``Content-Length``, a ``Content-Range`` total, or
        chunked framing (whose end marker a cut body lacks). An unframed body is refused.
        """
        status = resp.status
        if status == 416:
            match = _UNSATISFIED.fullmatch(resp.headers.get("content-range", ""))
            if match and int(match.group(1)) == offset:
                return offset  # already whole: a previous run was cut after the last byte
            raise _Restart
        if status == 429:
            self._stats.rate_limited += 1  # a 429 met, as on the API host
        if status == 429 or status >= 500:
            raise ServerError(f"file host answered {status}", status=status)
        if status not in (200, 206):
            raise DownloadError(task_id, f"file host answered {status}")
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise DownloadError(task_id, f"file host sent a {encoding!r}-encoded body; "
                                         "only identity was accepted")
        policy = self._policy
        length = resp.headers.get("content-length")
        body_length = int(length) if length and length.isdigit() else None
        total: int | None
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != offset:
                raise _Restart
            if match.group(3) == "*":
                # Without the whole size, no answer could ever prove the file complete.
                raise _Again("file host did not say the file's size (Content-Range "
                             "total '*'): its end could not be told")
            total, start = int(match.group(3)), offset
        else:
            if offset:
                log.info("task %s: file host ignored Range; starting over", task_id)
            total, start = body_length, 0
            handle.seek(0)
            handle.truncate()
        chunked = "chunked" in resp.headers.get("transfer-encoding", "").lower()
        if total is None and body_length is None and not chunked:
            raise _Again("file host sent a body with no length and no framing: "
                         "its end could not be told from a cut")
        if (total or 0) > policy.max_bytes:
            raise DownloadError(task_id, f"file host announced {total:,} bytes, more than "
                                         f"max_bytes ({policy.max_bytes:,})")
        limit = min(policy.max_bytes, total if total is not None else policy.max_bytes)
        written = start
        head = b"" if start == 0 else None
        window_start, window_bytes = self._clock.now(), 0
        async for chunk in resp.chunks():
            if written + len(chunk) > limit:
                what = "the length it announced" if limit == total else "max_bytes"
                # What came is not the file: nothing of it is kept for a resume.
                handle.seek(0)
                handle.truncate()
                raise DownloadError(task_id, f"file host sent more than {what} "
                                             f"({limit:,} bytes); stopped")
            if head is not None:
                # Nothing is written before the first bytes prove the media type.
                head += chunk
                if len(head) < _SNIFF:
                    continue
                self._check_media(task_id, head)
                chunk, head = head, None
            # A page-cache write of one chunk takes microseconds: no thread hop here.
            handle.write(chunk)
            written += len(chunk)
            window_bytes += len(chunk)
            now = self._clock.now()
            if now - window_start >= policy.low_speed_time:
                if window_bytes < policy.low_speed_limit * (now - window_start):
                    raise _Again(f"slower than {policy.low_speed_limit} bytes/s for "
                                 f"{policy.low_speed_time:g} s")
                window_start, window_bytes = now, 0
        if head is not None:
            self._check_media(task_id, head)
            handle.write(head)
        return total

    @staticmethod
    def _check_media(task_id: str, head: bytes) -> None:
        if sniff(head) is None:
            raise DownloadError(task_id, f"file host sent {_what(head)}, not a video or image; "
                                         "nothing was saved")


def _unsatisfied_total(resp: StreamedResponse) -> int | None:
    match = _UNSATISFIED.fullmatch(resp.headers.get("content-range", ""))
    return int(match.group(1)) if match else None


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
        meta_path(dest).unlink(missing_ok=True)
        if not (same and _digest(dest) == digest):
            raise FileExistsError(str(dest))
        return digest
    os.replace(part, dest)
    meta_path(dest).unlink(missing_ok=True)
    return digest
