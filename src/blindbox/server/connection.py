"""One client connection of the agent: evidence, authentication, and the streaming reverse proxy.

h11 parses and writes every HTTP message on both sides (a fresh parser per
request, so each head is checked by :mod:`blindbox.server.framing` on its raw
bytes first); bodies are relayed chunk by chunk (at most :attr:`Limits.chunk`
bytes held per direction) and re-framed by h11, never copied byte for byte.

Security property: per request, on keep-alive and pipelined connections
alike, nothing reaches the upstream before the request was admitted
(:class:`blindbox.server.auth.Authenticator`); a refused request gets its
answer and, when its body was not read, the connection is closed. Errors the
client sees name no upstream address, exception or key material.
"""

from __future__ import annotations

import http
import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11

from blindbox.attest.evidence import EVIDENCE_PATH
from blindbox.server.auth import Authenticator, Principal
from blindbox.server.client_certificate import request_client_certificate_buffered
from blindbox.server.evidence import EvidenceBusy, EvidenceSource, parse_nonce_query
from blindbox.server.framing import MAX_HEAD_BYTES, Refusal, check_head, head_end
from blindbox.server.headers import client_response_headers, upstream_request_headers
from blindbox.server.upstream import UpstreamPool

log = logging.getLogger("blindbox.server")
_EVIDENCE = EVIDENCE_PATH.encode("ascii")
#: Pipelined bytes buffered while a response is relayed; past this the client is not read.
_MAX_PIPELINED = 256 * 1024
#: Slice of a blocking wait, so that shutdown is noticed.
_TICK = 0.25


@dataclass(frozen=True)
class Limits:
    """Deadlines (seconds) and sizes that keep slow or hostile peers from holding the agent."""

    handshake_timeout: float = 10.0  # TLS handshake
    head_timeout: float = 10.0  # a whole request head, from its first byte
    idle_timeout: float = 30.0  # waiting for the next request on a kept-alive connection
    io_timeout: float = 60.0  # any one read or write of a body
    upstream_connect_timeout: float = 5.0
    upstream_timeout: float = 60.0  # the upstream's response head, and each read of its body
    certificate_timeout: float = 10.0  # a client's answer to a certificate request
    certificate_buffer: int = 1024 * 1024  # request bytes held while the client's answer is awaited
    discard_limit: int = 8 * 1024 * 1024  # body bytes read and dropped to answer a refused request
    chunk: int = 64 * 1024


@dataclass(frozen=True)
class Site:
    """What every connection shares: evidence, authentication, the upstream and the limits."""

    evidence: EvidenceSource
    auth: Authenticator
    upstream: tuple[str, int]
    limits: Limits = Limits()
    pool: UpstreamPool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", UpstreamPool(
            self.upstream, connect_timeout=self.limits.upstream_connect_timeout))


class _Closed(Exception):
    """The client went away or broke the protocol: close without answering."""


