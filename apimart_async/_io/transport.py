"""Requests to the API host: credentials, shared limits, and the retry loop.

The retry *decisions* are pure (`_retry`); this module only carries them out.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from .._core.config import ApiKey
from .._core.errors import APIMartError, APIStatusError, RateLimitError, with_response
from .._core.hooks import Hooks, RequestEvent, RetryEvent
from .._core.retry import RetryPolicy, decide, is_ambiguous, parse_retry_after
from .._core.wire import HttpRequest, encode_json
from .clock import Clock
from .hooks import fire
from .http import NETWORK_ERRORS, USER_AGENT, Body, Http, json_body, translate
from .limits import Limits
from .stats import SessionStats

__all__ = ["Transport"]

log = logging.getLogger("apimart_async")
T = TypeVar("T")

# A request body past this many bytes is sent as a stream (see `Transport.call`).
_LARGE_BODY = 1 << 20
# parse(status, body, retry_after=..., secret=...) -> T
Parser = Callable[..., T]


class Transport:
    """Sends `HttpRequest`s to the API host with the key, the limits and the retry policy."""

    def __init__(
        self,
        *,
        base_url: str,
        key: ApiKey,
        http: Http,
        limits: Limits,
        retry: RetryPolicy,
        stats: SessionStats,
        clock: Clock,
        hooks: Hooks | None = None,
    ) -> None:
        self.base_url = base_url
        self.hooks = hooks or Hooks()
        self._key = key
        self.http = http
        self.limits = limits
        self.retry = retry
        self.stats = stats
        self._clock = clock
        http.api_headers = {
            "Authorization": f"Bearer {key.reveal()}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r})"

    async def call(
        self,
        request: HttpRequest,
        parse: Parser[T],
        *,
        gate: Callable[[], None] | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        on_safe_retry: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Send `request` until it succeeds or the policy gives up; parse the answer.

        `gate`, if given, is called right before each attempt goes out and may raise
        to stop it (a batch that met a fatal error stops its unsent items this way).
        `before_send`, if given, is awaited just after the gate passes, holding the
        request slot and rate token, and the attempt goes out only once it returns (a
        batch journals "submitting" there: as late as possible, and surely before).
        `on_safe_retry`, if given, is awaited when an attempt failed without creating
        anything (not ambiguous) and another will follow: the item is back in line.

        A submission given up after an ambiguous failure has `submission_ambiguous`
        set on the error: it may have been created (and billed) on the server. Once
        an attempt was ambiguous, so is the submission, whatever later attempts meet
        (a 429 or 503 after a lost answer): `on_safe_retry` is not called for it any
        more.
        """
        secret = self._key.reveal()
        url = self.base_url + request.path
        # The credentials travel with `http.api_headers`; the request adds its own.
        headers = request.headers
        body = None
        if request.json is not None:
            # Encoded once for every attempt (by orjson with the speed extra).
            body = encode_json(request.json)
        # aiohttp sends bytes past 1 MiB with a ResourceWarning (a data: URI image can be
        # 13 MB): such a body goes as a stream, a fresh one for every attempt. A smaller
        # one goes as a payload that carries its Content-Type (`json_body`); the stream
        # needs the header.
        large = body is not None and len(body) > _LARGE_BODY
        http = self.http
        # The owned API session carries the credentials and timeouts: a request on it
        # is sent here directly (`Http.api_request`, a call less on every request).
        api = http.api
        # A borrowed session may carry a Content-Type of its own, or skip the automatic
        # one: there the header is sent, as the stream always needs it.
        if body is not None and (large or api is None) and "Content-Type" not in headers:
            headers = {**headers, "Content-Type": "application/json"}
        params = request.params
        method = request.method
        cap = http.max_answer
        limits = self.limits
        hooks = self.hooks
        stats = self.stats
        attempt = 0
        ambiguous = False  # an attempt of this submission may have created the task
        while True:
            attempt += 1
            # One attempt, inline (the exchange too): this loop runs for every poll.
            epoch = limits.try_acquire()
            if epoch is None:
                epoch = await limits.acquire()
            answer: Mapping[str, str] | None = None  # the answer's headers, once read
            # Timed only for a hook that reads it: a clock read per poll otherwise.
            started = time.perf_counter() if hooks.on_request is not None else 0.0
            try:
                if gate is not None:
                    gate()  # the last moment to decide not to send
                if before_send is not None:
                    await before_send()
                stats.requests += 1
                failure: APIMartError | None = None
                try:
                    sent: Body | io.BytesIO | None = None
                    if body is not None:
                        # A fresh one each attempt: aiohttp may close what it sent.
                        sent = io.BytesIO(body) if large else json_body(body)
                    async with (
                        api.request(method, url, headers=headers, data=sent,
                                    params=params, allow_redirects=False)
                        if api is not None
                        else http.api_request(method, url, headers, sent, params)
                    ) as resp:
                        got = resp.headers
                        length = got.get("Content-Length")
                        if (length is not None and "Content-Encoding" not in got
                                and length.isdigit() and int(length) <= cap):
                            data = await resp.read()  # the usual answer
                        else:
                            data = await http.read(resp)
                        status = resp.status
                        answer = got
                except NETWORK_ERRORS as exc:
                    failure = translate(exc, secret)
                if failure is not None:
                    # Raised outside the handler: no exception chain keeps aiohttp's
                    # objects (which hold the request headers) alive or printable.
                    raise failure
                assert answer is not None
                result: T = parse(
                    status, data, secret=secret,
                    retry_after=None if status == 200 else parse_retry_after(answer))
            except APIMartError as exc:
                limits.release()
                if answer is not None:
                    with_response(exc, answer, secret)
                code = status if answer is not None else _status(exc)
                if hooks.on_request is not None:
                    fire(hooks.on_request, RequestEvent(
                        method=request.method, path=request.path, attempt=attempt,
                        status=code, error=type(exc).__name__,
                        elapsed=time.perf_counter() - started))
                if isinstance(exc, RateLimitError):
                    stats.rate_limited += 1
                    # A hint past `max_retry_after` fails this request at once; the
                    # session's pause is held to that bound too, so an hour's hint (or
                    # 1e308) does not silence every later call for that long.
                    hint = exc.retry_after
                    if hint is not None:
                        hint = min(hint, self.retry.max_retry_after)
                    limits.throttled(epoch, hint)
                elif answer is not None:
                    limits.succeeded(epoch)  # answered: it took a token all the same
                if not request.idempotent and is_ambiguous(exc):
                    ambiguous = True
                decision = decide(
                    self.retry, exc, attempt=attempt, idempotent=request.idempotent
                )
                if not decision.retry:
                    if ambiguous:
                        exc.submission_ambiguous = True
                    log.debug(
                        "%s %s failed for good after %d attempt(s): %s",
                        request.method, request.path, attempt, type(exc).__name__,
                    )
                    raise
                stats.retries += 1
                delay = decision.delay
                if isinstance(exc, RateLimitError):
                    delay = limits.retry_delay(exc.retry_after, delay)
                # DEBUG, not INFO: a faulty batch retries often, and each one is routine.
                log.debug(
                    "%s %s attempt %d failed (%s); retrying in %.2fs",
                    request.method, request.path, attempt, type(exc).__name__, delay,
                )
                if hooks.on_retry is not None:
                    fire(hooks.on_retry, RetryEvent(
                        method=request.method, path=request.path, attempt=attempt,
                        error=type(exc).__name__, status=code, delay=delay))
                if on_safe_retry is not None and not ambiguous:
                    await on_safe_retry()
            except BaseException:
                limits.release()
                raise
            else:
                limits.done(epoch)
                if hooks.on_request is not None:
                    fire(hooks.on_request, RequestEvent(
                        method=request.method, path=request.path, attempt=attempt,
                        status=status, error=None,
                        elapsed=time.perf_counter() - started))
                return result
            await self._clock.delay(delay)


def _status(exc: APIMartError) -> int | None:
    return exc.status if isinstance(exc, APIStatusError) else None
