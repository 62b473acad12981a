"""A replay server for client-bound benchmarks: the emulator's own answers, sent back fast.

An `aiohttp.web` server (the emulator) spends about as much CPU per request as a client
does, so on a small machine it is the bottleneck, and every client's throughput converges
to the server's: the client's overhead disappears into the server's queue, and the
round-to-round spread swamps it. This server answers from bytes recorded off the
emulator at start (a ``GET /v1/tasks/{id}`` answer and a ``POST /v1/videos/generations``
answer, status line, headers and body as the emulator sent them) with a plain asyncio
protocol: a few microseconds per request, so the client under test is what is measured.
Each POST answer names a new task id (the recorded one with its last 12 characters
replaced by a counter: same length, same Content-Length), as a real server's would: a
client that records each submitted task (the SDK does, for a later watch) pays for that
here as in use, not for finding the same id again.

    python benchmarks/_replay.py POST_ANSWER_FILE GET_ANSWER_FILE [GET_ANSWER_FILE ...]

prints ``listening on http://127.0.0.1:PORT`` and serves until killed. With several GET
answers it sends them in turn, server-wide (a task whose answer changes at every poll).
HTTP/1.1 keep-alive, one request at a time per connection (what aiohttp and httpx send).
"""

from __future__ import annotations

import asyncio
import itertools
import sys

_END = b"\r\n\r\n"
_ID_KEY = b'"task_id"'
_COUNTER = 12  # the id's last characters made a counter


class Posts:
    """The recorded POST answer with a new task id each time."""

    def __init__(self, post: bytes) -> None:
        key = post.index(_ID_KEY, post.index(_END))
        start = post.index(b'"', key + len(_ID_KEY)) + 1
        end = post.index(b'"', start)
        if end - start < _COUNTER:
            raise SystemExit(f"the recorded task id is shorter than {_COUNTER} characters")
        self._head, self._tail = post[:end - _COUNTER], post[end:]
        self._count = itertools.count()

    def __next__(self) -> bytes:
        return b"%s%012d%s" % (self._head, next(self._count), self._tail)


class Replay(asyncio.Protocol):
    def __init__(self, gets: itertools.cycle[bytes], post: Posts) -> None:
        self._gets, self._post = gets, post
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        out = []
        while True:
            end = buffer.find(_END)
            if end < 0:
                break
            head = buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + len(_END) + length
            if len(buffer) < total:
                break
            out.append(next(self._post) if head.startswith(b"POST") else next(self._gets))
            buffer = buffer[total:]
        self._buffer = buffer
        if out and self._transport is not None:
            self._transport.write(b"".join(out))


async def serve(post: bytes, gets: list[bytes]) -> None:
    loop = asyncio.get_running_loop()
    turn, posts = itertools.cycle(gets), Posts(post)
    server = await loop.create_server(lambda: Replay(turn, posts), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def _read(name: str) -> bytes:
    with open(name, "rb") as f:
        return f.read()


if __name__ == "__main__":
    asyncio.run(serve(_read(sys.argv[1]), [_read(name) for name in sys.argv[2:]]))
