"""Header rewriting between the client and the upstream (sans-IO).

Security property: hop-by-hop headers (RFC 9110 §7.6.1, and every name the
``Connection`` header lists) never cross the agent in either direction; the
upstream's ``X-Forwarded-For``/``-Proto`` and ``X-BlindBox-Principal`` come
from the agent alone (client-supplied ones are dropped, not appended to); an
accepted bearer token never reaches the upstream.
"""

from __future__ import annotations

from collections.abc import Sequence

Headers = Sequence[tuple[bytes, bytes]]

PRINCIPAL = b"x-blindbox-principal"

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authorization", b"proxy-authenticate", b"expect",
})
#: Set by the agent only: a client's own values are dropped.
_AGENT_SET = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
                        b"x-real-ip", PRINCIPAL})


def _connection_listed(headers: Headers) -> frozenset[bytes]:
    names: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            names.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(names)


def _end_to_end(headers: Headers) -> list[tuple[bytes, bytes]]:
    drop = _HOP_BY_HOP | _connection_listed(headers)
    return [(name, value) for name, value in headers if name not in drop]


def upstream_request_headers(headers: Headers, *, client_ip: str, chunked: bool,
                             principal: str | None, drop_authorization: bool,
                             default_host: bytes = b"localhost") -> list[tuple[bytes, bytes]]:
    """The headers to send upstream for a client request with ``headers`` (names lowercase).

    ``chunked``: the client's body is chunked (the agent re-chunks it upstream).
    ``default_host``: the ``Host`` for an HTTP/1.0 request that had none (HTTP/1.1 needs one).
    """
    out = [(name, value) for name, value in _end_to_end(headers)
           if name not in _AGENT_SET and b"_" not in name
           and not (drop_authorization and name == b"authorization")]
    if not any(name == b"host" for name, _ in out):
        out.insert(0, (b"host", default_host))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    out.append((b"x-forwarded-for", client_ip.encode("ascii")))
    out.append((b"x-forwarded-proto", b"https"))
    if principal is not None:
        out.append((PRINCIPAL, principal.encode("ascii")))
    return out


def client_response_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The upstream response's headers to send the client (h11 frames the body itself).

    A response that came chunked loses any ``Content-Length`` too (h11 read it by its
    chunks, RFC 9112 §6.3), so the client's framing is the one the body really had.
    """
    chunked = any(name == b"transfer-encoding" for name, _ in headers)
    return [(name, value) for name, value in _end_to_end(headers)
            if not (chunked and name == b"content-length")]
