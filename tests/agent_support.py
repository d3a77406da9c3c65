"""Helpers for the agent tests: a real logging upstream, an agent in a thread or a process, raw TLS clients.

The upstream is a small threaded HTTP/1.1 application (h11 on real loopback
sockets) that LOGS every request head it receives, so a test can prove what
the agent let through, and never through the agent's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h11

from blindbox.attest.owner_policy import OwnerPolicy
from blindbox.server.agent import Agent
from blindbox.server.auth import Authenticator
from blindbox.server.backends import RawEvidence, ReportBackend
from blindbox.server.connection import Limits, Site
from blindbox.server.evidence import EvidenceService
from blindbox.server.tls import TlsIdentity
from blindbox.testing.backend import SimulatedBackend
from blindbox.testing.evidence import DEMO_MEASUREMENT

TOKEN = "s3cret-token-for-alice"
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()
OTHER_TOKEN = "not-listed-token"
BACKEND = SimulatedBackend.create(DEMO_MEASUREMENT)


RAW_RESPONSES = {
    "/garbage": b"NOT HTTP AT ALL\r\n\r\n",
    "/te-and-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n",
    "/cut": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
}


@dataclass(frozen=True)
class Seen:
    """A request head as the upstream saw it (body size only)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body_bytes: int

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


