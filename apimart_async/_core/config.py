"""Configuration values: timeouts, the API key holder and base-URL checks."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from typing import Any, NoReturn
from urllib.parse import urlsplit

import attrs

from .errors import REDACTED, ValidationError
from .validation import is_text, require_positive_or_none

__all__ = [
    "DEFAULT_BASE_URL", "ENV_API_KEY", "ApiKey", "DownloadPolicy", "Timeout", "check_base_url",
    "check_file_url",
]

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
    - `download_idle`: the longest silence while a video download streams (a download's
      overall limit and low-speed limit are `DownloadPolicy`'s; API answers are small and
      bounded by `total`). Its old name, `read`, is still accepted and readable.
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


def _whole_positive(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(attribute.name, f"must be a whole number >= 1, got {value!r}")


def _hosts(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(h, str) and h for h in value):
        raise ValidationError("allowed_hosts", f"must be host names, got {value!r}")
    return frozenset(h.lower().rstrip(".") for h in value)


@attrs.frozen(kw_only=True)
class DownloadPolicy:
    """What a file host may do to a download before the SDK gives up on it.

    - `max_bytes`: the largest file accepted (default 2 GiB): a bigger announced length
      is refused before the body, and a body that grows past it is stopped.
    - `low_speed_limit`, `low_speed_time`: like curl's ``-Y``/``-y``: a download slower
      than `low_speed_limit` bytes/s over `low_speed_time` seconds is cut and retried (a
      host that drips a byte a second is given up on).
    - `deadline`: seconds one download may take in all, retries included; None: no limit.
    - `allowed_hosts`: when set, the only file hosts (exact names) downloads may use.

    Times are in API seconds on the session's `Clock`.
    """

    max_bytes: int = attrs.field(default=2 << 30, validator=_whole_positive)
    low_speed_limit: int = attrs.field(default=1024, validator=_whole_positive)
    low_speed_time: float = attrs.field(default=30.0, validator=_opt_positive)
    deadline: float | None = attrs.field(default=3600.0, validator=_opt_positive)
    allowed_hosts: frozenset[str] | None = attrs.field(default=None, converter=_hosts)


class ApiKey:
    """Holds the API key so that it cannot leak through repr, str, pickling or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValidationError("api_key", "must be a non-empty string")
        if any(ch in value for ch in "\r\n"):
            raise ValidationError("api_key", "must not contain line breaks")
        value = value.strip()
        # It goes into a header: anything else would fail there, after the journal says
        # "submitting", as a raw error (and could echo the key). Never shown here.
        bad = next((ch for ch in value if not (" " <= ch <= "~" or "\xa0" <= ch <= "\xff")), None)
        if bad is not None:
            raise ValidationError(
                "api_key", f"must be printable ASCII or Latin-1, without control characters "
                f"(it holds U+{ord(bad):04X})")
        self._value = value

    @classmethod
    def resolve(cls, explicit: str | None) -> ApiKey:
        """The explicit key, else ``APIMART_API_KEY``; a clear error when neither is set."""
        value = explicit if explicit is not None else os.environ.get(ENV_API_KEY)
        if value is not None and not isinstance(value, str):
            # Its type only: whatever was passed may be the key itself.
            raise ValidationError("api_key", f"must be a string, got {type(value).__name__}")
        if value is None or not value.strip():
            raise ValidationError(
                "api_key",
                f"no API key: pass api_key= or set the {ENV_API_KEY} environment variable",
            )
        return cls(value)

    def reveal(self) -> str:
        """The key itself; only the transport calls this, to build the header."""
        return self._value

    def fingerprint(self) -> str:
        """A hash naming this key in shared tables (a fleet's rate), never the key: a
        salted sha256, truncated; it cannot be turned back into the key."""
        digest = hashlib.sha256(b"apimart-async/key-fingerprint\0" + self._value.encode())
        return digest.hexdigest()[:32]

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


_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def reachable_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a download may connect to `address`: public or loopback, and so is every
    IPv4 address it carries (IPv4-mapped, 6to4, Teredo, NAT64: a gateway turns
    ``64:ff9b::a9fe:a9fe`` into the metadata address 169.254.169.254)."""
    if isinstance(address, ipaddress.IPv6Address):
        carried = [address.ipv4_mapped, address.sixtofour]
        if address.teredo is not None:
            carried.extend(address.teredo)
        if any(address in net for net in _NAT64):
            carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if not all(reachable_address(v4) for v4 in carried if v4 is not None):
            return False
    return address.is_loopback or address.is_global


def _is_host_name(host: str) -> bool:
    """Whether a URL's host is one a connection can be made to by name: an IP literal, or
    a name IDNA takes (no empty label, none over 63 characters)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def check_file_url(url: str, allowed_hosts: frozenset[str] | None = None) -> str | None:
    """Why a result URL must not be fetched, or None when it may be.

    https anywhere; plain http only to loopback (as for the API); no other scheme; no
    credentials in the URL; an IP literal must be a public address or loopback (never
    link-local, private, multicast or reserved: cloud metadata lives at 169.254.169.254;
    nor one that carries such an IPv4 address, see `reachable_address`). Names are not
    resolved here: the session the SDK opens for file hosts checks each name's addresses
    where it resolves them.
    """
    if not is_text(url):
        return "holds characters that are not Unicode text (lone surrogates)"
    if REDACTED in url:
        # The answer's link held the API key (scrubbed when it was read): not the
        # server's link any more, and the server must not get the key back through it.
        return "held the API key (removed when the answer was read): not fetched"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not host or _BAD_BRACKET.search(parts.netloc):
        return f"has scheme {parts.scheme!r}: only https (http to loopback) is fetched"
    if not _is_host_name(host):
        return "has a host name no resolver takes (an empty label or one over 63 characters)"
    if parts.username or parts.password:
        return "carries credentials"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and not reachable_address(address):
        return f"names a non-public address {host!r} (link-local, private or reserved)"
    if parts.scheme == "http" and not is_loopback(host):
        return f"is plain http to {host!r}: only https is fetched (http to loopback only)"
    if allowed_hosts is not None and host.lower().rstrip(".") not in allowed_hosts:
        return f"is on host {host!r}, which is not in allowed_hosts"
    return None


def check_base_url(url: str) -> str:
    """Validate an API base URL: https anywhere, plain http only to loopback.

    A URL ending in ``/v1`` (as often copied from API docs) is normalised to the URL
    without it: every API path already starts with ``/v1``, and ``/v1/v1/...`` would
    only ever answer 404.
    """
    if not isinstance(url, str):
        raise ValidationError("base_url", f"must be a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018 - raises on a bad IPv6 literal
    except ValueError:
        raise ValidationError("base_url", f"is not a valid URL: {url[:200]!r}") from None
    # "http://[::1].evil.example" splits to host "::1": refuse text after a bracket.
    if parts.scheme not in ("http", "https") or not parts.hostname or _BAD_BRACKET.search(
        parts.netloc
    ):
        raise ValidationError("base_url", f"must be an absolute http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise ValidationError("base_url", "must not carry credentials")
    if not is_text(url) or not _is_host_name(parts.hostname):
        raise ValidationError("base_url", f"has a host name no resolver takes: {url[:200]!r}")
    if parts.query or parts.fragment:
        raise ValidationError("base_url", "must not have a query or fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValidationError(
            "base_url",
            f"plain http is refused for {parts.hostname!r}: the API key would travel "
            "unencrypted; use https (http is allowed only to loopback)",
        )
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url.removesuffix("/v1").rstrip("/")
    return url
