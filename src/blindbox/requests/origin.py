"""The one HTTPS origin a session may talk to, and the checks that keep requests on it.

A session's connections always go to the origin's host and port, whatever a
request URL says; a URL is only *checked* against the origin (scheme https,
same host, same port) so that a request meant for somewhere else is refused
with :class:`~blindbox.errors.OriginRefusedError` instead of being sent.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

import idna

from blindbox._text import redact_url
from blindbox.errors import ConfigurationError, OriginRefusedError

HTTPS_PORT = 443

__all__ = ["HTTPS_PORT", "Origin"]


def _split(url: str) -> tuple[SplitResult, int]:
    parts = urlsplit(url)
    port = parts.port  # raises ValueError on a malformed port
    return parts, HTTPS_PORT if port is None else port


def _ascii_host(host: str) -> str:
    """``host`` as requests prepares it: a non-ASCII name in its IDNA (UTS #46) ASCII form.

    ValueError when it is not a valid internationalised name.
    """
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"invalid internationalised host name ({exc})") from None


def _without_userinfo(text: str) -> str:
    """``text`` without a ``userinfo@`` before its host: messages never echo a password."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    return scheme + sep + rest[:end].rpartition("@")[2] + rest[end:]


def _host_for_url(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


@dataclass(frozen=True)
class Origin:
    """``https://host:port``: host lowercased (IDNA ASCII form), IPv6 without brackets."""

    host: str
    port: int

    @classmethod
    def parse(cls, addr: str) -> Origin:
        """``host``, ``host:port`` or ``https://host[:port][/]``; anything else is a ConfigurationError."""
        if not isinstance(addr, str) or not addr.strip():
            raise ConfigurationError(f"addr: expected 'host[:port]' or 'https://host[:port]', got {addr!r}")
        text = addr.strip()
        shown = _without_userinfo(text)
        if "://" not in text:
            text = "https://" + text
        try:
            parts, port = _split(text)
        except ValueError as exc:
            raise ConfigurationError(f"addr: invalid port in {shown!r} ({exc})") from None
        if parts.scheme.lower() != "https":
            raise ConfigurationError(
                f"addr: expected an https:// address, got {shown!r}; BlindBox never sends data "
                "over plain HTTP"
            )
        if not parts.hostname:
            raise ConfigurationError(f"addr: no host in {shown!r}")
        if parts.username is not None or parts.password is not None:
            raise ConfigurationError(f"addr: credentials are not allowed in the address {shown!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigurationError(
                f"addr: expected only an origin (scheme, host, port), got a path, query or fragment in "
                f"{shown!r}; pass paths to the request methods instead"
            )
        try:
            host = _ascii_host(parts.hostname)
        except ValueError as exc:
            raise ConfigurationError(f"addr: {exc} in {shown!r}") from None
        return cls(host=host, port=port)

    @classmethod
    def of_url(cls, url: str) -> Origin:
        """The origin of an absolute ``https://`` URL; any other URL is refused."""
        try:
            parts, port = _split(url)
        except ValueError as exc:
            raise OriginRefusedError(f"url: invalid port in {redact_url(url)} ({exc})") from None
        if parts.scheme.lower() != "https" or not parts.hostname:
            raise OriginRefusedError(
                f"url: expected an absolute https:// URL, found {redact_url(url)}; BlindBox never sends "
                "data over plain HTTP or to a relative target"
            )
        try:
            host = _ascii_host(parts.hostname)
        except ValueError as exc:
            raise OriginRefusedError(f"url: {exc} in {redact_url(url)}") from None
        return cls(host=host, port=port)

    @functools.cached_property
    def url(self) -> str:
        """``https://host`` (port 443) or ``https://host:port``, without a trailing slash."""
        host = _host_for_url(self.host)
        return f"https://{host}" if self.port == HTTPS_PORT else f"https://{host}:{self.port}"

    @property
    def host_header(self) -> str:
        """The HTTP ``Host`` value for this origin."""
        return self.url[len("https://"):]

    def resolve(self, url: str | bytes) -> str:
        """An absolute URL: a path or relative reference is taken relative to this origin.

        Absolute URLs are returned unchanged (they are checked when sent).
        """
        text = url.decode("utf-8") if isinstance(url, bytes) else url
        if not isinstance(text, str):
            raise TypeError(f"url: expected str or bytes, got {type(url).__name__}")
        if urlsplit(text).scheme:
            return text
        return urljoin(self.url + "/", text)

    def check(self, url: str | bytes | None) -> None:
        """Raise :class:`OriginRefusedError` unless ``url`` is ``https://`` on exactly this origin.

        Messages name only the refused origin, never a path or query (they may hold secrets).
        """
        text = url.decode("utf-8") if isinstance(url, bytes) else url
        if text is None:
            raise OriginRefusedError("url: missing")
        try:
            parts, port = _split(text)
        except ValueError:
            raise OriginRefusedError(
                f"url: invalid port in {redact_url(text)}; only {self.url} is attested; nothing was sent"
            ) from None
        if parts.scheme.lower() != "https":
            raise OriginRefusedError(
                f"url: expected https:// on the attested origin {self.url}, found {redact_url(text)}; "
                "nothing was sent"
            )
        try:
            host = _ascii_host(parts.hostname or "")
        except ValueError:
            host = ""  # not a valid name: never this origin
        if host.rstrip(".") != self.host.rstrip(".") or port != self.port:
            raise OriginRefusedError(
                f"url: expected the attested origin {self.url}, found {redact_url(text)}; nothing was sent"
            )

