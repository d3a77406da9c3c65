"""A real TLS fixture server that speaks protocol v1 — for tests and users' CI.

:class:`EnclaveServer` listens on 127.0.0.1 (ephemeral port), serves HTTP/1.1
with keep-alive over TLS, answers ``GET /.well-known/blindbox/attestation``
from an evidence source (live software platform or a recorded fixture), and
forwards every other request to a WSGI app. It records every byte it receives,
so tests can prove that a client sent nothing before verification. Fault
modes make it misbehave in the ways a client must detect. With
``client_certificates=`` it requires mutual TLS as an enclave should: the
evidence request is served without a client certificate, every other request
needs one, asked for by TLS 1.3 post-handshake authentication.

The evidence it serves is SIMULATED: it verifies only against the test roots
the caller passes explicitly, never against AMD's.
"""

from __future__ import annotations

import base64
import enum
import http.server
import io
import json
import logging
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from blindbox.attest.evidence import EVIDENCE_PATH, Evidence
from blindbox.server.client_certificate import request_client_certificate
from blindbox.server.evidence import parse_nonce_query
from blindbox.server.framing import Refusal
from blindbox.server.tls import TlsIdentity

log = logging.getLogger("blindbox.testing")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
MAX_BODY = 64 * 1024 * 1024


class Fault(enum.Enum):
    """Ways the fixture server can misbehave, one per client security check."""

    WRONG_KEY = "wrong-key"  # report_data binds another TLS key
    NONCE_IGNORED = "nonce-ignored"  # report_data binds no nonce although one was sent
    DEBUG_POLICY = "debug-policy"  # the guest policy allows debugging
    OTHER_MEASUREMENT = "other-measurement"  # the enclave runs other code
    CORRUPT_SIGNATURE = "corrupt-signature"  # one bit of the report signature flipped
    TRUNCATED_REPORT = "truncated-report"  # the report is cut short
    HUGE_JSON = "huge-json"  # an evidence body far over the 64 KiB cap
    MALFORMED_JSON = "malformed-json"  # an evidence body that is not JSON
    NO_EVIDENCE = "no-evidence"  # the evidence endpoint answers 404
    SLOW_EVIDENCE = "slow-evidence"  # the evidence endpoint stalls before answering
    SWITCH_CERTIFICATE = "switch-certificate"  # later connections present another key
    REDIRECT_OTHER_ORIGIN = "redirect-other-origin"  # the app redirects to another origin
    CLOSE_AFTER_EVIDENCE = "close-after-evidence"  # evidence answered with Connection: close


class EvidenceSource(Protocol):
    """Produces evidence for one TLS key; see :mod:`blindbox.testing.evidence`."""

    @property
    def identity(self) -> TlsIdentity: ...

    @property
    def measurement(self) -> str: ...

    @property
    def roots_pem(self) -> str: ...

    @property
    def policy(self) -> bytes | None: ...

    def evidence(self, *, spki_der: bytes, nonce: bytes | None, faults: frozenset[Fault]) -> Evidence: ...


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received (evidence requests included)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0
    raw: list[bytearray] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    client_certificates: list[tuple[int, bytes]] = field(default_factory=list)


