"""Configuration values: timeouts, the API key holder and base-URL checks."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, NoReturn
from urllib.parse import urlsplit

import attrs

from .errors import ValidationError
from .validation import require_positive_or_none

__all__ = ["DEFAULT_BASE_URL", "ENV_API_KEY", "ApiKey", "Timeout", "check_base_url"]

DEFAULT_BASE_URL = "https://api.apimart.ai"
ENV_API_KEY = "APIMART_API_KEY"
ENV_BASE_URL = "APIMART_BASE_URL"


def _opt_positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    require_positive_or_none(attribute.name, value)


_UNSET: Any = object()


@attrs.frozen(kw_only=True, init=False)
class Timeout:
    """Per-request time limits in seconds; None means no limit.

    - `total`: one whole API request, answer included. Retries each get a fresh budget.
    - `connect`: getting a connection (pool wait, DNS and TCP/TLS set-up).
    - `download_idle`: the longest silence while a video download streams (downloads
      have no total limit; API answers are small and bounded by `total`). Its old name,
      `read`, is still accepted and readable.
    """

    total: float | None = attrs.field(default=60.0, validator=_opt_positive)
    connect: float | None = attrs.field(default=10.0, validator=_opt_positive)
    download_idle: float | None = attrs.field(default=30.0, validator=_opt_positive)

    def __init__(
        self,
        *,
        total: float | None = 60.0,
        connect: float | None = 10.0,
        download_idle: float | None = 30.0,
        read: float | None = _UNSET,
    ) -> None:
        if read is not _UNSET:
            download_idle = read
        self.__attrs_init__(total=total, connect=connect, download_idle=download_idle)

    @property
    def read(self) -> float | None:
        """The old name of `download_idle` (it never bounded reading API answers)."""
        return self.download_idle


class ApiKey:
    """Holds the API key so that it cannot leak through repr, str, pickling or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValidationError("api_key", "must be a non-empty string")
        if any(ch in value for ch in "\r\n"):
            raise ValidationError("api_key", "must not contain line breaks")
        self._value = value.strip()

    @classmethod
    def resolve(cls, explicit: str | None) -> ApiKey:
        """The explicit key, else ``APIMART_API_KEY``; a clear error when neither is set."""
        value = explicit if explicit is not None else os.environ.get(ENV_API_KEY)
        if value is None or not value.strip():
            raise ValidationError(
                "api_key",
                f"no API key: pass api_key= or set the {ENV_API_KEY} environment variable",
            )
        return cls(value)

    def reveal(self) -> str:
        """The key itself; only the transport calls this, to build the header."""
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('***')"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("ApiKey cannot be pickled")


_BAD_BRACKET = re.compile(r"\](?!(:\d*)?$)")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str) -> str:
    """Validate an API base URL: https anywhere, plain http only to loopback."""
    if not isinstance(url, str):
        raise ValidationError("base_url", f"must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    # "http://[::1].evil.example" splits to host "::1": refuse text after a bracket.
    if parts.scheme not in ("http", "https") or not parts.hostname or _BAD_BRACKET.search(
        parts.netloc
    ):
        raise ValidationError("base_url", f"must be an absolute http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise ValidationError("base_url", "must not carry credentials")
    if parts.query or parts.fragment:
        raise ValidationError("base_url", "must not have a query or fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValidationError(
            "base_url",
            f"plain http is refused for {parts.hostname!r}: the API key would travel "
            "unencrypted; use https (http is allowed only to loopback)",
        )
    return url.rstrip("/")
