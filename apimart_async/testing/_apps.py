"""The emulator's two `aiohttp.web` applications: the API host and the file host.

Both read and change the state of one `Emulator`; what a request meets (faults, rate
limit, auth) is decided here, what a task is in `_tasks`.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import math
import re
import socket
import struct
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
from aiohttp import web

from ._faults import Fault
from ._stats import EmulatorStats, RequestRecord
from ._tasks import output_names, task_of_file

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["CLOCK_PATH", "REQUESTS_PATH", "STATS_PATH", "TIME_HEADER", "api_app", "file_app"]

STATS_PATH = "/_emulator/stats"
REQUESTS_PATH = "/_emulator/requests"
CLOCK_PATH = "/_emulator/clock"
TIME_HEADER = "X-Emulator-Time"
"""On every answer of both hosts: the emulator's clock (`Clock.now`, API seconds) then."""
CONTROL_PREFIX = "/_emulator/"

# Per-request notes from the handlers for the request log.
_FAULT: web.RequestKey[Fault | None] = web.RequestKey("apimart_emulator_fault")
_DROPPED: web.RequestKey[bool] = web.RequestKey("apimart_emulator_dropped", bool)
_REQUEST_ID: web.RequestKey[str] = web.RequestKey("apimart_emulator_request_id", str)

_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>"
)

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


#: The largest submission body the emulator reads: four images at the documented 10 MB,
#: base64-encoded, and the rest of the request.
MAX_SUBMISSION_BYTES = 64 << 20


def api_app(emulator: Emulator) -> web.Application:
    """The API host: ``POST /v1/videos/generations``, ``GET /v1/tasks/{id}`` and
    ``GET /v1/balance`` (also at ``/balance``)."""
    host = _ApiHost(emulator)
    # The log is outermost: it sees the 401s and 429s the host's middleware answers.
    # A submission may carry images as data: URIs of up to 10 MB each (as documented),
    # ~13.4 MB once base64-encoded: aiohttp's default 1 MiB cap would refuse them (413).
    app = web.Application(middlewares=[_request_logger(emulator, request_ids=True),
                                       host.middleware],
                          client_max_size=MAX_SUBMISSION_BYTES)
    # On every answer the API host sends, faults and aiohttp's own 500s included.
    app.on_response_prepare.append(_send_request_id)
    app.on_response_prepare.append(_send_time(emulator))
    app.router.add_post("/v1/videos/generations", host.submit, name="submit")
    app.router.add_get("/v1/tasks/{task_id}", host.get_task, name="task")
    app.router.add_get("/v1/balance", host.balance, name="balance")
    app.router.add_get("/balance", host.balance, name="balance_alias")
    app.router.add_get(STATS_PATH, host.stats)
    app.router.add_post(STATS_PATH + "/reset", host.reset_stats)
    app.router.add_get(REQUESTS_PATH, host.requests)
    app.router.add_get(CLOCK_PATH, host.clock)
    return app


def file_app(emulator: Emulator) -> web.Application:
    """The file host serving result videos, with Range, ETag and expiry."""
    host = _FileHost(emulator)
    app = web.Application(middlewares=[_request_logger(emulator)])
    app.on_response_prepare.append(_send_time(emulator))
    app.router.add_get("/files/{name}", host.download, name="download")
    return app


