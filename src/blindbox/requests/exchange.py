"""The evidence exchange: one bounded HTTP/1.1 request/response on a fresh TLS socket.

Runs before urllib3 sends anything on the connection. Every read is bounded:
at most :data:`~blindbox.attest.evidence.MAX_EVIDENCE_BYTES` of headers and
body together (a larger ``Content-Length`` is refused before the body is
read), and the whole exchange shares one deadline, not a per-``recv`` timeout: a
:class:`Deadline` that the caller then also checks around verification, so
``timeout`` bounds the whole attestation of a connection. Parsing is linear:
the end of the headers is searched for only in newly received bytes, header
lines are split once, and repeated header values are joined once.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Protocol

from blindbox import __version__, _http
from blindbox._text import shown
from blindbox.attest.evidence import EVIDENCE_PATH, MAX_EVIDENCE_BYTES, Evidence, encode_nonce
from blindbox.errors import NotAnEnclaveError

_STATUS_RE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: ([^\r\n]*))?")
_TOKEN_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RECV_SIZE = 16 * 1024


class ExchangeTimeout(Exception):
    """The attestation of a connection (evidence exchange, then verification) overran its deadline."""


class _Socket(Protocol):
    def settimeout(self, value: float | None, /) -> None: ...
    def sendall(self, data: bytes, /) -> None: ...
    def recv(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class EvidenceResponse:
    """Parsed evidence and whether the server keeps the connection open afterwards."""

    evidence: Evidence
    size: int
    keep_alive: bool


class Deadline(_http.Deadline):
    """One monotonic deadline for the attestation of one connection (exchange and verification).

    The one deadline of :mod:`blindbox._http`, with checks that raise :class:`ExchangeTimeout`.
    """

    def check(self, step: str) -> None:
        """Raise :class:`ExchangeTimeout` naming ``step`` if the deadline has passed."""
        if self.remaining() <= 0:
            raise ExchangeTimeout(f"attestation: {step} not finished within the {self.seconds:g} s timeout")

    def arm(self, sock: _Socket) -> None:
        """Check the deadline and shrink the socket's timeout to what remains of it."""
        self.check("evidence exchange")
        sock.settimeout(self.remaining())


def _recv(sock: _Socket, limit: int, deadline: Deadline) -> bytes:
    deadline.arm(sock)
    try:
        return sock.recv(min(_RECV_SIZE, limit))
    except TimeoutError as exc:
        raise ExchangeTimeout(
            f"attestation: evidence exchange not finished within the {deadline.seconds:g} s timeout"
        ) from exc
    except ssl.SSLZeroReturnError:
        return b""


def _parse_head(head: bytes) -> tuple[str, int, str, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    status = _STATUS_RE.fullmatch(lines[0])
    if status is None:
        raise NotAnEnclaveError(
            f"evidence: expected an HTTP/1.x status line, found {lines[0][:80]!r}"
        )
    values: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise NotAnEnclaveError(f"evidence: malformed response header line {line[:80]!r}")
        key = name.lower()
        if key in values and key in (b"content-length", b"transfer-encoding"):
            raise NotAnEnclaveError(f"evidence: duplicate {name.decode('ascii')} header")
        values.setdefault(key, []).append(value.strip(b" \t"))
    # Joined once at the end: appending to a growing bytes value per line would be quadratic.
    headers = {key: b", ".join(parts) for key, parts in values.items()}
    reason = (status.group(3) or b"").decode("latin-1")
    return status.group(1).decode("ascii"), int(status.group(2)), reason, headers


def _keep_alive(version: str, headers: dict[bytes, bytes]) -> bool:
    tokens = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


def fetch_evidence(sock: _Socket, *, host: str, nonce: bytes | None,
                   timeout: float | Deadline) -> EvidenceResponse:
    """Send ``GET /.well-known/blindbox/attestation`` on ``sock`` and return the parsed evidence.

    ``timeout`` is a number of seconds or the :class:`Deadline` of the whole attestation, which
    the caller checks again around verification. Raises :class:`NotAnEnclaveError` when the
    answer is not a complete ``200`` evidence document within the size cap, and
    :class:`ExchangeTimeout` when the deadline passes first. Socket errors propagate as ``OSError``.
    """
    deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout)
    target = EVIDENCE_PATH if nonce is None else f"{EVIDENCE_PATH}?nonce={encode_nonce(nonce)}"
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
        f"User-Agent: blindbox/{__version__}\r\n\r\n"
    ).encode("ascii")
    deadline.arm(sock)
    try:
        sock.sendall(request)
    except TimeoutError as exc:
        raise ExchangeTimeout(
            f"attestation: evidence request not sent within the {deadline.seconds:g} s timeout"
        ) from exc

    buffer = bytearray()
    scanned = 0  # bytes already searched for the blank line (less the 3 a split marker may need)
    while (end := buffer.find(b"\r\n\r\n", scanned)) < 0:
        scanned = max(0, len(buffer) - 3)
        room = MAX_EVIDENCE_BYTES - len(buffer)
        if room <= 0:
            raise NotAnEnclaveError(
                f"evidence: expected response headers within {MAX_EVIDENCE_BYTES} bytes, found more"
            )
        chunk = _recv(sock, room, deadline)
        if not chunk:
            raise NotAnEnclaveError(
                f"evidence: the server closed the connection after {len(buffer)} bytes, "
                "before a complete response to the evidence request"
            )
        buffer += chunk
    head_size = end + 4
    version, status, reason, headers = _parse_head(bytes(buffer[:end]))
    if status != 200:
        found = f"{status} {shown(reason, 80)}".rstrip()
        raise NotAnEnclaveError(
            f"evidence: expected HTTP 200 for GET {EVIDENCE_PATH}, found {found} "
            "(the server does not serve BlindBox evidence)"
        )
    if b"transfer-encoding" in headers:
        raise NotAnEnclaveError(
            "evidence: expected a Content-Length framed body, found Transfer-Encoding "
            f"{headers[b'transfer-encoding'][:40].decode('latin-1')!r}"
        )
    raw_length = headers.get(b"content-length")
    if raw_length is None or not raw_length.isdigit() or len(raw_length) > 12:
        raise NotAnEnclaveError(
            f"evidence: expected a Content-Length header, found {raw_length!r}"
        )
    length = int(raw_length)
    if head_size + length > MAX_EVIDENCE_BYTES:
        raise NotAnEnclaveError(
            f"evidence: expected at most {MAX_EVIDENCE_BYTES} bytes of headers and body, the server "
            f"announced {head_size} + {length}; refused without reading the body"
        )
    body = buffer[head_size:]
    while len(body) < length:
        chunk = _recv(sock, length - len(body), deadline)
        if not chunk:
            raise NotAnEnclaveError(
                f"evidence: the server closed the connection after {len(body)} of {length} body bytes"
            )
        body += chunk
    if len(body) > length:
        raise NotAnEnclaveError(
            f"evidence: {len(body) - length} unexpected bytes after the {length}-byte evidence body"
        )
    evidence = Evidence.from_json(bytes(body))
    deadline.check("evidence exchange")
    return EvidenceResponse(
        evidence=evidence,
        size=head_size + length,
        keep_alive=_keep_alive(version, headers),
    )
