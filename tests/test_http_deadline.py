"""One deadline per fetch (issue 18 §3): a peer that sends one byte a second cannot hold a fetch.

Real loopback servers trickle a response one byte per second: in the body, in the headers, and
in a TLS handshake. Each fetch has ``timeout=2`` and must end with a typed error in about 2 s
(well under 5), for the KDS client, the manifest fetch, and the shared helper itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindbox import _http
from blindbox.attest.manifest import Manifest
from blindbox.errors import ManifestError, VerificationIncompleteError
from blindbox.snp.kds import KdsClient, KdsError
from blindbox.snp.product import Product
from blindbox.snp.tcb import TcbVersion

CHIP = bytes(range(1, 65))
TCB = TcbVersion.from_components(bootloader=4, tee=0, snp=24, microcode=219)
BODY_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
#: A TLS record header announcing a 16 KiB handshake record, whose bytes then never finish arriving.
TLS_RECORD_HEAD = b"\x16\x03\x03\x40\x00"
#: Generous: the deadline is 2 s; a per-read timeout would run for minutes.
BOUND = 5.0


class Trickler:
    """A loopback TCP server that answers every connection with ``head`` then one byte a second."""

    def __init__(self, head: bytes, *, read_request: bool = True, trickle_head: bool = False) -> None:
        self.head, self.read_request, self.trickle_head = head, read_request, trickle_head
        self.stop = threading.Event()
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.read_request:
                    conn.settimeout(5)
                    received = b""
                    while b"\r\n\r\n" not in received:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        received += chunk
                if not self.trickle_head:
                    conn.sendall(self.head)
                    payload = b"\x00" * 100_000
                else:
                    payload = self.head + b"\x00" * 100_000
                for index in range(len(payload)):
                    if self.stop.wait(1.0):
                        return
                    conn.sendall(payload[index:index + 1])
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def trickler() -> Iterator[list[Trickler]]:
    made: list[Trickler] = []
    yield made
    for server in made:
        server.close()


def _start(made: list[Trickler], head: bytes, **options: bool) -> Trickler:
    made.append(Trickler(head, **options))
    return made[-1]


def _kds(server: Trickler, tmp_path: Path, scheme: str = "http", **options: float) -> KdsClient:
    return KdsClient(cache_dir=tmp_path, base_url=f"{scheme}://127.0.0.1:{server.port}", timeout=2,
                     sleep=time.sleep, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["body", "headers"])
def test_kds_fetch_trickled_one_byte_a_second_ends_at_its_deadline(
    where: str, trickler: list[Trickler], tmp_path: Path
) -> None:
    server = _start(trickler, BODY_HEAD, trickle_head=where == "headers")
    client = _kds(server, tmp_path)
    started = time.monotonic()
    with pytest.raises(KdsError, match=r"no complete answer within 2 s \(deadline\)") as info:
        client.vcek(Product.MILAN, CHIP, TCB)
    elapsed = time.monotonic() - started
    assert 1.8 <= elapsed < BOUND, elapsed
    assert isinstance(info.value, VerificationIncompleteError)
    assert server.connections == 1  # the deadline covers the retries: none was started after it


def test_kds_tls_handshake_trickled_ends_at_its_deadline(trickler: list[Trickler], tmp_path: Path) -> None:
    server = _start(trickler, TLS_RECORD_HEAD, read_request=False)
    client = _kds(server, tmp_path, scheme="https")
    started = time.monotonic()
    with pytest.raises(KdsError, match="deadline"):
        client.vcek(Product.MILAN, CHIP, TCB)
    assert 1.8 <= time.monotonic() - started < BOUND


def test_kds_retries_share_the_deadline(trickler: list[Trickler], tmp_path: Path) -> None:
    """HTTP 503 at once, every time: the retries and their backoff stop at the 2 s deadline."""
    server = _start(trickler, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                              b"Connection: close\r\n\r\n")
    client = _kds(server, tmp_path, max_retries=20, max_backoff_seconds=600)
    started = time.monotonic()
    with pytest.raises(KdsError, match=r"KDS unavailable: VCEK request .* failed \(HTTP 503; the next retry"):
        client.vcek(Product.MILAN, CHIP, TCB)
    assert time.monotonic() - started < BOUND
    assert 1 <= server.connections <= 3  # backoff 2 s: the first retry would already pass the deadline


def test_manifest_fetch_trickled_ends_at_its_deadline(trickler: list[Trickler]) -> None:
    """The manifest fetch (https only): a TLS handshake trickled one byte a second."""
    server = _start(trickler, TLS_RECORD_HEAD, read_request=False)
    started = time.monotonic()
    with pytest.raises(ManifestError, match=r"manifest: fetching .* failed \(DeadlineExceeded: no complete "
                                            r"answer within 2 s \(deadline\)\)$"):
        Manifest.load(f"https://127.0.0.1:{server.port}/manifest.json", timeout=2)
    assert 1.8 <= time.monotonic() - started < BOUND


@pytest.mark.parametrize("where", ["body", "headers"])
def test_the_helper_bounds_the_whole_fetch(where: str, trickler: list[Trickler]) -> None:
    server = _start(trickler, BODY_HEAD, trickle_head=where == "headers")
    deadline = _http.Deadline(2, "test fetch")
    started = time.monotonic()
    with pytest.raises(_http.DeadlineExceeded, match="test fetch: no complete answer within 2 s"):
        response = _http.get(f"http://127.0.0.1:{server.port}/x", deadline=deadline)
        _http.read_bounded(response, 1_000_000, deadline=deadline)
    assert 1.8 <= time.monotonic() - started < BOUND


def test_a_fast_answer_is_unaffected(trickler: list[Trickler]) -> None:
    """The deadline shrinks socket timeouts; it does not cut a complete answer short."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        deadline = _http.Deadline(2)
        response = _http.get(f"http://127.0.0.1:{server.getsockname()[1]}/", deadline=deadline)
        assert _http.read_bounded(response, 100, deadline=deadline) == b"hello"
    finally:
        server.close()
        thread.join(timeout=5)