def _send_time(emulator: Emulator) -> Any:
    async def send_time(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[TIME_HEADER] = f"{emulator.clock.now():.6f}"

    return send_time


async def _send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(_REQUEST_ID)
    if request_id is not None:
        response.headers["x-request-id"] = request_id


def _request_logger(emulator: Emulator, *, request_ids: bool = False) -> Any:
    """A middleware adding one `RequestRecord` per request to the emulator's log (and,
    with `request_ids`, giving each request the id its answer's ``x-request-id`` carries)."""

    @web.middleware
    async def log_request(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            control: web.StreamResponse = await handler(request)
            return control
        arrived = emulator.clock.now()
        request_id = f"req_{uuid.uuid4().hex[:24]}" if request_ids else None
        if request_id is not None:
            request[_REQUEST_ID] = request_id
        status: int | None = None
        try:
            response: web.StreamResponse = await handler(request)
            status = None if request.get(_DROPPED) else response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except Exception:
            # A bug in a user's planner (or ours): aiohttp answers 500.
            status = 500
            raise
        finally:
            emulator.log_request(RequestRecord(
                # /balance is /v1/balance under another name (aiohttp names are unique).
                route="balance" if request.match_info.route.name == "balance_alias"
                else request.match_info.route.name,
                method=request.method,
                path=request.path,
                status=status,
                fault=request.get(_FAULT),
                authorization="Authorization" in request.headers,
                idempotency_key=request.headers.get("Idempotency-Key"),
                range=request.headers.get("Range"),
                time=arrived,
                accept_encoding=request.headers.get("Accept-Encoding"),
                request_id=None if status is None else request_id,
            ))

    return log_request


def authorized(request: web.Request, api_key: str | None) -> str | None:
    """The presented key if it is accepted (`api_key`, or any when None), else None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if api_key is not None and token != api_key:
        return None
    return token


async def apply(emulator: Emulator, request: web.Request,
                fault: Fault | None) -> web.StreamResponse | None:
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
        location = fault.location.replace("{files}", emulator.file_base_url)
        return web.Response(status=fault.status, headers={"Location": location})
    if fault.kind == "html":
        return web.Response(status=fault.status, body=_HTML_PAGE, content_type="text/html")
    if fault.kind == "storm":
        emulator.start_storm(fault)
        emulator.stats.rate_limited += 1
        return _storm_answer(fault.retry_after)
    if fault.kind == "status":
        if fault.body_code is not None:
            return web.json_response(
                {"code": fault.body_code, "msg": f"error {fault.body_code}", "data": None}
            )
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        message = _REASONS.get(fault.status, "Error")
        if fault.hard:  # echo_key: the token, as sent, in a name, a value and the message
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if token and _HEADER_NAME.fullmatch(token):
                headers[f"X-Echo-{token}"] = "1"
            headers["X-Echo"] = token
            message = f"{message}: your key {token} was refused"
        return _error(fault.status, message, "api_error", headers=headers)
    return None


def _storm_answer(retry_after: str | None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return _error(429, "Rate limit exceeded", "rate_limit_error", headers=headers)


class _ApiHost:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.emulator.stats_dict())

    async def requests(self, request: web.Request) -> web.Response:
        return web.json_response([
            {**attrs.asdict(r, recurse=False), "fault": r.fault.describe() if r.fault else None}
            for r in self.emulator.request_log
        ])

    async def clock(self, request: web.Request) -> web.Response:
        clock = self.emulator.clock
        return web.json_response({"now": clock.now(), "wall": clock.wall(),
                                  "speed": clock.speed})

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.emulator.stats = EmulatorStats()
        return web.json_response({"reset": True})

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            # The control endpoints are for test harnesses: no auth, latency or limits.
            control: web.StreamResponse = await handler(request)
            return control
        emulator = self.emulator
        stats = emulator.stats
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        stats.user_agents[request.headers.get("User-Agent", "")] += 1
        try:
            if emulator.config.latency:
                await asyncio.sleep(emulator.config.latency)
            storming, hint = emulator.storming()
            if storming:
                # A gateway's storm (`Fault.storm`) refuses before the rate limit.
                stats.rate_limited += 1
                return _storm_answer(hint)
            wait = emulator.admit()
            if wait is not None:
                stats.rate_limited += 1
                return _error(429, "Rate limit exceeded", "rate_limit_error",
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})
            unmatched = request.match_info.http_exception
            if unmatched is not None:
                # No such endpoint (or method): say so, whatever the key; a 401 here sent
                # users looking for a key problem on a mistyped path.
                return _error(unmatched.status,
                              f"no such endpoint: {request.method} {request.path}",
                              "not_found_error" if unmatched.status == 404
                              else "invalid_request_error")
            token = authorized(request, emulator.config.api_key)
            if token is None:
                presented = request.headers.get("Authorization", "").partition(" ")[2]
                # Like many real APIs, echo what was presented: the SDK must scrub it.
                return _error(401, f"Invalid API key provided: {presented or '(none)'}",
                              "authentication_error")
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            stats.in_flight -= 1

    async def submit(self, request: web.Request) -> web.StreamResponse:
        emulator = self.emulator
        emulator.stats.requests["submit"] += 1
        emulator.stats.idempotency_keys.append(request.headers.get("Idempotency-Key"))
        fault = request[_FAULT] = emulator.next_fault("submit")
        answer = await apply(emulator, request, fault)
        if answer is not None:
            return answer
        if request.content_type != "application/json":
            # As a JSON API does: a body of another type is not read as JSON. (Without
            # the header aiohttp says application/octet-stream: the client sent none.)
            given = request.headers.get("Content-Type")
            return self._reject("Content-Type must be application/json, got " + (
                "none" if given is None else repr(given[:100])))
        try:
            body = await request.json()
        except ValueError:
            return self._reject("body is not valid JSON")
        except ConnectionResetError:
            # The client gave up (its timeout) while a fault held the answer back: as a
            # real server, nothing is created, and nothing to log but the request line.
            return web.Response(status=499)
        problem = validate(body)
        if problem:
            return self._reject(problem)
        if fault is not None and fault.kind == "repeat_id" and emulator.last_task_id:
            return _submitted(emulator.last_task_id)
        accepted = emulator.accept(body, request.headers.get("Idempotency-Key"))
        if accepted is None:
            return _error(402, "Insufficient balance", "insufficient_balance")
        task_id, created = accepted
        emulator.last_task_id = task_id
        if created and fault is not None and fault.kind == "lost_answer":
            _drop(request, hard=fault.hard)
            return web.Response()
        if fault is not None and fault.kind == "created_with_error":
            return web.json_response({
                "code": 200, "data": [{"status": "submitted", "task_id": task_id}],
                "error": {"code": "gateway_error", "message": "upstream reported a failure"},
            })
        return _submitted(task_id)

    def _reject(self, message: str) -> web.Response:
        self.emulator.stats.rejected_submissions += 1
        return _error(400, message, "invalid_request_error")

    async def get_task(self, request: web.Request) -> web.StreamResponse:
        emulator = self.emulator
        task_id = request.match_info["task_id"]
        emulator.stats.requests["task"] += 1
        emulator.stats.polls[task_id] += 1
        fault = request[_FAULT] = emulator.next_fault("task")
        answer = await apply(emulator, request, fault)
        if answer is not None:
            return answer
        task = emulator.record(task_id)
        if task is None:
            return _error(404, f"task {task_id} not found", "not_found_error")
        data = emulator.task_data(task)
        if fault is not None:
            data = _hostile_answer(fault, data, request, emulator.clock.wall())
        if data["status"] in ("completed", "failed", "cancelled") and not task.observed_terminal:
            task.observed_terminal = True
            lag = emulator.clock.now() - (task.created + task.plan.duration)
            emulator.stats.detection_lags[task_id] = max(0.0, lag)
        if fault is not None and fault.kind in ("gzip", "huge_answer"):
            return await _bulky_answer(request, fault, {"code": 200, "data": data})
        return web.json_response({"code": 200, "data": data})


    async def balance(self, request: web.Request) -> web.StreamResponse:
        emulator = self.emulator
        emulator.stats.requests["balance"] += 1
        fault = request[_FAULT] = emulator.next_fault("balance")
        answer = await apply(emulator, request, fault)
        if answer is not None:
            return answer
        return web.json_response(emulator.balance_answer())


class _FileHost:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    async def download(self, request: web.Request) -> web.StreamResponse:
        stats = self.emulator.stats
        stats.downloads_in_flight += 1
        stats.peak_downloads_in_flight = max(
            stats.peak_downloads_in_flight, stats.downloads_in_flight
        )
        try:
            return await self._serve_file(request)
        finally:
            stats.downloads_in_flight -= 1

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        emulator = self.emulator
        stats = emulator.stats
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
        task = emulator.record(task_of_file(name))
        if task is None or emulator.status_of(task)[0] != "completed" \
                or name not in [*videos_and_images(task.id, task.plan)]:
            return web.Response(status=404, text="not found")
        if (request.query.get("token") != task.token
                or emulator.clock.wall() >= task.expires_wall):
            return web.Response(status=403, text="link expired")
        data = emulator.output(task, name)
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        range_header = request.headers.get("Range")
        fault = request[_FAULT] = emulator.next_fault("download", ranged=range_header is not None)
        if range_header is not None:
            stats.range_requests += 1
            # What a resume presented (None: a Range without If-Range).
            stats.if_range_headers.append(request.headers.get("If-Range"))
        if fault is not None and fault.kind in ("status", "html", "reset", "redirect", "slow"):
            answer = await apply(emulator, request, fault)
            if answer is not None:
                return answer
        if fault is not None and fault.kind in _HOSTILE_BODIES:
            return await _hostile_body(emulator, request, fault, data)
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
            "Content-Type": "image/png" if name.endswith(".png") else "video/mp4",
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


_HOSTILE_BODIES = frozenset({"gzip", "endless", "drip", "cut_unframed"})
_BOMB_MEMBER = 1 << 20
_bomb_cache: list[bytes] = []


def _gzip_bomb(head: bytes, inflated: int = 1 << 30) -> bytes:
    """Gzip that inflates to `inflated` bytes (whole MiB; ~1 KB of gzip a MiB): the
    video's first bytes, then zeros.

    Concatenated gzip members (RFC 1952 allows it) of one compressed MiB of zeros each,
    so building it costs one MiB of compression, not a GiB."""
    if not _bomb_cache:
        _bomb_cache.append(gzip.compress(bytes(_BOMB_MEMBER), compresslevel=9, mtime=0))
    members = max(1, inflated // _BOMB_MEMBER)
    return (gzip.compress(head + bytes(_BOMB_MEMBER - len(head)), mtime=0)
            + _bomb_cache[0] * (members - 1))


def _hostile_answer(
    fault: Fault, data: dict[str, Any], request: web.Request, wall: float
) -> dict[str, Any]:
    """A task answer bent by a task-route fault (`result_url`, `answer_id`, `echo_key`)."""
    data = dict(data)
    if fault.kind == "task_status":
        data["status"] = None if fault.hard else fault.value
    elif fault.kind == "answer_id":
        data["id"] = fault.value
    elif fault.kind == "result_url":
        data.update(status="completed", progress=100, result={
            "videos": [{"url": [fault.value], "expires_at": int(wall) + 3600}],
        })
        data.pop("error", None)
    elif fault.kind == "echo_key":
        data.update(status="failed", progress=0, error={
            "code": "upstream_error",
            "message": "upstream refused the request with headers "
                       f"Authorization: {request.headers.get('Authorization', '')}",
        })
        data.pop("result", None)
    return data


async def _bulky_answer(
    request: web.Request, fault: Fault, answer: dict[str, Any]
) -> web.StreamResponse:
    """A task answer that is valid JSON but huge: padded to `fault.status` bytes and
    streamed unframed by length, or a gzip bomb (~1 MB inflating to 1 GiB)."""
    text = json.dumps(answer).encode()
    if fault.kind == "gzip":
        body = _gzip_bomb(text, fault.status) if fault.hard else gzip.compress(text, mtime=0)
        return web.Response(body=body, headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip",
        })
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    if fault.hard:  # framed: the length stated up front
        response.content_length = max(fault.status, len(text))
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(text[:-1])
        left = fault.status - len(text)
        block = b" " * (1 << 16)
        while left > 0:  # stops early when the client hangs up (the write raises)
            await response.write(block[:left])
            left -= len(block)
        await response.write(b"}")
        await response.write_eof()
    except (ConnectionError, OSError):
        request[_DROPPED] = True
    return response


async def _hostile_body(
    emulator: Emulator, request: web.Request, fault: Fault, video: bytes
) -> web.StreamResponse:
    """The file host's hostile bodies: gzip (or a gzip bomb), endless, drip, and a cut
    body without framing. Each answers 200 whatever Range asked for."""
    if fault.kind == "gzip":
        body = _gzip_bomb(video[:64], fault.status) if fault.hard else gzip.compress(video, mtime=0)
        return web.Response(body=body, headers={
            "Content-Type": "video/mp4", "Content-Encoding": "gzip",
        })
    if fault.kind == "cut_unframed":
        # Written raw: aiohttp.web would frame it (chunked) and a client could tell the cut.
        transport = request.transport
        if transport is not None:
            part = video[: int(len(video) * fault.fraction)]
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\n"
                            b"Connection: close\r\n\r\n" + part)
            transport.close()
        request[_DROPPED] = True
        return web.Response()
    headers = {"Content-Type": "video/mp4"}
    if fault.kind == "drip":
        headers["Content-Length"] = str(len(video))
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)
    try:
        if fault.kind == "endless":
            await response.write(video[:64])
            block = bytes(1 << 16)
            while True:  # ends when the client hangs up (the write raises)
                await response.write(block)
        for i in range(len(video)):
            await response.write(video[i : i + 1])
            await emulator.clock.sleep(fault.seconds)
        await response.write_eof()
    except (ConnectionError, OSError):
        request[_DROPPED] = True
    return response


# The characters a header's name may hold (RFC 9110 "token").
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


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
    request[_DROPPED] = True
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if hard and sock is not None:
        # Linger on, timeout 0: closing sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def videos_and_images(task_id: str, plan: Any) -> Iterator[str]:
    """Every file name the file host serves for a task (see `output_names`)."""
    videos, images = output_names(task_id, plan)
    yield from videos
    yield from images


def validate(body: Any) -> str | None:
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
    if ratio is not None and (not isinstance(ratio, str)
                              or re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", ratio) is None):
        return f"aspect_ratio {ratio!r} is not supported"
    urls = body.get("image_urls")
    if urls is not None:
        if not isinstance(urls, list):
            return "image_urls must be an array"
        for url in urls:
            if isinstance(url, str) and url.startswith("data:image/") and ";base64," in url:
                continue
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                return f"image_urls entry {url!r} is not a public http(s) URL"
    return None