class _UpstreamFailed(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _has_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class ClientConnection:
    """Serves one accepted TLS connection until it closes, fails or the agent stops."""

    def __init__(self, sock: ssl.SSLSocket, client_ip: str, site: Site, stopping: threading.Event) -> None:
        self.sock, self.client_ip, self.site, self.stopping = sock, client_ip, site, stopping
        self.limits = site.limits
        self.certificate_asked = False
        self.certificate: bytes | None = None
        self.head_request = False
        self.reusable = True  # False once a certificate request failed (its bytes may be lost)

    # -- client I/O

    def _send(self, data: bytes) -> None:
        if data:
            try:
                self.sock.settimeout(self.limits.io_timeout)
                self.sock.sendall(data)
            except (OSError, ValueError):
                raise _Closed from None

    def _recv(self, timeout: float) -> bytes:
        if timeout <= 0:
            raise _Closed
        try:
            self.sock.settimeout(timeout)
            return self.sock.recv(self.limits.chunk)
        except (OSError, ValueError):
            raise _Closed from None

    def _wait_readable(self, timeout: float) -> bool:
        """Wait for client bytes up to ``timeout``, in slices so that a shutdown is seen."""
        deadline = time.monotonic() + timeout
        while not self.sock.pending():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopping.is_set():
                return False
            readable, _, _ = select.select([self.sock], [], [], min(remaining, _TICK))
            if readable:
                return True
        return True

    # -- the request loop

    def run(self) -> None:
        try:
            self.sock.settimeout(self.limits.handshake_timeout)
            self.sock.do_handshake()
        except (OSError, ValueError):
            self._close()
            return
        pending = bytearray()
        try:
            while not self.stopping.is_set():
                head = self._read_head(pending)
                if head is None:
                    break
                keep = self._serve(pending, head)
                if not keep:
                    break
        except _Closed:
            pass
        except Exception:  # a bug: logged for the operator (no request data), the connection dropped
            log.exception("connection from %s failed", self.client_ip)
        finally:
            self._close()

    def _close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _read_head(self, pending: bytearray) -> int | None:
        """Read until ``pending`` holds a whole request head; its length, or None to close quietly."""
        started: float | None = time.monotonic() if pending else None
        scanned = 0
        while True:
            try:
                end = head_end(pending, scanned)
            except Refusal as refusal:
                self._refuse(h11.Connection(h11.SERVER), refusal, close=True)
                return None
            if end is not None:
                return end
            scanned = len(pending)
            if started is None:
                if not self._wait_readable(self.limits.idle_timeout):
                    return None
                started = time.monotonic()
            data = self._recv(started + self.limits.head_timeout - time.monotonic())
            if not data:
                return None
            pending += data

    def _serve(self, pending: bytearray, head: int) -> bool:
        """Serve the request at the start of ``pending``; True to read another on this connection."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            check_head(bytes(pending[:head]))
            conn.receive_data(bytes(pending))
            pending.clear()
            event = conn.next_event()
            if not isinstance(event, h11.Request):
                raise Refusal(400, "malformed request")
        except Refusal as refusal:
            self._refuse(conn, refusal, close=True)
            return False
        except h11.RemoteProtocolError:
            self._refuse(conn, Refusal(400, "malformed request"), close=True)
            return False
        try:
            keep = self._route(conn, event)
        except Refusal as refusal:
            self._refuse(conn, refusal, close=True)
            return False
        except h11.RemoteProtocolError:
            self._refuse(conn, Refusal(400, "malformed request body"), close=True)
            return False
        if keep and conn.their_state is h11.SEND_BODY:  # answered without reading a (bodiless) request
            try:
                keep = isinstance(conn.next_event(), h11.EndOfMessage)
            except h11.RemoteProtocolError:
                keep = False
        if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        leftover, closed = conn.trailing_data
        pending += leftover
        return not closed

    def _route(self, conn: h11.Connection, request: h11.Request) -> bool:
        target = request.target
        self.head_request = request.method == b"HEAD"
        if not target.startswith(b"/"):
            raise Refusal(400, "only origin-form request targets (/path) are accepted")
        path, _, query = target.partition(b"?")
        if path == _EVIDENCE:
            return self._evidence(conn, request, query, close=not self._drain(conn))
        principal = self._admit(conn, request)
        if principal is False:
            keep = self.reusable and self._drain(conn)  # its body is read and dropped, never forwarded
            self._respond(conn, 401, {"error": "authentication required"},
                          [(b"www-authenticate", b"Bearer")], close=not keep)
            return keep
        return self._proxy(conn, request, principal if isinstance(principal, Principal) else None)

    def _admit(self, conn: h11.Connection, request: h11.Request) -> Principal | bool:
        """The admitted principal, True when no authentication is required, False when refused."""
        auth = self.site.auth
        if not auth.required:
            auth.bearer(request.headers)  # still refuses two Authorization headers
            return True
        principal = auth.bearer(request.headers)
        if principal is None and auth.wants_certificate:
            if not self.certificate_asked:
                self.certificate_asked = True
                self.certificate, early = request_client_certificate_buffered(
                    self.sock, self.limits.certificate_timeout, self.limits.certificate_buffer)
                if early:  # the body (or next requests) sent before the client answered; b"" is EOF to h11
                    conn.receive_data(early)
                if self.certificate is None:
                    self.reusable = False
            principal = auth.certificate(self.certificate)
        return principal if principal is not None else False

    def _drain(self, conn: h11.Connection) -> bool:
        """Read and drop the rest of a request's body before answering it without the upstream.

        True when the body ended (the connection can go on); False when it is over
        :attr:`Limits.discard_limit`, or the client waits for ``100 Continue``
        (it will send none then): answer with ``Connection: close``. A client still
        sending when the connection closes would see a reset, not the answer.
        """
        dropped = 0
        while conn.their_state is h11.SEND_BODY:
            if conn.they_are_waiting_for_100_continue or dropped > self.limits.discard_limit:
                return False
            event = self._client_event(conn)
            if isinstance(event, h11.Data):
                dropped += len(event.data)
            elif not isinstance(event, h11.EndOfMessage):
                raise _Closed
        return True

    # -- answers made by the agent

    def _respond(self, conn: h11.Connection, status: int, doc: object,
                 headers: Sequence[tuple[bytes, bytes]] = (), *, close: bool = False,
                 body: bytes | None = None) -> None:
        payload = body if body is not None else json.dumps(doc).encode("utf-8")
        fields = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                  (b"cache-control", b"no-store"), *headers]
        if close:
            fields.append((b"connection", b"close"))
        try:
            out = conn.send(h11.Response(status_code=status, headers=fields,
                                         reason=http.HTTPStatus(status).phrase.encode("ascii")))
            if conn.our_state is h11.SEND_BODY and not self.head_request:
                out = (out or b"") + (conn.send(h11.Data(data=payload)) or b"")
            out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            raise _Closed from None
        self._send(out)

    def _refuse(self, conn: h11.Connection, refusal: Refusal, *, close: bool) -> None:
        try:
            self._respond(conn, refusal.status, {"error": refusal.reason}, close=close)
        except _Closed:
            pass

    def _evidence(self, conn: h11.Connection, request: h11.Request, query: bytes, *, close: bool) -> bool:
        if request.method != b"GET":
            self._respond(conn, 405, {"error": "the evidence endpoint answers GET only"},
                          [(b"allow", b"GET")], close=close)
            return not close
        nonce = parse_nonce_query(query.decode("ascii", "replace"))
        close = close or self.site.evidence.close_after_evidence
        try:
            document = self.site.evidence.document(nonce)
        except EvidenceBusy as busy:
            self._respond(conn, 503, {"error": "too many evidence requests in flight; retry later"},
                          [(b"retry-after", str(busy.retry_after).encode())], close=close)
            return not close
        except Refusal as refusal:  # the source's own answer (e.g. a fixture that has no evidence)
            self._respond(conn, refusal.status, {"error": refusal.reason}, close=close)
            return not close
        except Exception:  # a backend failure: the operator's log says why, the client only that it failed
            log.exception("evidence: the report backend failed")
            self._respond(conn, 503, {"error": "evidence is unavailable"}, [(b"retry-after", b"5")],
                          close=True)
            return False
        self._respond(conn, 200, None, body=document, close=close)
        return not close

    # -- the reverse proxy

    def _client_event(self, conn: h11.Connection) -> object:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self._recv(self.limits.io_timeout))
                continue
            return event

    def _proxy(self, conn: h11.Connection, request: h11.Request, principal: Principal | None) -> bool:
        chunked = any(name == b"transfer-encoding" for name, _ in request.headers)
        headers = upstream_request_headers(
            request.headers, client_ip=self.client_ip, chunked=chunked,
            principal=principal.digest if principal else None,
            drop_authorization=principal is not None and principal.kind == "bearer",
            default_host=f"{self.site.upstream[0]}:{self.site.upstream[1]}".encode("idna"))
        upstream_request = h11.Request(method=request.method, target=request.target, headers=headers,
                                       http_version=b"1.1")
        body = _has_body(request)
        for attempt in (1, 2):
            try:
                up, reused = self.site.pool.acquire()
            except TimeoutError:
                return self._upstream_error(conn, 504, body)
            except OSError:
                return self._upstream_error(conn, 502, body)
            upc = h11.Connection(h11.CLIENT)
            try:
                response = self._forward_request(conn, up, upc, upstream_request)
            except _UpstreamFailed as failure:
                up.close()
                # A kept-alive connection the upstream had just closed: retry once on a new one,
                # only when nothing of the client's can have been consumed (no body).
                if reused and attempt == 1 and not body and failure.status == 502:
                    continue
                return self._upstream_error(conn, failure.status, body)
            except BaseException:
                up.close()
                raise
            return self._relay_response(conn, up, upc, response)
        raise AssertionError("unreachable")

    def _upstream_error(self, conn: h11.Connection, status: int, body: bool) -> bool:
        close = body and not self._drain(conn)  # its body unread: the connection cannot go on
        self._respond(conn, status, {"error": "the upstream did not answer" if status == 504
                                     else "the upstream is unavailable"}, close=close)
        return not close

    def _forward_request(self, conn: h11.Connection, up: socket.socket, upc: h11.Connection,
                         request: h11.Request) -> h11.Response:
        """Send the request head and stream its body upstream; return the upstream's response head."""
        self._send_upstream(up, upc, request)
        if conn.they_are_waiting_for_100_continue:
            self._send(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        while conn.their_state is h11.SEND_BODY:  # read already on a retry of a bodiless request
            event = self._client_event(conn)
            if isinstance(event, h11.Data):
                self._send_upstream(up, upc, h11.Data(data=event.data))
            elif not isinstance(event, h11.EndOfMessage):
                raise _Closed
        self._send_upstream(up, upc, h11.EndOfMessage())
        response = self._upstream_event(up, upc, conn, head=True)
        assert isinstance(response, h11.Response)
        return response

    def _relay_response(self, conn: h11.Connection, up: socket.socket, upc: h11.Connection,
                        response: h11.Response) -> bool:
        """Stream the response to the client; the upstream connection is pooled again if clean."""
        clean = False
        try:
            try:
                out = bytearray(conn.send(h11.Response(
                    status_code=response.status_code, headers=client_response_headers(response.headers),
                    reason=response.reason)) or b"")
            except h11.LocalProtocolError:  # a head h11 will not write (e.g. a status below 200)
                return self._upstream_error(conn, 502, False)
            while True:
                try:
                    event = self._upstream_event(up, upc, conn, head=False, flush=out)
                    if isinstance(event, h11.Data):
                        out += conn.send(h11.Data(data=event.data)) or b""
                        if len(out) >= self.limits.chunk:
                            self._flush(out)
                        continue
                    if not isinstance(event, h11.EndOfMessage):
                        raise _Closed
                    out += conn.send(h11.EndOfMessage()) or b""
                except (_UpstreamFailed, h11.LocalProtocolError):
                    raise _Closed from None  # the response has begun: the client sees it cut short
                clean = (upc.our_state is h11.DONE and upc.their_state is h11.DONE
                         and not upc.trailing_data[0])
                if clean:
                    self.site.pool.release(up)
                self._flush(out)
                return True
        finally:
            if not clean:
                up.close()

    def _flush(self, out: bytearray) -> None:
        if out:
            self._send(bytes(out))
            out.clear()

    def _send_upstream(self, up: socket.socket, upc: h11.Connection, event: h11.Event) -> None:
        try:
            up.settimeout(self.limits.io_timeout)
            up.sendall(upc.send(event) or b"")
        except TimeoutError:
            raise _UpstreamFailed(504) from None
        except (OSError, h11.LocalProtocolError):
            raise _UpstreamFailed(502) from None

    def _upstream_event(self, up: socket.socket, upc: h11.Connection, conn: h11.Connection, *,
                        head: bool, flush: bytearray | None = None) -> object:
        """The upstream's next response event, watching the client for a disconnect meanwhile.

        ``flush``: bytes for the client, sent before waiting for the upstream (so a slow
        response reaches the client as produced, and a fast one leaves in few records).
        """
        while True:
            try:
                event = upc.next_event()
            except h11.RemoteProtocolError:
                raise _UpstreamFailed(502) from None
            if event is h11.NEED_DATA:
                if flush:
                    self._flush(flush)
                upc.receive_data(self._upstream_recv(up, conn))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue  # 1xx are answered here (100-continue) or refused (no Upgrade is forwarded)
            if head and not isinstance(event, h11.Response):
                raise _UpstreamFailed(502)
            if isinstance(event, (h11.ConnectionClosed, h11.Request)) or event is h11.PAUSED:
                raise _UpstreamFailed(502)
            return event

    def _upstream_recv(self, up: socket.socket, conn: h11.Connection) -> bytes:
        deadline = time.monotonic() + self.limits.upstream_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _UpstreamFailed(504)
            watch: list[socket.socket] = [up]
            if conn.their_state is h11.DONE and len(conn.trailing_data[0]) < _MAX_PIPELINED \
                    and not conn.trailing_data[1]:
                watch.append(self.sock)
            readable, _, _ = select.select(watch, [], [], min(remaining, _TICK))
            if up in readable:
                try:
                    return up.recv(self.limits.chunk)
                except OSError:
                    raise _UpstreamFailed(502) from None
            if self.sock in readable or (len(watch) > 1 and self.sock.pending()):
                self._pull_pipelined(conn)

    def _pull_pipelined(self, conn: h11.Connection) -> None:
        """Read what the client sent while its response is pending; a close ends everything."""
        try:
            self.sock.settimeout(0.0)
            data = self.sock.recv(self.limits.chunk)
        except ssl.SSLWantReadError:
            return
        except (OSError, ValueError):
            raise _Closed from None
        if not data:
            raise _Closed  # the client went away: drop the upstream request
        conn.receive_data(data)
