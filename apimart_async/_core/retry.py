"""Retry policy, sans I/O: which failures to retry, and how long to wait.

The predicate is explicit about money: a GET can be repeated freely, but a
submission is billed, so it is repeated only when it surely was not processed.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

import attrs

from .errors import (
    APIConnectionError,
    APIMartError,
    DecodeError,
    RateLimitError,
    ServerError,
)
from .polling import backoff as capped_backoff
from .validation import require_positive_or_none, require_whole_number

__all__ = [
    "Decision",
    "RetryPolicy",
    "backoff",
    "decide",
    "is_ambiguous",
    "parse_retry_after",
]


def _check_positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    require_positive_or_none(attribute.name, value, allow_zero=True)


def _check_attempts(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    require_whole_number(attribute.name, value)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How requests to the API are retried.

    - `max_attempts`: tries in all, the first included.
    - `initial_delay`, `max_delay`: exponential backoff from the one to the other, with
      full jitter (each wait is drawn between half and all of the step).
    - `max_retry_after`: a server hint longer than this raises `RateLimitError` at once
      instead of sleeping that long.
    - `retry_ambiguous_submissions`: a submission whose fate is unknown (timeout or reset
      after sending, 500, 502, 504, an unreadable 200) is not repeated by default, because
      APIMart documents no idempotency key and a second task would be billed. Set it to
      True to accept that risk.
    """

    max_attempts: int = attrs.field(default=5, validator=_check_attempts)
    initial_delay: float = attrs.field(default=0.5, validator=_check_positive)
    max_delay: float = attrs.field(default=20.0, validator=_check_positive)
    max_retry_after: float = attrs.field(default=120.0, validator=_check_positive)
    retry_ambiguous_submissions: bool = False


@attrs.frozen
class Decision:
    """What to do after a failed attempt: retry after `delay` seconds, or give up."""

    retry: bool
    delay: float = 0.0


GIVE_UP = Decision(False)


def backoff(policy: RetryPolicy, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """The wait before retry number `attempt` (1-based), capped and jittered."""
    step = capped_backoff(policy.initial_delay, attempt - 1, policy.max_delay)
    return float(step * (0.5 + 0.5 * rand()))


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date).

    Garbage, negative or non-finite hints give None, so the caller falls back to backoff.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now or datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())


def is_ambiguous(error: APIMartError) -> bool:
    """True when a failed submission may still have been created on the server.

    A 429 or 503 was refused before processing, a connection that failed before the
    request went out never reached it, and a 4xx is a rejection; anything else that
    went wrong after sending (500, 502, 504, a timeout or reset, an unreadable answer)
    leaves the outcome unknown.
    """
    if isinstance(error, ServerError):
        return error.status != 503
    if isinstance(error, APIConnectionError):
        return error.request_sent
    return isinstance(error, DecodeError)


def retryable(error: APIMartError, *, idempotent: bool, policy: RetryPolicy) -> bool:
    """The retry predicate: transient failures, and for submissions only the safe ones."""
    transient = isinstance(error, (RateLimitError, ServerError, APIConnectionError, DecodeError))
    if not transient:
        return False
    if idempotent or not is_ambiguous(error):
        return True
    return policy.retry_ambiguous_submissions


def decide(
    policy: RetryPolicy,
    error: APIMartError,
    *,
    attempt: int,
    idempotent: bool,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Whether to retry after `attempt` failed tries, and how long to wait first.

    A `Retry-After` hint is honoured as given (it replaces backoff); a hint longer than
    `max_retry_after` means give up, so the caller sees the `RateLimitError`.
    """
    if attempt >= policy.max_attempts or not retryable(error, idempotent=idempotent, policy=policy):
        return GIVE_UP
    hint = error.retry_after if isinstance(error, RateLimitError) else None
    if hint is not None:
        if hint > policy.max_retry_after:
            return GIVE_UP
        delay = hint
    else:
        delay = backoff(policy, attempt, rand)
    return Decision(True, delay)
