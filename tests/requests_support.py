"""Helpers for the blindbox.requests tests: evidence, honest and hostile local servers, proxies.

Everything listens on 127.0.0.1 only. Servers record every byte they receive
so tests can prove that a secret never reached them.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from blindbox.server.tls import TlsIdentity
from blindbox.testing.evidence import LiveEvidence
from blindbox.testing.server import EnclaveServer, Fault

SECRET = "s3cr3t-7f1c9a"
SECRET_PATH = f"/upload/{SECRET}-path"
SECRET_HEADERS = {"X-Api-Key": f"{SECRET}-header"}
SECRET_BODY = f"patient record {SECRET}-body".encode()


def enclave(app: Any = None, *, faults: Iterable[Fault] = (), **kwargs: Any) -> EnclaveServer:
    """An honest (or faulty) simulated enclave with fresh live evidence (not started)."""
    return EnclaveServer(app, evidence=LiveEvidence.create(), faults=tuple(faults), **kwargs)


def session_kwargs(server: EnclaveServer, **extra: Any) -> dict[str, Any]:
    return {"measurements": [server.measurement], "roots": server.roots_pem, **extra}


# -- a generic (non-enclave) server, plain HTTP or HTTPS, recording what it receives ----------------
class _PlainHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _PlainTcpServer

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_Tee(self.rfile, self.server.record))  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/.well-known/"):
            status, body = 404, b"<h1>Not Found</h1>"
        else:
            status, body = 200, b"<h1>An ordinary website</h1>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _any


class _Tee(io.RawIOBase):
    def __init__(self, inner: Any, sink: Callable[[bytes], None]) -> None:
        self._inner, self._sink = inner, sink

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read1(len(buffer))
        buffer[: len(data)] = data
        self._sink(data)
        return len(data)


class _PlainTcpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, tls: TlsIdentity | None) -> None:
        self._lock = threading.Lock()
        self.raw = bytearray()
        self._context = tls.server_context() if tls is not None else None
        super().__init__(("127.0.0.1", 0), _PlainHandler)

    def record(self, data: bytes) -> None:
        with self._lock:
            self.raw += data

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self._context is None:
            # Record even bytes that never parse as HTTP (a TLS ClientHello).
            return _RecordingSocket(sock, self.record), addr
        return self._context.wrap_socket(sock, server_side=True), addr


class _RecordingSocket(socket.socket):
    def __init__(self, sock: socket.socket, sink: Callable[[bytes], None]) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._sink = sink

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:  # type: ignore[override]
        n = super().recv_into(buffer, nbytes, flags)
        self._sink(bytes(buffer[:n]))
        return n


class PlainServer:
    """An ordinary web server (no BlindBox evidence) on 127.0.0.1, HTTPS or plain HTTP."""

    def __init__(self, *, tls: bool = True) -> None:
        self.identity = TlsIdentity.generate() if tls else None
        self._server = _PlainTcpServer(self.identity)
        self.tls = tls
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def raw_bytes_received(self) -> bytes:
        with self._server._lock:
            return bytes(self._server.raw)

    def __enter__(self) -> PlainServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- CONNECT proxies ---------------------------------------------------------------------------------
class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, mitm: TlsIdentity | None, listener: TlsIdentity | None) -> None:
        self.mitm = mitm
        self.listener = listener.server_context() if listener is not None else None
        self.lock = threading.Lock()
        self.targets: list[str] = []
        self.client_bytes = bytearray()  # what the client sent, after the CONNECT head (plaintext if MITM)
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(10)
        if self.server.listener is not None:  # an https:// proxy: TLS to the proxy itself first
            client = self.server.listener.wrap_socket(client, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, target, _ = line.split(" ", 2)
        with self.server.lock:
            self.server.targets.append(f"{method} {target}")
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=10)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self.server.mitm is not None:
            # Terminate the client's TLS with the proxy's own key, re-originate TLS upstream.
            client = self.server.mitm.server_context().wrap_socket(client, server_side=True)
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            upstream = ctx.wrap_socket(upstream)
        self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """One thread, both directions (an SSL socket must not be used from two threads at once)."""
        peers = {client: upstream, upstream: client}
        try:
            while True:
                ready = [s for s in peers if isinstance(s, ssl.SSLSocket) and s.pending()]
                if not ready:
                    ready, _, _ = select.select(list(peers), [], [], 10)
                    if not ready:
                        return
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is client:
                        with self.server.lock:
                            self.server.client_bytes += data
                    peers[src].sendall(data)
        except OSError:
            return
        finally:
            for sock in peers:
                with contextlib.suppress(OSError):
                    sock.close()


def _proxy_identity(hostnames: Sequence[str]) -> TlsIdentity:
    """A self-signed TLS identity like the enclave's, but with its own subject name.

    OpenSSL finds an issuer by subject name, so a CA bundle holding both this certificate and an
    enclave one (same subject) would verify neither reliably.
    """
    return TlsIdentity.generate(hostnames, valid_days=1, common_name="blindbox-test-proxy")


class ConnectProxy:
    """A CONNECT proxy on 127.0.0.1; ``mitm`` makes it intercept TLS with its own certificate.

    ``tls`` makes it an ``https://`` proxy (TLS to the proxy, then TLS in TLS to the target); its
    certificate is self-signed for 127.0.0.1, so clients verify it only under :attr:`ca_pem`.
    """

    def __init__(self, *, mitm: bool = False, tls: bool = False,
                 tls_hostnames: Sequence[str] = ("localhost", "127.0.0.1")) -> None:
        self.tls = tls
        self.identity = _proxy_identity(tls_hostnames) if tls else None
        self._server = _ProxyServer(TlsIdentity.generate() if mitm else None, self.identity)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def ca_pem(self) -> bytes:
        """The https:// proxy's own (self-signed) certificate: the CA to verify it under."""
        if self.identity is None:
            raise ValueError("a plain http:// proxy has no certificate")
        return self.identity.cert_pem

    def write_ca(self, directory: Path) -> str:
        """:attr:`ca_pem` written to a file in ``directory``, for ``verify=``/``REQUESTS_CA_BUNDLE``."""
        path = directory / "proxy-ca.pem"
        path.write_bytes(self.ca_pem)
        return str(path)

    @property
    def targets(self) -> list[str]:
        with self._server.lock:
            return list(self._server.targets)

    def client_bytes(self) -> bytes:
        with self._server.lock:
            return bytes(self._server.client_bytes)

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- assertions -----------------------------------------------------------------------------------
def assert_no_secret(*recorded: bytes) -> None:
    for data in recorded:
        assert SECRET.encode() not in data, "a secret reached a server that was not attested"