class _RecordingReader(io.RawIOBase):
    """Wraps a socket reader and keeps a copy of every byte read."""

    def __init__(self, inner: BinaryIO, sink: bytearray) -> None:
        self._inner, self._sink = inner, sink

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read1(len(buffer))  # type: ignore[attr-defined]
        n = len(data)
        buffer[:n] = data
        self._sink.extend(data)
        return n


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Default app: echoes the request as JSON."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    doc = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ.get("QUERY_STRING", ""),
        "body": body.decode("utf-8", "replace"),
    }
    out = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffered writes: each response (headers and body, up to 64 KiB: any evidence document) leaves
    # in one send, flushed by handle_one_request, instead of one for the headers and one for the body.
    wbufsize = 64 * 1024
    server: _TlsServer

    def setup(self) -> None:
        sock: ssl.SSLSocket = self.request
        sock.settimeout(self.server.io_timeout)
        try:
            sock.do_handshake()
        except (OSError, ssl.SSLError):
            self.handshake_ok = False
        else:
            self.handshake_ok = True
        super().setup()
        self.client_certificate_asked = False
        self.client_certificate: bytes | None = None
        self.raw = bytearray()
        with self.server.stats.lock:
            self.server.stats.connections += 1
            self.conn_id = self.server.stats.connections
            self.server.stats.raw.append(self.raw)
        self.rfile = io.BufferedReader(_RecordingReader(self.rfile, self.raw))  # type: ignore[arg-type]

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    def handle(self) -> None:
        if self.handshake_ok:
            try:
                super().handle()
            except (OSError, ssl.SSLError):
                pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fixture server: " + format, *args)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = bytearray()
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(chunks)
                if len(chunks) + size > MAX_BODY:
                    raise ValueError("request body too large")
                chunks += self.rfile.read(size)
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              extra: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        body = self._read_body()
        record = RecordedRequest(self.command, self.path, dict(self.headers.items()), body, self.conn_id)
        with self.server.stats.lock:
            self.server.stats.requests.append(record)
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == EVIDENCE_PATH and self.command == "GET":
            self._serve_evidence(parsed.query)
        elif self.server.client_auth and not self._client_certificate():
            self.close_connection = True
            self._send(403, b'{"error": "a client certificate is required"}')
        else:
            self._serve_app(parsed, body)

    def _client_certificate(self) -> bool:
        """Whether this connection's client presented a certificate (asked for once per connection)."""
        if not self.client_certificate_asked:
            self.client_certificate_asked = True
            self.client_certificate = request_client_certificate(self.request, self.server.io_timeout)
            if self.client_certificate is not None:
                with self.server.stats.lock:
                    self.server.stats.client_certificates.append((self.conn_id, self.client_certificate))
        return self.client_certificate is not None

    def _serve_evidence(self, query: str) -> None:
        faults = self.server.faults
        if Fault.CLOSE_AFTER_EVIDENCE in faults:
            self.close_connection = True
        if Fault.NO_EVIDENCE in faults:
            self._send(404, b'{"error": "not found"}')
            return
        try:
            nonce = parse_nonce_query(query)
        except Refusal as refusal:
            self._send(400, json.dumps({"error": refusal.reason}).encode())
            return
        if Fault.SLOW_EVIDENCE in faults:
            time.sleep(self.server.slow_seconds)
        if Fault.HUGE_JSON in faults:
            self._send(200, b'{"pad": "' + b"A" * (4 * 1024 * 1024) + b'"}')
            return
        if Fault.MALFORMED_JSON in faults:
            self._send(200, b'{"version": 1, "tee": "sev-snp", "report": ')
            return
        identity = self.server.identities[0]
        spki = identity.spki_der
        if Fault.WRONG_KEY in faults:
            spki = self.server.other_identity.spki_der
        if Fault.NONCE_IGNORED in faults:
            nonce = None
        evidence = self.server.source.evidence(spki_der=spki, nonce=nonce, faults=faults)
        if Fault.CORRUPT_SIGNATURE in faults:
            report = bytearray(evidence.report)
            report[0x2A0] ^= 0x01
            evidence = replace(evidence, report=bytes(report))
        body = evidence.to_json()
        if Fault.TRUNCATED_REPORT in faults:
            doc = json.loads(body)
            doc["report"] = base64.b64encode(evidence.report[:1000]).decode()
            body = json.dumps(doc).encode()
        self._send(200, body)

    def _serve_app(self, parsed: urllib.parse.SplitResult, body: bytes) -> None:
        if Fault.REDIRECT_OTHER_ORIGIN in self.server.faults:
            target = self.server.redirect_target + parsed.path
            self._send(307, b"", "text/plain", [("Location", target)])
            return
        host, port = self.server.server_address[:2]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote(parsed.path),
            "QUERY_STRING": parsed.query,
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for key, value in self.headers.items():
            name = key.upper().replace("-", "_")
            if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                continue
            key_name = f"HTTP_{name}"
            environ[key_name] = f"{environ[key_name]},{value}" if key_name in environ else value
        status_headers: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_headers[:] = [status, headers]
            return lambda data: None

        result = self.server.app(environ, start_response)
        try:
            out = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = status_headers
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for k, v in headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)


    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch


