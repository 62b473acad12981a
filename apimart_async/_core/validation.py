"""Validation helpers shared by the configuration and request objects.

Each one returns the value it accepts, or raises `ValidationError` naming the field
and the value's problem.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import sys
from urllib.parse import urlsplit

from .errors import ValidationError

__all__ = [
    "MAX_IMAGE_BYTES",
    "check_idempotency_key",
    "check_http_url",
    "check_image_url",
    "check_unicode",
    "require_finite_positive_or_none",
    "require_positive_or_none",
    "require_whole_number",
]


def is_text(value: str) -> bool:
    """Whether `value` is Unicode text: encodable as UTF-8 (a lone surrogate, from a bad
    decode or a JSON escape, is a `str` but no text: it cannot be sent, stored or
    printed as UTF-8)."""
    if value.isascii():  # (nearly every string: one pass in C)
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_unicode(field: str, value: str) -> str:
    """`value` if it can be sent as UTF-8, else a `ValidationError`: a lone surrogate
    (``"\\ud800"``, from a bad decode or a JSON escape) is a `str` but no Unicode text, and
    a body holding one is not valid JSON text (nor can it be journaled)."""
    if is_text(value):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            field, f"lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start + 1}"
            " (not valid Unicode: it cannot be sent as UTF-8)") from None
    return value


def check_http_url(field: str, value: object) -> str:
    """Return `value` if it is an absolute http(s) URL with a host, else raise `ValidationError`."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a URL string, got {type(value).__name__}")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:  # (an unclosed "[", a bad IPv6 literal)
        raise ValidationError(field, f"is not a valid URL: {value[:200]!r}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValidationError(field, f"must be an absolute http(s) URL, got {value!r}")
    return value


def check_idempotency_key(field: str, value: object) -> str | None:
    """`value` if it is None or a usable ``Idempotency-Key`` header value, else a
    `ValidationError`: sent as given, so it must be printable ASCII (no line break could
    add a header), without spaces at its ends (a header value loses them on the way,
    and the key recorded must be the key sent), 1 to 255 characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise ValidationError(field, "must not be empty (pass None for a new random key)")
    if len(value) > 255:
        raise ValidationError(field, f"must be at most 255 characters, got {len(value)}")
    bad = next((c for c in value if not " " <= c <= "~"), None)
    if bad is not None:
        raise ValidationError(field, f"must be printable ASCII, got the character {bad!r}")
    if value != value.strip():
        raise ValidationError(field, f"must not start or end with a space, got {value!r}")
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(field, f"must be a number, got {value!r}")
    if isinstance(value, int) and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        # Time arithmetic is in floats: an int past them raised OverflowError there
        # (and its repr may be too long to make).
        raise ValidationError(field, f"is out of range: past {_FLOAT_MAX:.4g} (math.inf "
                              "means no limit)")
    if math.isnan(value):
        raise ValidationError(field, f"must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValidationError(field, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


_FLOAT_MAX = sys.float_info.max


def require_finite_positive_or_none(field: str, value: object) -> float | None:
    """`value` if it is None or a finite number > 0, else a `ValidationError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or value <= 0 or math.isinf(value):
        raise ValidationError(field, f"must be a finite number of seconds > 0, got {value!r}")
    return float(value)


#: The largest reference image, as documented ("each image at most 10 MB").
MAX_IMAGE_BYTES = 10 * 1024 * 1024
# The documented formats (.jpeg, .jpg, .png, .webp), by media type and first bytes.
_IMAGE_TYPES = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/jpg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/webp": (b"RIFF",),
}
_DATA_URI = re.compile(r"data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)


def check_image_url(field: str, value: object) -> str:
    """An image input: an absolute http(s) URL, or a ``data:`` URI of a documented format
    (``image/jpeg``, ``image/png``, ``image/webp``), base64, whose bytes decode, are at
    most `MAX_IMAGE_BYTES` and start as that format does. Else `ValidationError`.
    Returns the value to send: a data: URI without surrounding whitespace."""
    if isinstance(value, str) and value.strip()[:5].lower() == "data:":
        # A copied data: URI often ends in a newline: not part of the data, not sent.
        value = value.strip()
    if not isinstance(value, str) or value[:5].lower() != "data:":
        return check_http_url(field, value)
    match = _DATA_URI.match(value)
    if match is None:
        raise ValidationError(field, "is a data: URI without a ',' before its data")
    media = match.group(1).strip().lower()
    params = [p.strip().lower() for p in match.group(2).split(";") if p.strip()]
    if media not in _IMAGE_TYPES:
        raise ValidationError(field, f"is a data: URI of type {media or 'text/plain'!r}; "
                              "allowed: 'image/jpeg', 'image/png', 'image/webp'")
    if "base64" not in params:
        raise ValidationError(field, "is a data: URI that is not base64 (';base64,' expected)")
    payload = value[match.end():]
    # Checked before decoding: 4 characters carry 3 bytes.
    if len(payload) > (MAX_IMAGE_BYTES + 2) // 3 * 4 + 4:
        raise ValidationError(field, f"is a data: URI of more than {MAX_IMAGE_BYTES:,} bytes "
                              "(the documented limit per image is 10 MB)")
    if any(c.isspace() for c in payload):
        raise ValidationError(field, "is a data: URI whose base64 contains whitespace (a "
                              "line break?): remove it")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(field, "is a data: URI whose base64 does not decode") from None
    if not data:
        raise ValidationError(field, "is a data: URI with no data")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValidationError(field, f"is a data: URI of {len(data):,} bytes; the documented "
                              f"limit per image is {MAX_IMAGE_BYTES:,}")
    if not data.startswith(_IMAGE_TYPES[media]) or (
            media == "image/webp" and data[8:12] != b"WEBP"):
        raise ValidationError(field, f"is a data: URI labelled {media!r} whose bytes are not "
                              "that format")
    return value