def server_bytes(server: EnclaveServer) -> bytes:
    """Everything an EnclaveServer received, plus its parsed request records."""
    parsed = json.dumps([[r.method, r.path, r.headers, r.body.decode("latin-1")]
                         for r in server.received]).encode()
    return server.raw_bytes_received() + parsed


@contextlib.contextmanager
def running(*servers: Any) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        yield


# -- a TCP load balancer: one address, several enclave replicas ------------------------------------
class _BalancerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.lock = threading.Lock()
        self.count = 0
        super().__init__(("127.0.0.1", 0), _BalancerHandler)

    def next_target(self) -> tuple[str, int]:
        with self.lock:
            target = self.targets[self.count % len(self.targets)]
            self.count += 1
            return target


class _BalancerHandler(socketserver.BaseRequestHandler):
    server: _BalancerServer

    def handle(self) -> None:
        client: socket.socket = self.request
        upstream = socket.create_connection(self.server.next_target(), timeout=10)
        peers = {client: upstream, upstream: client}
        try:
            while True:
                ready, _, _ = select.select(list(peers), [], [], 10)
                if not ready:
                    return
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    peers[src].sendall(data)
        except OSError:
            return
        finally:
            for sock in peers:
                with contextlib.suppress(OSError):
                    sock.close()


class RoundRobinBalancer:
    """Plain TCP round-robin over ``servers``: each new connection goes to the next replica."""

    def __init__(self, *servers: EnclaveServer) -> None:
        self._server = _BalancerServer([("127.0.0.1", s.port) for s in servers])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RoundRobinBalancer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
