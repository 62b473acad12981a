"""Submitting many requests: a fixed pool of workers under the session's limits.

One item's failure never cancels the others; a fatal answer (bad key, no balance)
stops the items not yet sent, each marked with `NotSubmittedError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from .._core.errors import APIMartError, NotSubmittedError, ValidationError
from .._core.groups import ungrouped
from .._core.models import Submission, VideoRequest
from .._core.wire import encode_json

__all__ = ["UNENCODABLE", "Gate", "StreamClosed", "SubmitOutcome", "submit_each", "unsendable"]

#: What encoding a body that is not JSON raises (a set, a value that contains itself).
UNENCODABLE = (TypeError, ValueError, RecursionError)

SubmitOutcome = Submission | APIMartError
# submit_one(index, request, gate) -> Submission
SubmitOne = Callable[[int, VideoRequest, Callable[[], None]], Awaitable[Submission]]


class StreamClosed(Exception):
    """Internal: the consumer left, so items not yet sent are not sent."""


class Gate:
    """Checked right before each submission goes out on the wire."""

    def __init__(self) -> None:
        self.fatal: APIMartError | None = None
        self.closed = False

    def check(self) -> None:
        """Raise if the item about to be sent must not be."""
        if self.fatal is not None:
            raise NotSubmittedError(self.fatal)
        if self.closed:
            raise StreamClosed


def unsendable(request: VideoRequest, exc: BaseException) -> ValidationError | None:
    """The `ValidationError` naming ``request.extra`` when `exc`, raised by a submission,
    came from a body that cannot be encoded as JSON (a request validated, then changed
    around its read-only `extra`); else None: `exc` is something else, raise it.

    Called only once a submission has failed (the body is encoded again to tell),
    so a submission that goes out pays nothing for it. Nothing was sent: the transport
    encodes the body before its first attempt."""
    if isinstance(exc, APIMartError):
        return None
    try:
        encode_json(request.to_body())
    except UNENCODABLE as err:
        return ValidationError("request.extra", f"cannot be encoded as JSON ({err}); "
                               "nothing was sent")
    return None


async def submit_each(
    requests: Sequence[VideoRequest],
    submit_one: SubmitOne,
    on_done: Callable[[int, SubmitOutcome | None], None],
    *,
    workers: int,
    gate: Gate | None = None,
) -> None:
    """Submit every request; call `on_done(index, outcome)` as each one ends.

    The outcome is None for an item not sent because the gate was closed.
    """
    gate = gate or Gate()
    indices = iter(range(len(requests)))

    async def worker() -> None:
        # The shared iterator hands each index to exactly one worker.
        for index in indices:
            try:
                gate.check()
                outcome: SubmitOutcome = await submit_one(index, requests[index], gate.check)
            except StreamClosed:
                on_done(index, None)
                continue
            except APIMartError as exc:
                if exc.fatal and gate.fatal is None:
                    gate.fatal = exc
                outcome = exc
            on_done(index, outcome)

    with ungrouped():
        async with anyio.create_task_group() as tg:
            for _ in range(min(workers, len(requests))):
                tg.start_soon(worker)