@dataclass
class Upstream:
    """A threaded HTTP/1.1 app on 127.0.0.1 that logs every request it receives.

    Routes: ``/slow`` answers in chunks, each sent when the test sets ``release``;
    ``/bye`` answers, then closes the connection it said it would keep;
    ``/hang`` never answers (and logs when its client goes away); ``/size`` counts
    the request body without keeping it; anything else echoes the request as JSON.
    """

    port: int = 0
    log: list[Seen] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    release: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    connections: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self.port = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self.log)

    def close(self) -> None:
        """Stop as a killed process would: the listener and every open connection go at once."""
        self._stop = True
        with self._lock:
            open_sockets, self._open = list(self._open), set()
        for sock in [self._sock, *open_sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv()
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = h11.Connection(h11.SERVER)
        with sock:
            while True:
                try:
                    request, body = self._read_request(sock, conn)
                except (OSError, h11.RemoteProtocolError):
                    return
                if request is None:
                    return
                try:
                    answered = self._respond(sock, conn, request, body)
                except OSError:  # the agent went away, or close() shut this connection
                    return
                if not answered or request.target == b"/bye":
                    return  # /bye: answered as kept alive, then closed (an upstream's idle timeout)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return

    def _read_request(self, sock: socket.socket, conn: h11.Connection) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                with self._lock:  # logged at once, before any body: the head was forwarded
                    self.log.append(Seen(event.method.decode(), event.target.decode(),
                                         [(k.decode(), v.decode()) for k, v in event.headers], 0))
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if request is not None and request.target != b"/size":
                    body += event.data
            elif isinstance(event, h11.EndOfMessage):
                with self._lock:
                    last = self.log[-1]
                    self.log[-1] = Seen(last.method, last.target, last.headers, size)
                return request, bytes(body)
            else:
                return None, b""

    def _respond(self, sock: socket.socket, conn: h11.Connection, request: h11.Request, body: bytes) -> bool:
        path = request.target.decode()
        if path == "/hang":
            sock.settimeout(30)
            try:
                closed = sock.recv(1) == b""
            except OSError:
                closed = True
            if closed:
                self.disconnected.set()
            return False
        if path in RAW_RESPONSES:  # a misbehaving upstream, byte for byte
            sock.sendall(RAW_RESPONSES[path])
            return False
        if path.startswith("/slow"):
            sock.sendall(conn.send(h11.Response(status_code=200, headers=[(b"content-type", b"text/plain")])))
            for i in range(3):
                if not self.release.acquire(timeout=30):
                    return False
                sock.sendall(conn.send(h11.Data(data=f"chunk{i}\n".encode())))
            sock.sendall(conn.send(h11.EndOfMessage()))
            return True
        doc = {"method": request.method.decode(), "target": path, "body_bytes": len(body),
               "headers": [[k.decode(), v.decode()] for k, v in request.headers]}
        if path == "/size":
            doc["body_bytes"] = self.seen()[-1].body_bytes
        else:
            doc["body"] = body.decode("utf-8", "replace")
        out = json.dumps(doc).encode()
        head = conn.send(h11.Response(status_code=200, headers=[
            (b"content-type", b"application/json"), (b"content-length", str(len(out)).encode()),
            (b"connection", b"keep-alive"), (b"x-upstream", b"yes")]))
        body_bytes = conn.send(h11.Data(data=out)) if request.method != b"HEAD" else b""
        sock.sendall(head + body_bytes + conn.send(h11.EndOfMessage()))
        return True


class GatedBackend:
    """The simulator, but each report waits until the test opens ``gate`` (a busy secure processor)."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def get_report(self, report_data: bytes, vmpl: int | None = None) -> RawEvidence:
        self.entered.set()
        self.gate.wait(10)
        return BACKEND.get_report(report_data, vmpl)


def policy(*, tokens: tuple[str, ...] = (TOKEN_SHA256,), spkis: tuple[str, ...] = ()) -> OwnerPolicy:
    return OwnerPolicy(authentication_required=True, bearer_token_sha256=tokens,
                       client_certificate_spki_sha256=spkis)


@dataclass
class RunningAgent:
    agent: Agent
    identity: TlsIdentity
    policy: OwnerPolicy | None

    @property
    def port(self) -> int:
        return self.agent.address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@contextmanager
def running_agent(upstream_port: int, owner_policy: OwnerPolicy | None = None,
                  limits: Limits | None = None, max_waiting: int = 8,
                  backend: ReportBackend = BACKEND, **agent_options: int) -> Iterator[RunningAgent]:
    """An :class:`Agent` serving in a thread, with the simulator backend unless told otherwise."""
    identity = TlsIdentity.generate()
    evidence = EvidenceService(backend, spki_der=identity.spki_der,
                               policy=owner_policy.to_bytes() if owner_policy else None,
                               max_waiting=max_waiting)
    site = Site(evidence=evidence, auth=Authenticator(owner_policy), upstream=("127.0.0.1", upstream_port),
                limits=limits or Limits())
    agent = Agent(identity, site, host="127.0.0.1", port=0, **agent_options)
    thread = threading.Thread(target=agent.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningAgent(agent, identity, owner_policy)
    finally:
        agent.stop(grace=2.0)
        thread.join(timeout=5)


def tls_client(port: int, *, cert: tuple[str, str] | None = None, source: str = "127.0.0.1") -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.post_handshake_auth = True
        ctx.load_cert_chain(*cert)
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10,
                                                    source_address=(source, 0)))
    return sock


def exchange(port: int, raw: bytes, *, method: bytes = b"GET", max_responses: int = 16,
             timeout: float = 10.0) -> tuple[list[tuple[int, dict[str, str], bytes]], bool]:
    """Send ``raw`` on one TLS connection; parse responses until the server closes (or ``max_responses``).

    Returns the responses (status, headers, body) and whether the server closed the connection.
    """
    sock = tls_client(port)
    sock.sendall(raw)
    client = h11.Connection(h11.CLIENT)
    responses: list[tuple[int, dict[str, str], bytes]] = []
    closed = False
    deadline = time.monotonic() + timeout
    status, headers, body = 0, {}, bytearray()
    with sock:
        # h11 needs to know the requests to frame responses: tell it one GET per response.
        client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        client.send(h11.EndOfMessage())
        while len(responses) < max_responses and time.monotonic() < deadline:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError:
                break
            if event is h11.NEED_DATA:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    data = sock.recv(65536)
                except (TimeoutError, ssl.SSLError, OSError):
                    break
                if not data:
                    closed = True
                client.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status, body = event.status_code, bytearray()
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                responses.append((status, headers, bytes(body)))
                if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                    closed = _closed_soon(sock)
                    break
                client.start_next_cycle()
                client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
                client.send(h11.EndOfMessage())
            elif isinstance(event, h11.ConnectionClosed):
                closed = True
                break
    return responses, closed


def _closed_soon(sock: ssl.SSLSocket) -> bool:
    sock.settimeout(3)
    try:
        return sock.recv(1) == b""
    except (OSError, ssl.SSLError):
        return True


def serve_process(upstream_url: str, tmp: Path, *extra: str, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    """``blindbox serve --backend simulator`` as a process; (process, https URL) once it listens."""
    command = [sys.executable, "-m", "blindbox", "serve", "--upstream", upstream_url,
               "--listen", "127.0.0.1:0", "--backend", "simulator", "--measurement", DEMO_MEASUREMENT,
               "--roots-out", str(tmp / "roots.pem"), *extra]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env or dict(os.environ),
                            cwd=cwd)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on (https://127\.0\.0\.1:\d+)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("blindbox serve did not start: " + "".join(lines))
