"""The evidence exchange on a raw socket: size cap, Content-Length check, overall deadline, framing."""

from __future__ import annotations

import time

import pytest

from blindbox.attest.evidence import EVIDENCE_PATH, MAX_EVIDENCE_BYTES, Evidence
from blindbox.errors import NotAnEnclaveError
from blindbox.requests.exchange import ExchangeTimeout, fetch_evidence
from blindbox.testing.evidence import LiveEvidence

NONCE = bytes(range(32))


class FakeSocket:
    """Feeds a scripted response, ``chunk`` bytes per recv, optionally slowly; records everything."""

    def __init__(self, response: bytes, *, chunk: int = 1 << 20, delay: float = 0.0) -> None:
        self.response = response
        self.chunk = chunk
        self.delay = delay
        self.sent = b""
        self.read = 0
        self.recv_sizes: list[int] = []
        self.timeouts: list[float | None] = []

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        self.recv_sizes.append(size)
        if self.delay:
            time.sleep(self.delay)
        data = self.response[self.read : self.read + min(size, self.chunk)]
        self.read += len(data)
        return data


def _response(body: bytes, *headers: str, status: str = "200 OK", version: str = "1.1") -> bytes:
    head = [f"HTTP/{version} {status}", "Content-Type: application/json", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture(scope="module")
def evidence_json() -> bytes:
    source = LiveEvidence.create()
    return source.evidence(spki_der=source.identity.spki_der, nonce=NONCE, faults=frozenset()).to_json()


def test_request_is_exactly_the_evidence_request(evidence_json: bytes) -> None:
    sock = FakeSocket(_response(evidence_json))
    result = fetch_evidence(sock, host="enclave.example:8443", nonce=NONCE, timeout=5)
    assert result.evidence == Evidence.from_json(evidence_json)
    assert result.keep_alive and result.size == len(sock.response)
    request_line, *headers = sock.sent.decode().split("\r\n")
    assert request_line == f"GET {EVIDENCE_PATH}?nonce={NONCE.hex()} HTTP/1.1"
    assert "Host: enclave.example:8443" in headers
    assert sock.sent.endswith(b"\r\n\r\n")


def test_no_nonce_means_no_query(evidence_json: bytes) -> None:
    sock = FakeSocket(_response(evidence_json))
    fetch_evidence(sock, host="h", nonce=None, timeout=5)
    assert sock.sent.startswith(f"GET {EVIDENCE_PATH} HTTP/1.1\r\n".encode())


def test_oversized_content_length_is_refused_before_reading_the_body() -> None:
    body = b"A" * (4 * MAX_EVIDENCE_BYTES)
    sock = FakeSocket(_response(body), chunk=512)
    with pytest.raises(NotAnEnclaveError, match="refused without reading the body"):
        fetch_evidence(sock, host="h", nonce=NONCE, timeout=5)
    assert sock.read <= 512  # the headers' first recv, nothing more


def test_never_reads_more_than_the_cap() -> None:
    endless_headers = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (10 * MAX_EVIDENCE_BYTES)
    sock = FakeSocket(endless_headers, chunk=4096)
    with pytest.raises(NotAnEnclaveError, match="headers within"):
        fetch_evidence(sock, host="h", nonce=NONCE, timeout=5)
    assert sock.read == MAX_EVIDENCE_BYTES
    assert all(size <= MAX_EVIDENCE_BYTES for size in sock.recv_sizes)


def test_cap_counts_headers_and_body_together() -> None:
    body = b"x" * (MAX_EVIDENCE_BYTES - 100)
    sock = FakeSocket(_response(body, "X-Pad: " + "p" * 200))
    with pytest.raises(NotAnEnclaveError, match="at most 65536 bytes of headers and body"):
        fetch_evidence(sock, host="h", nonce=NONCE, timeout=5)


def test_overall_deadline_not_per_recv(evidence_json: bytes) -> None:
    # Each recv returns quickly, but the whole answer trickles in far slower than the deadline.
    sock = FakeSocket(_response(evidence_json), chunk=10, delay=0.02)
    started = time.monotonic()
    with pytest.raises(ExchangeTimeout):
        fetch_evidence(sock, host="h", nonce=NONCE, timeout=0.3)
    assert time.monotonic() - started < 0.6
    numeric = [t for t in sock.timeouts if t is not None]
    assert numeric == sorted(numeric, reverse=True) and numeric[-1] <= 0.3


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (_response(b'{"error": "not found"}', status="404 Not Found"), "expected HTTP 200.*found 404"),
        (_response(b"{}", "Transfer-Encoding: chunked"), "Transfer-Encoding"),
        (_response(b"{}", "Content-Length: 2", "Content-Length: 2"), "duplicate Content-Length"),
        (_response(b"{}", "Content-Length: -2"), "expected a Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}", "expected a Content-Length"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n", "malformed response header"),
        (_response(b"{}") + b"HTTP/1.1 200 OK\r\n", "unexpected bytes after"),
        (_response(b"{}", "Content-Length: 100"), "closed the connection after 2 of 100"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "closed the connection after"),
        (_response(b"not json"), "invalid JSON"),
    ],
)
def test_malformed_answers_are_not_enclaves(response: bytes, message: str) -> None:
    with pytest.raises(NotAnEnclaveError, match=message):
        fetch_evidence(FakeSocket(response), host="h", nonce=NONCE, timeout=5)


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [("1.1", None, True), ("1.1", "close", False), ("1.1", "Keep-Alive, Close", False),
     ("1.0", None, False), ("1.0", "keep-alive", True)],
)
def test_connection_persistence(evidence_json: bytes, version: str, connection: str | None,
                                keep_alive: bool) -> None:
    headers = [f"Connection: {connection}"] if connection else []
    sock = FakeSocket(_response(evidence_json, *headers, version=version))
    assert fetch_evidence(sock, host="h", nonce=NONCE, timeout=5).keep_alive is keep_alive

