"""The account balance, sans I/O: ``GET /v1/balance`` built and its answer deciphered.

The balance answer has its own shape (no ``code``/``data`` envelope)::

    {"success": true, "remain_balance": 10.5, "used_balance": 2.3, "unlimited_quota": false}

and is read with the same strictness as a task answer: a wrong shape is a
`DecodeError`, an error status the matching `APIStatusError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import APIStatusError, DecodeError, scrub
from .wire import HttpRequest, decode, snippet

__all__ = ["BALANCE_PATH", "Balance", "build_get_balance", "parse_balance"]

BALANCE_PATH = "/v1/balance"


@attrs.frozen(kw_only=True)
class Balance:
    """The balance of the API key, as ``GET /v1/balance`` reports it.

    - `remain`: what is left, in the account's unit (USD, CNY or tokens: the answer
      does not say which); None when the key has no quota limit (`unlimited`), where
      the wire says ``-1``. It can be negative on an overdrawn account.
    - `used`: what this key has spent so far (0 or more).
    - `unlimited`: the key has no quota limit.
    """

    remain: float | None
    used: float
    unlimited: bool = False

    def covers(self, amount: float) -> bool:
        """True when the balance can pay `amount` (always, for an unlimited quota)."""
        return self.remain is None or self.remain >= amount


def build_get_balance() -> HttpRequest:
    """``GET /v1/balance`` (a GET: retried like a task query)."""
    return HttpRequest(method="GET", path=BALANCE_PATH)


def _number(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parse_balance(
    status: int, body: bytes, *, retry_after: float | None = None, secret: str | None = None
) -> Balance:
    """A `Balance` from a ``GET /v1/balance`` answer, or raise.

    - An error status (401, 429, 5xx...) or an error body raises the matching
      `APIStatusError` subclass, as on every other route.
    - ``"success": false`` raises `APIStatusError` (status: the HTTP status) carrying
      the server's ``message`` (e.g. the key does not exist), scrubbed of `secret`.
    - Anything else that is not the documented shape raises `DecodeError`: not JSON,
      ``success`` missing or not true, ``remain_balance`` or ``used_balance`` missing,
      not a finite number (``true`` is not a number), ``used_balance`` negative, or
      ``unlimited_quota`` present and not a boolean.
    """
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    if (status != 200 or not isinstance(payload, dict) or "error" in payload
            or payload.get("code", 200) not in (200, "200")):
        # The shared path: error statuses, error bodies, gateway pages, non-JSON.
        decode(status, body, retry_after=retry_after, secret=secret)
        raise DecodeError("balance answer is not the documented shape", status=status,
                          snippet=snippet(body, secret))
    assert isinstance(payload, dict)
    success = payload.get("success")
    if success is False:
        message = payload.get("message") or payload.get("msg") or "success is false"
        raise APIStatusError(f"balance refused: {scrub(str(message), secret)[:500]}",
                             status=status)
    remain = _number(payload, "remain_balance")
    used = _number(payload, "used_balance")
    unlimited = payload.get("unlimited_quota", False)
    problem = None
    if success is not True:
        problem = "'success' is not true"
    elif remain is None:
        problem = "'remain_balance' is not a finite number"
    elif used is None:
        problem = "'used_balance' is not a finite number"
    elif used < 0:
        problem = "'used_balance' is negative"
    elif not isinstance(unlimited, bool):
        problem = "'unlimited_quota' is not a boolean"
    if problem is not None:
        raise DecodeError(f"balance answer: {problem}", status=status,
                          snippet=snippet(body, secret))
    assert used is not None
    # Unlimited wins whatever remain_balance says (documented as -1 then).
    return Balance(remain=None if unlimited else remain, used=used, unlimited=unlimited)
