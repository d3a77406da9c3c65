"""A real TLS fixture server that speaks protocol v1 — for tests and users' CI.

:class:`EnclaveServer` is the enclave agent (:mod:`blindbox.server`) on
127.0.0.1 (ephemeral port), with the test kit's pieces plugged into its
extension points: an evidence source (live software platform or a recorded
fixture) behind a fault hook, and a WSGI app served on a loopback upstream
(:mod:`blindbox.testing.upstream`) that the agent proxies to. It records every
byte it receives (decrypted), so tests can prove that a client sent nothing
before verification. Fault modes make it misbehave in the ways a client must
detect. With ``client_certificates=`` it requires mutual TLS as an enclave
should: the evidence request is served without a client certificate, every
other request needs one of those listed, asked for by TLS 1.3 post-handshake
authentication.

The evidence it serves is SIMULATED: it verifies only against the test roots
the caller passes explicitly, never against AMD's.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, ClassVar, Protocol

import h11
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from blindbox.attest.evidence import EVIDENCE_PATH, Evidence
from blindbox.attest.owner_policy import OwnerPolicy
from blindbox.server.agent import Agent
from blindbox.server.auth import Authenticator, Principal
from blindbox.server.connection import Limits, Site
from blindbox.server.framing import Refusal
from blindbox.server.tls import TlsIdentity
from blindbox.testing.upstream import WsgiApp, WsgiUpstream

log = logging.getLogger("blindbox.testing")

__all__ = ["EnclaveServer", "EvidenceSource", "Fault", "RecordedRequest", "WsgiApp", "echo_app"]


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



class _FaultyEvidence:
    """The agent's evidence source (:class:`blindbox.server.evidence.EvidenceSource`): the test
    kit's source, misbehaving as ``faults`` say."""

    def __init__(self, source: EvidenceSource, faults: frozenset[Fault], slow_seconds: float) -> None:
        self.source, self.faults, self.slow_seconds = source, faults, slow_seconds
        self.close_after_evidence = Fault.CLOSE_AFTER_EVIDENCE in faults
        self._other = TlsIdentity.generate() if Fault.WRONG_KEY in faults else None

    def document(self, nonce: bytes | None) -> bytes:
        faults = self.faults
        if Fault.NO_EVIDENCE in faults:
            raise Refusal(404, "not found")
        if Fault.SLOW_EVIDENCE in faults:
            time.sleep(self.slow_seconds)
        if Fault.HUGE_JSON in faults:
            return b'{"pad": "' + b"A" * (4 * 1024 * 1024) + b'"}'
        if Fault.MALFORMED_JSON in faults:
            return b'{"version": 1, "tee": "sev-snp", "report": '
        spki = (self._other or self.source.identity).spki_der
        if Fault.NONCE_IGNORED in faults:
            nonce = None
        evidence = self.source.evidence(spki_der=spki, nonce=nonce, faults=faults)
        if Fault.CORRUPT_SIGNATURE in faults:
            report = bytearray(evidence.report)
            report[0x2A0] ^= 0x01
            evidence = replace(evidence, report=bytes(report))
        body = evidence.to_json()
        if Fault.TRUNCATED_REPORT in faults:
            doc = json.loads(body)
            doc["report"] = base64.b64encode(evidence.report[:1000]).decode()
            body = json.dumps(doc).encode()
        return body


_connection = threading.local()  # the number of the connection a thread of the agent serves


class _Recorder:
    """Parses one connection's decrypted request bytes (h11, a parser per request) into records."""

    def __init__(self, stats: _Stats, conn_id: int) -> None:
        self.stats, self.conn_id = stats, conn_id
        self.parser: h11.Connection | None = h11.Connection(h11.SERVER)
        self.request: h11.Request | None = None
        self.body = bytearray()

    def feed(self, data: bytes) -> None:
        if self.parser is None:
            return
        self.parser.receive_data(data)
        try:
            while True:
                event = self.parser.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Request):
                    self.request, self.body = event, bytearray()
                elif isinstance(event, h11.Data):
                    self.body += event.data
                elif isinstance(event, h11.EndOfMessage) and self.request is not None:
                    self._record(self.request)
                    leftover = self.parser.trailing_data[0]
                    self.parser = h11.Connection(h11.SERVER)
                    if leftover:  # (b"" would mean end of stream to h11)
                        self.parser.receive_data(leftover)
                else:
                    self.parser = None
                    return
        except h11.RemoteProtocolError:
            self.parser = None  # the agent refuses what does not parse; nothing more is recorded

    def _record(self, request: h11.Request) -> None:
        headers: dict[str, str] = {}
        for name, value in request.headers.raw_items():
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        record = RecordedRequest(request.method.decode("ascii"), request.target.decode("latin-1"),
                                 headers, bytes(self.body), self.conn_id)
        with self.stats.lock:
            self.stats.requests.append(record)


class _RecordingSocket(ssl.SSLSocket):
    """The agent's TLS sockets (``SSLContext.sslsocket_class``): every decrypted byte received is kept."""

    stats: ClassVar[_Stats]
    _recorder: _Recorder | None = None

    def do_handshake(self, block: bool = False) -> None:
        if self._recorder is not None:  # a post-handshake certificate request
            super().do_handshake(block)
            return
        with self.stats.lock:
            self.stats.connections += 1
            conn_id = self.stats.connections
            self._raw = bytearray()
            self.stats.raw.append(self._raw)
        self._recorder = _Recorder(self.stats, conn_id)
        _connection.conn_id = conn_id
        super().do_handshake(block)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        data = super().recv(buflen, flags)
        if data and self._recorder is not None:
            with self.stats.lock:
                self._raw += data
            self._recorder.feed(data)
        return data


