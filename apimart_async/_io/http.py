"""The thin I/O shell around aiohttp; the only SDK module that imports it.

Foreign exceptions are translated here, in one place, into the SDK's error tree,
recording whether the request may have reached the server.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import aiohttp.abc
import attrs

from .._core.config import Timeout, reachable_address
from .._core.errors import (
    APIConnectionError,
    APIMartError,
    APITimeoutError,
    DecodeError,
    ValidationError,
    scrub,
)
from .._version import __version__

__all__ = [
    "MAX_ANSWER_BYTES", "NETWORK_ERRORS", "USER_AGENT", "ClientSession", "Http",
    "NonPublicAddressError", "PublicResolver", "StreamedResponse", "translate",
]

USER_AGENT = f"apimart-async/{__version__}"

#: aiohttp's session class, named here for the facade's signature (`Session(http_session=)`)
#: so that only this package imports aiohttp and the annotation still resolves.
ClientSession = aiohttp.ClientSession

MAX_ANSWER_BYTES = 1 << 20
"""The largest API answer read, counted after inflation (a task answer is < 2 KB)."""


@attrs.frozen
class StreamedResponse:
    """An answer whose body is read in chunks."""

    status: int
    headers: Mapping[str, str]
    _response: aiohttp.ClientResponse = attrs.field(repr=False)

    async def chunks(self, size: int = 1 << 16) -> AsyncIterator[bytes]:
        """The body, chunk by chunk; a cut stream raises `APIConnectionError`."""
        failure: APIMartError | None = None
        try:
            async for chunk in self._response.content.iter_chunked(size):
                yield chunk
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            failure = translate(exc)
        if failure is not None:
            # Raised outside the handler: no __context__ keeps aiohttp's objects (which
            # can hold the request and its headers) alive or printable.
            raise failure


#: What an exchange with a host raises when the network, the host or a timeout failed
#: it; `translate` turns each into the SDK's error.
NETWORK_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


# What `json_body` gives: an aiohttp payload, opaque to the transport.
Body = aiohttp.payload.Payload


def json_body(body: bytes) -> Body:
    """`body` (JSON, at most 1 MiB) ready to send with its Content-Type. aiohttp wraps
    bytes in such a payload anyway; carrying the type, it saves a Content-Type header
    its two header loops would copy on every submission."""
    return aiohttp.payload.BytesPayload(body, content_type="application/json")


def translate(exc: BaseException, secret: str | None = None) -> APIMartError:
    """The SDK error for an aiohttp or socket exception."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = scrub(text, secret)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"timed out connecting ({text})", request_sent=False)
    if isinstance(exc, (aiohttp.SocketTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return APITimeoutError(f"timed out waiting for the answer ({text})", request_sent=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return APIConnectionError(f"could not connect ({text})", request_sent=False)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return APIConnectionError(f"server closed the connection ({text})", request_sent=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return APIConnectionError(f"answer cut short ({text})", request_sent=True)
    return APIConnectionError(f"connection failed ({text})", request_sent=True)


class NonPublicAddressError(Exception):
    """A file host's name resolved only to addresses downloads never reach (private,
    link-local, reserved, unspecified). Not an `OSError`: aiohttp passes it through
    unwrapped, and the downloader refuses the link by name instead of retrying it."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        super().__init__(host, addresses)
        self.host = host
        self.addresses = addresses

    def __str__(self) -> str:
        return (f"resolves only to non-public addresses ({', '.join(self.addresses[:4])}): "
                f"link-local, private, reserved or unspecified")


def _reachable(address: str) -> bool:
    """An address a file link may name (as `check_file_url`: `reachable_address`)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return reachable_address(ip)


class PublicResolver(aiohttp.abc.AbstractResolver):
    """Resolves file hosts' names, keeping only public and loopback addresses.

    `check_file_url` refuses a link that names a private or link-local address, but
    not a name that resolves to one (``https://0x0/`` is 0.0.0.0, this host; a name in
    a hostile DNS can be the cloud's metadata address). Checked here, on the addresses
    the connection then uses, a name cannot slip past: the check and the connect see
    the same answer."""

    def __init__(self, inner: aiohttp.abc.AbstractResolver | None = None) -> None:
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [entry for entry in found if _reachable(entry["host"])]
        if not kept:
            raise NonPublicAddressError(host, sorted({entry["host"] for entry in found}))
        return kept

    async def close(self) -> None:
        await self._inner.close()


def _api_timeout(timeout: Timeout) -> aiohttp.ClientTimeout:
    # No sock_read here: its timer is re-armed on every chunk, and `total` already
    # bounds a small API answer.
    return aiohttp.ClientTimeout(total=timeout.total, connect=timeout.connect)


def _stream_timeout(timeout: Timeout) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None, connect=timeout.connect, sock_read=timeout.download_idle
    )


class Http:
    """Owns (or borrows) an `aiohttp.ClientSession` and sends single requests on it."""

    def __init__(
        self,
        *,
        timeout: Timeout,
        session: aiohttp.ClientSession | None = None,
        connections: int = 100,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        #: The largest answer read, in bytes (counted after inflation).
        self.max_answer = max_answer_bytes
        self._timeout = _api_timeout(timeout)
        self._stream_timeout = _stream_timeout(timeout)
        self._borrowed = session
        self._session: aiohttp.ClientSession | None = session
        self._connections = connections
        #: The headers of every API request (credentials included), set by the transport
        #: before `open`. An owned session keeps them in a session of its own that only
        #: `request` uses: sent without being merged again per request, and never
        #: within reach of `stream`, which fetches from file hosts.
        self.api_headers: Mapping[str, str] = {}
        #: The owned session of the API requests (None until `open`, and for a borrowed
        #: session): its headers and timeouts are set, so a request on it passes only
        #: its own headers, its body and ``allow_redirects=False`` (see `api_request`).
        self.api: aiohttp.ClientSession | None = None

    def _new_session(
        self, headers: Mapping[str, str] | None = None, *, files: bool = False
    ) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            # The file hosts' session reaches public and loopback addresses only.
            connector=aiohttp.TCPConnector(
                limit=self._connections, resolver=PublicResolver() if files else None),
            timeout=self._timeout,
            headers=headers,
            # Never pick up proxy credentials or .netrc from the environment.
            trust_env=False,
            # The API needs no cookies, and cookie scope ignores ports: keep none, so
            # nothing the API host sets can travel to the file host.
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def open(self) -> None:
        """Create the owned sessions (a borrowed one is used as given, for both)."""
        if self._session is None:
            self._session = self._new_session(files=True)
            self.api = self._new_session(self.api_headers)

    async def close(self) -> None:
        """Close the owned sessions; a borrowed one stays open for its owner."""
        api, self.api = self.api, None
        session, self._session = self._session, None
        # Each close shuts its connections before its first await: a cancelled close
        # (the caller's scope cancelled) still closes the other session in `finally`.
        try:
            if api is not None:
                await api.close()
        finally:
            if session is not None and session is not self._borrowed:
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            raise RuntimeError("the session is not open: use 'async with Session(...)'")
        if session.closed and session is self._borrowed:
            # (aiohttp's own RuntimeError would say nothing of whose session it is.)
            raise ValidationError(
                "http_session", "the aiohttp.ClientSession passed as http_session= was "
                "closed while the Session used it: keep it open until the Session closes")
        return session

    def api_request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | io.BytesIO | Body | None,
        params: Mapping[str, str],
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """One request to the API host, with `api_headers` and `headers` (which win), for
        ``async with``; redirects are not followed. Read the answer with `read`. What the
        exchange raises is one of `NETWORK_ERRORS`: `translate` it.

        (The transport's retry loop sends it itself: one coroutine less on every request.)
        """
        session = self.api
        if session is not None:
            send: Mapping[str, str] | None = headers or None
        else:
            # A borrowed session gets the credentials per call (and the timeouts, below).
            session = self.session
            send = {**self.api_headers, **headers} if headers else self.api_headers
        return session.request(
            method,
            url,
            headers=send,
            data=body,
            params=params or None,
            # A redirect could carry the Authorization header elsewhere.
            allow_redirects=False,
            timeout=self._timeout,
            # A borrowed session made with raise_for_status=True would turn every error
            # answer (a 429 to retry, a 402 to stop at) into a connection error.
            raise_for_status=False,
        )

    async def read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body of an answer that is not the usual one (compressed, of no stated
        length, or past the cap); `DecodeError` once it passes the cap.

        Read chunk by chunk: aiohttp inflates a compressed body as it streams, so the count
        is of inflated bytes and a gzip bomb costs at most one cap (plus a chunk) of memory,
        never its inflated size."""
        cap = self.max_answer
        length = resp.content_length
        if length is not None and not resp.headers.get("Content-Encoding"):
            if length > cap:
                resp.close()  # refused unread: the connection is not reused
                raise self._too_large(resp.status)
            # An identity body of a stated length within the cap, which aiohttp reads to
            # that length and no further; one read, no chunk loop.
            return await resp.read()
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > cap:
                # Closing drops the connection rather than draining the rest into the pool.
                resp.close()
                raise self._too_large(resp.status)
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self, status: int) -> DecodeError:
        return DecodeError(
            f"answer is larger than the {self.max_answer}-byte cap; not read further",
            status=status, snippet="",
        )

    @asynccontextmanager
    async def stream(
        self, url: str, *, headers: Mapping[str, str]
    ) -> AsyncIterator[StreamedResponse]:
        """GET `url` and yield the answer for chunked reading.

        Only the headers given are sent (callers pass no API credentials). Redirects are
        not followed: the caller checks each target before it is fetched. The body is
        never inflated: what the host sent is what `chunks` yields.
        """
        # What the caller's own code raised (a full disk's OSError while writing a chunk)
        # passes through as itself: it is not the network's, and must not be retried as
        # "connection failed".
        caller: BaseException | None = None
        borrowed = self._borrowed
        if borrowed is not None and "Authorization" in borrowed.headers:
            # Set after the Session checked it at `async with`: its default headers go
            # with this request, to a file host.
            raise ValidationError(
                "http_session", "the aiohttp.ClientSession passed as http_session= has a "
                "default Authorization header now, which it would send to the file host: "
                "nothing is fetched")
        try:
            async with self.session.get(
                url,
                headers=dict(headers),
                allow_redirects=False,
                auto_decompress=False,
                timeout=self._stream_timeout,
                raise_for_status=False,  # (a borrowed session's own setting aside)
            ) as resp:
                try:
                    yield StreamedResponse(resp.status, resp.headers, resp)
                except BaseException as exc:
                    caller = exc
                    raise
                return
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            if exc is caller:
                raise
            failure = translate(exc)
        raise failure

