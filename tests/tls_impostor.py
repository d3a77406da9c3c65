"""A hostile TLS server on loopback that asks clients for their certificate and records what it gets.

It is no enclave: it answers every evidence request with 404. Modes:

- ``handshake``: asks for a client certificate in the TLS 1.3 handshake (``CertificateRequest``);
- ``handshake-tls1.2``: the same in a TLS 1.2 handshake;
- ``post-handshake``: completes the handshake, then asks by TLS 1.3 post-handshake authentication
  as soon as the first request arrives (that is, during the client's evidence request);
- ``silent``: accepts TCP and never answers the TLS handshake.

``relay_first_to`` forwards the first connection, untouched, to another server (an honest
enclave), so a client pins that server's key before the impostor shows its own; ``relay_delay``
holds each relayed connection that long before forwarding (a slow but honest path).
A plain client given the certificate does send it to every mode but ``silent``: tests use that to
show the impostor would record a certificate if one were sent.
"""

from __future__ import annotations

import select
import socket
import socketserver
import ssl
import threading
import time
from types import TracebackType

from blindbox.server.client_certificate import request_client_certificate
from blindbox.server.tls import TlsIdentity

MODES = ("handshake", "handshake-tls1.2", "post-handshake", "silent")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, owner: CertificateSeekingImpostor) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        owner = self.server.owner
        with owner.lock:
            number = owner.accepted
            owner.accepted += 1
        if owner.relay_first_to is not None and (number == 0 or owner.relay_all):
            time.sleep(owner.relay_delay)
            _relay(self.request, owner.relay_first_to)
            return
        if owner.mode == "silent":
            owner.stop_event.wait(30)
            return
        try:
            tls = owner.context.wrap_socket(self.request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        with tls:
            tls.settimeout(5)
            owner.record(tls.getpeercert(binary_form=True))  # before counting: see wait_for_handshakes
            with owner.lock:
                owner.handshakes += 1
            try:
                head = _read_head(tls)
                if owner.mode == "post-handshake":
                    owner.record(request_client_certificate(tls, 2.0))
                status, body = (b"404 Not Found", b"no evidence here") if b"/.well-known/" in head \
                    else (b"200 OK", b"an ordinary site")
                tls.setblocking(True)
                tls.settimeout(5)
                tls.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
                            + b"\r\nConnection: close\r\n\r\n" + body)
            except (OSError, ssl.SSLError, ValueError):
                return


def _read_head(tls: ssl.SSLSocket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        chunk = tls.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def _relay(client: socket.socket, target: tuple[str, int]) -> None:
    with socket.create_connection(target, timeout=10) as upstream:
        peers = {client: upstream, upstream: client}
        while True:
            readable, _, _ = select.select(list(peers), [], [], 10)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                peers[sock].sendall(data)


class CertificateSeekingImpostor:
    """See the module docstring. Use as a context manager; ``certificates`` is what it received."""

    def __init__(self, mode: str, *, accept: TlsIdentity | None = None,
                 relay_first_to: tuple[str, int] | None = None, relay_all: bool = False,
                 relay_delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, found {mode!r}")
        self.mode = mode
        self.identity = TlsIdentity.generate()
        self.relay_first_to, self.relay_all, self.relay_delay = relay_first_to, relay_all, relay_delay
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.accepted = 0
        self.handshakes = 0
        self.certificates: list[bytes] = []
        self.context = self.identity.server_context()
        if mode == "handshake-tls1.2":
            self.context.maximum_version = ssl.TLSVersion.TLSv1_2
        # In the handshake a certificate is optional (a client without one goes on to the evidence
        # request); after it, one is required, so a client answering with none ends the connection.
        if mode == "post-handshake":
            self.context.post_handshake_auth = True
        self.context.verify_mode = ssl.CERT_REQUIRED if mode == "post-handshake" else ssl.CERT_OPTIONAL
        if accept is not None:
            self.context.load_verify_locations(cadata=accept.cert_pem.decode("ascii"))
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def record(self, certificate: bytes | None) -> None:
        if certificate:
            with self.lock:
                self.certificates.append(certificate)

    def wait_for_handshakes(self, count: int, timeout: float = 5.0) -> int:
        """The number of completed handshakes once it reaches ``count`` (or ``timeout`` passes).

        A TLS 1.2 client can finish its handshake, refuse the server and return
        before the server's thread has counted the handshake.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                done = self.handshakes
            if done >= count or time.monotonic() >= deadline:
                return done
            time.sleep(0.005)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    def __enter__(self) -> CertificateSeekingImpostor:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_event.set()
        self._server.shutdown()
        self._thread.join(timeout=5)
        self._server.server_close()