class _TlsServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], *, app: WsgiApp, source: EvidenceSource,
                 faults: frozenset[Fault], identities: list[TlsIdentity], other_identity: TlsIdentity,
                 slow_seconds: float, io_timeout: float, redirect_target: str,
                 client_certificates: str | None) -> None:
        self.app, self.source, self.faults = app, source, faults
        self.identities, self.other_identity = identities, other_identity
        self.contexts = [identity.server_context() for identity in identities]
        self.client_auth = client_certificates is not None
        for context in self.contexts if client_certificates is not None else ():
            # Post-handshake only: the evidence request is answered on a connection without one.
            # Asked for later, a certificate must be given and verify (else the TLS alert
            # certificate_required); a client that cannot be asked gets 403.
            context.post_handshake_auth = True
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=client_certificates)
        self.slow_seconds, self.io_timeout, self.redirect_target = slow_seconds, io_timeout, redirect_target
        self.stats = _Stats()
        self._accepted = 0
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # Headers and body are written separately: without this, delayed ACKs add ~40 ms a response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # SWITCH_CERTIFICATE: the first connection shows the attested key, later ones another.
        index = 0 if self._accepted == 0 or len(self.contexts) == 1 else 1
        self._accepted += 1
        return self.contexts[index].wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class EnclaveServer:
    """A running simulated enclave: TLS on 127.0.0.1, protocol v1 evidence, a WSGI app.

    Use as a context manager. ``roots_pem`` and ``measurement`` are what a
    client needs to trust it (test roots, never AMD's).
    """

    def __init__(
        self,
        app: WsgiApp | None = None,
        *,
        evidence: EvidenceSource,
        faults: Iterable[Fault] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        slow_seconds: float = 5.0,
        io_timeout: float = 30.0,
        redirect_target: str = "https://127.0.0.1:9",
        client_certificates: str | bytes | None = None,
    ) -> None:
        """``client_certificates``: PEM of the client certificates (or their CA) accepted. When
        given, every request but the evidence request needs one, asked for after the handshake:
        a client that answers with none gets the TLS alert ``certificate_required``, one that
        cannot be asked (no post-handshake authentication) a ``403``."""
        self.faults = frozenset(faults)
        self.source = evidence
        identities = [evidence.identity]
        if Fault.SWITCH_CERTIFICATE in self.faults:
            identities.append(TlsIdentity.generate())
        self._server = _TlsServer(
            (host, port), app=app or echo_app, source=evidence, faults=self.faults,
            identities=identities, other_identity=TlsIdentity.generate(),
            slow_seconds=slow_seconds, io_timeout=io_timeout, redirect_target=redirect_target,
            client_certificates=(client_certificates.decode("ascii")
                                 if isinstance(client_certificates, bytes) else client_certificates),
        )
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    @property
    def roots_pem(self) -> str:
        return self.source.roots_pem

    @property
    def measurement(self) -> str:
        return self.source.measurement

    @property
    def identity(self) -> TlsIdentity:
        return self.source.identity

    @property
    def received(self) -> list[RecordedRequest]:
        """Every request received except evidence requests."""
        with self._server.stats.lock:
            return [r for r in self._server.stats.requests if not r.path.startswith(EVIDENCE_PATH)]

    @property
    def evidence_requests(self) -> list[RecordedRequest]:
        with self._server.stats.lock:
            return [r for r in self._server.stats.requests if r.path.startswith(EVIDENCE_PATH)]

    @property
    def client_certificates(self) -> list[tuple[int, bytes]]:
        """(connection number, DER certificate) for each client certificate received."""
        with self._server.stats.lock:
            return list(self._server.stats.client_certificates)

    @property
    def connections(self) -> int:
        with self._server.stats.lock:
            return self._server.stats.connections

    def raw_bytes_received(self) -> bytes:
        """Every byte received on every connection so far (decrypted), concatenated."""
        with self._server.stats.lock:
            return b"".join(bytes(raw) for raw in self._server.stats.raw)

    def start(self) -> EnclaveServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"blindbox-enclave-{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> EnclaveServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (for the CLI)."""
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()
