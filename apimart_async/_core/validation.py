"""Validation helpers shared by the configuration and request objects.

Each one returns the value it accepts, or raises `ValidationError` naming the field
and the value's problem.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from .errors import ValidationError

__all__ = [
    "check_http_url",
    "require_finite_positive_or_none",
    "require_positive_or_none",
    "require_whole_number",
]


def check_http_url(field: str, value: object) -> str:
    """Return `value` if it is an absolute http(s) URL with a host, else raise `ValidationError`."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a URL string, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(field, f"must be an absolute http(s) URL, got {value!r}")
    return value


def require_whole_number(field: str, value: object, *, minimum: int = 1) -> int:
    """`value` if it is an int (not a bool) >= `minimum`, else a `ValidationError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(field, f"must be a whole number >= {minimum}, got {value!r}")
    return value


def require_positive_or_none(
    field: str, value: float | None, *, allow_zero: bool = False
) -> float | None:
    """`value` if it is None or a number > 0 (>= 0 with `allow_zero`), else a `ValidationError`.

    NaN is refused; infinity is accepted (it reads as "no limit").
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValidationError(field, f"must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValidationError(field, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def require_finite_positive_or_none(field: str, value: object) -> float | None:
    """`value` if it is None or a finite number > 0, else a `ValidationError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValidationError(field, f"must be a number of seconds, got {value!r}")
    if value <= 0 or math.isinf(value):
        raise ValidationError(field, f"must be a finite number of seconds > 0, got {value!r}")
    return float(value)
