"""The retry policy: Retry-After parsing, backoff maths and the predicate (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from apimart_async import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    ValidationError,
)
from apimart_async._core.retry import backoff, decide, parse_retry_after
from apimart_async._io.clock import Clock, is_testing, set_testing

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0"}, 0.0),
        ({"Retry-After": " 1.5 "}, 1.5),
        ({"Retry-After": format_datetime(NOW + timedelta(seconds=30), usegmt=True)}, 30.0),
        ({"Retry-After": format_datetime(NOW - timedelta(seconds=30), usegmt=True)}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "-5"}, None),
        ({"retry-after-ms": "-5"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "86400"}, 86400.0),
        ({}, None),
    ],
)
def test_retry_after_table(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, now=NOW)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_backoff_grows_caps_and_jitters() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=8.0)
    assert [backoff(policy, n, lambda: 1.0) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert [backoff(policy, n, lambda: 0.0) for n in range(1, 5)] == [0.5, 1, 2, 4]


POLICY = RetryPolicy(max_attempts=5, max_retry_after=60)
SENT = APIConnectionError("reset", request_sent=True)
NOT_SENT = APIConnectionError("refused", request_sent=False)
CASES = [
    # error, retried as GET, retried as POST
    (RateLimitError("slow down"), True, True),
    (ServerError("x", status=503), True, True),
    (ServerError("x", status=500), True, False),
    (ServerError("x", status=502), True, False),
    (ServerError("x", status=504), True, False),
    (NOT_SENT, True, True),
    (APITimeoutError("connect", request_sent=False), True, True),
    (SENT, True, False),
    (APITimeoutError("read", request_sent=True), True, False),
    (DecodeError("html", status=200, snippet="<html>"), True, False),
    (BadRequestError("bad", status=400), False, False),
    (AuthenticationError("key", status=401), False, False),
]


@pytest.mark.parametrize(("error", "get", "post"), CASES)
def test_predicate(error: Exception, get: bool, post: bool) -> None:
    assert decide(POLICY, error, attempt=1, idempotent=True).retry is get  # type: ignore[arg-type]
    assert decide(POLICY, error, attempt=1, idempotent=False).retry is post  # type: ignore[arg-type]


def test_ambiguous_submissions_retry_only_on_opt_in() -> None:
    opted = RetryPolicy(retry_ambiguous_submissions=True)
    assert decide(opted, ServerError("x", status=502), attempt=1, idempotent=False).retry
    assert decide(opted, SENT, attempt=1, idempotent=False).retry
    assert not decide(opted, BadRequestError("x", status=400), attempt=1, idempotent=False).retry


def test_attempts_are_bounded() -> None:
    assert decide(POLICY, SENT, attempt=4, idempotent=True).retry
    assert not decide(POLICY, SENT, attempt=5, idempotent=True).retry


def test_retry_after_is_honoured_and_capped() -> None:
    # The decision is pure: the test switch does not reach it (the clock applies it).
    d = decide(POLICY, RateLimitError("x", retry_after=7.0), attempt=1, idempotent=False)
    assert (d.retry, d.delay) == (True, 7.0)
    # A hint beyond the maximum wait raises instead of sleeping for an hour.
    assert not decide(POLICY, RateLimitError("x", retry_after=3600), attempt=1,
                      idempotent=True).retry
    d = decide(POLICY, SENT, attempt=3, idempotent=True, rand=lambda: 1.0)
    assert d.delay == POLICY.initial_delay * 4


def test_the_test_switch_zeroes_delays_on_the_clock_and_restores() -> None:
    clock = Clock()
    assert is_testing() and clock.delay_length(7.0) == 0.0  # conftest turned it on
    with set_testing(False):
        assert not is_testing() and clock.delay_length(7.0) == 7.0
        with set_testing(True):
            assert clock.delay_length(7.0) == 0.0
        assert clock.delay_length(7.0) == 7.0
    assert is_testing()  # restored on exit
    set_testing(False)  # a plain call still works, and sticks
    try:
        assert clock.delay_length(2.0) == 2.0
    finally:
        set_testing(True)


@pytest.mark.parametrize(("field", "value"), [("max_attempts", 0), ("max_attempts", 1.5),
                                              ("initial_delay", -1), ("max_retry_after", "x")])
def test_policy_validation(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