class _RecordingAuthenticator(Authenticator):
    """The agent's authenticator, keeping each connection's client certificate."""

    def __init__(self, policy: OwnerPolicy | None, stats: _Stats) -> None:
        super().__init__(policy)
        self.stats = stats

    def certificate(self, cert_der: bytes | None) -> Principal | None:
        if cert_der:
            entry = (int(getattr(_connection, "conn_id", 0)), cert_der)
            with self.stats.lock:
                if entry not in self.stats.client_certificates:
                    self.stats.client_certificates.append(entry)
        return super().certificate(cert_der)


def _certificate_policy(pem: str) -> OwnerPolicy:
    """An owner policy admitting exactly the client certificates in ``pem`` (by SPKI SHA-256)."""
    spkis = [hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
        for cert in x509.load_pem_x509_certificates(pem.encode("ascii"))]
    return OwnerPolicy(authentication_required=True, client_certificate_spki_sha256=spkis)


def _app_with_faults(app: WsgiApp, faults: frozenset[Fault], redirect_target: str) -> WsgiApp:
    """``app`` as the agent's upstream sees it: an HTTPS origin, and REDIRECT_OTHER_ORIGIN."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.url_scheme"] = "https"
        if Fault.REDIRECT_OTHER_ORIGIN in faults:
            start_response("307 Temporary Redirect", [("Content-Type", "text/plain"), ("Content-Length", "0"),
                                                      ("Location", redirect_target + environ["PATH_INFO"])])
            return [b""]
        return app(environ, start_response)

    return wrapped


class EnclaveServer:
    """A running simulated enclave: the agent on 127.0.0.1, protocol v1 evidence, a WSGI app.

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
        """``client_certificates``: PEM of the client certificates accepted, matched by SPKI
        SHA-256 as the agent's owner-policy authentication does (a CA certificate admits only
        itself). When given, every request but the evidence request needs one, asked for after the
        handshake: a client that answers with none gets the TLS alert ``certificate_required``, one
        that cannot be asked (no post-handshake authentication) a ``401``."""
        self.faults = frozenset(faults)
        self.source = evidence
        self._stats = _Stats()
        pem = client_certificates.decode("ascii") if isinstance(client_certificates, bytes) \
            else client_certificates
        self._upstream = WsgiUpstream(_app_with_faults(app or echo_app, self.faults, redirect_target))
        self._evidence = _FaultyEvidence(evidence, self.faults, slow_seconds)
        limits = Limits(handshake_timeout=io_timeout, head_timeout=io_timeout, idle_timeout=io_timeout,
                        io_timeout=io_timeout)
        auth = _RecordingAuthenticator(_certificate_policy(pem) if pem is not None else None, self._stats)
        self._site = Site(evidence=self._evidence, auth=auth, upstream=self._upstream.address, limits=limits)
        self._agent = Agent(evidence.identity, self._site, host=host, port=port)
        self._address = self._agent.address  # still known once stopped
        recording = type("_Recording", (_RecordingSocket,), {"stats": self._stats})
        contexts = [self._agent.context]
        if Fault.SWITCH_CERTIFICATE in self.faults:
            contexts.append(TlsIdentity.generate().server_context())
            contexts[1].minimum_version = contexts[0].minimum_version
        handshakes = iter(range(1 << 62))

        def choose(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, context: ssl.SSLContext) -> None:
            # SWITCH_CERTIFICATE: the first connection shows the attested key, later ones another.
            if next(handshakes) > 0 and len(contexts) > 1:
                sock.context = contexts[1]

        for context in contexts:
            context.sslsocket_class = recording
        if len(contexts) > 1:
            self._agent.context.sni_callback = choose
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._address
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return self._address[1]

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
        with self._stats.lock:
            return [r for r in self._stats.requests if not r.path.startswith(EVIDENCE_PATH)]

    @property
    def evidence_requests(self) -> list[RecordedRequest]:
        with self._stats.lock:
            return [r for r in self._stats.requests if r.path.startswith(EVIDENCE_PATH)]

    @property
    def client_certificates(self) -> list[tuple[int, bytes]]:
        """(connection number, DER certificate) for each client certificate received."""
        with self._stats.lock:
            return list(self._stats.client_certificates)

    @property
    def connections(self) -> int:
        with self._stats.lock:
            return self._stats.connections

    def raw_bytes_received(self) -> bytes:
        """Every byte received on every connection so far (decrypted), concatenated."""
        with self._stats.lock:
            return b"".join(bytes(raw) for raw in self._stats.raw)

    def start(self) -> EnclaveServer:
        if self._thread is None:
            self._upstream.start()
            self._thread = threading.Thread(target=self._agent.serve_forever,
                                            name=f"blindbox-enclave-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._agent.stop(grace=0.5)
            self._thread.join(timeout=5)
            self._thread = None
        else:
            self._agent.close()
        self._upstream.stop()
        self._site.pool.close()

    def __enter__(self) -> EnclaveServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (for the CLI)."""
        self._upstream.start()
        try:
            self._agent.serve_forever()
        finally:
            self._agent.stop(grace=0.5)
            self._upstream.stop()
            self._site.pool.close()
