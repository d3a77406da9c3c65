"""The attested HTTPS connection: attestation is part of establishing the connection.

``connect()`` completes TCP (through a CONNECT tunnel when proxied) and a TLS
handshake without WebPKI trust, reads the leaf certificate's SPKI, and, unless
the session already pinned that key, fetches and verifies evidence on that
same connection. Only then does it return, so urllib3 writes the user's
request only to an attested key. Pool settings (``verify=``, CA bundles,
fingerprints) are overridden: the pin is the only trust decision.

The client's identity follows the same rule. Every handshake runs with a
context that holds no client certificate, so a ``CertificateRequest`` in the
handshake is answered with none. Only once the server's key is pinned does the
connection take on the context that carries ``cert=``; the certificate then
goes out when the server asks for it by TLS 1.3 post-handshake authentication,
to a key already attested in this session (docs/threat-model.md argues why).

Connecting is bounded: the TCP connect and the TLS handshake each get the
request's connect timeout, else the session's ``timeout``; running out raises
``requests.exceptions.ConnectTimeout`` naming the step that timed out.

An attestation failure leaves ``connect()`` as :class:`AttestationAbort`, a
``BaseException`` that urllib3's retry and wrapping logic does not catch, so it
is never retried and reaches the adapter with its exact type.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
from typing import Any, ClassVar, cast

from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, SSLError
from urllib3.util.ssltransport import SSLTransport

from blindbox.attest.binding import spki_of_certificate
from blindbox.attest.evidence import EVIDENCE_PATH
from blindbox.attest.verifier import Attestation
from blindbox.errors import AttestationError, ConfigurationError, NotAnEnclaveError, OriginRefusedError
from blindbox.requests.attestor import Attestor
from blindbox.requests.exchange import Deadline, ExchangeTimeout, fetch_evidence
from blindbox.requests.origin import HTTPS_PORT, Origin

log = logging.getLogger("blindbox.requests")

#: New connections tried within one connect() when the server closes after serving evidence.
MAX_CONNECT_ATTEMPTS = 3


class AttestationAbort(BaseException):
    """Carries an :class:`AttestationError` out of urllib3 unretried and unwrapped."""

    def __init__(self, error: AttestationError) -> None:
        super().__init__(error)
        self.error = error


class AttestedHTTPSConnection(HTTPSConnection):
    """An HTTPS connection that is usable only once its TLS key is attested for the session."""

    attestor: ClassVar[Attestor | None] = None
    _tcp_connected: bool = False

    def connect(self) -> None:
        attestor = self.attestor
        if attestor is None:
            raise ConfigurationError("AttestedHTTPSConnection used without a session (no attestor)")
        if self.proxy_is_forwarding:
            raise AttestationAbort(OriginRefusedError(
                "proxy: a forwarding proxy terminates TLS itself; only CONNECT tunnels keep the TLS "
                "session end to end with the enclave"
            ))
        self._disable_webpki(attestor)
        identity = self.ssl_context  # presented only once the server's key is pinned
        given = _seconds(self.timeout)
        for _ in range(MAX_CONNECT_ATTEMPTS):
            self._handshake(attestor, given if given is not None else attestor.timeout)
            try:
                if identity is not attestor.context:
                    self._require_post_handshake_auth()
                usable = self._check_or_attest(attestor, given)
                if usable and identity is not attestor.context:
                    self._present_client_certificate(cast(ssl.SSLContext, identity))
            except BaseException:
                self.close()
                raise
            if usable:
                # The pin is the verification; this also keeps urllib3 from warning.
                self.is_verified = True
                return
            log.debug("%s closed the connection after serving evidence; reconnecting", self._target())
            self._close_for_reconnect()
        error = NotAnEnclaveError(
            f"evidence: expected {self._target()} to keep the connection open after serving evidence, "
            f"found it closed after each of {MAX_CONNECT_ATTEMPTS} evidence responses; nothing was sent"
        )
        log.warning("attestation of %s failed: %s", self._target(), error)
        raise AttestationAbort(error)

    def _handshake(self, attestor: Attestor, timeout: float) -> None:
        """TCP (and tunnel) and a TLS handshake with no client certificate, each bounded by ``timeout``.

        A handshake (or proxy) timeout becomes ``ConnectTimeoutError`` (requests'
        ``ConnectTimeout``), not urllib3's default read timeout.
        """
        given, identity = self.timeout, self.ssl_context
        self.timeout, self.ssl_context = timeout, attestor.context
        self._tcp_connected = False
        try:
            super().connect()
        except BaseException as exc:
            # Never leave a half-open (possibly plaintext) socket behind, but keep what urllib3
            # reads to classify the error (proxy reached or not), as for a plain connection.
            target = self._target()  # close() forgets the tunnel
            step = ("the proxy CONNECT or the TLS handshake" if self.proxy_is_tunneling
                    else "the TLS handshake")
            reached_proxy = self._has_connected_to_proxy
            self.close()
            self._has_connected_to_proxy = reached_proxy
            log.warning("connection to %s failed before attestation: %s: %s", target, type(exc).__name__, exc)
            if isinstance(exc, TimeoutError) and self._tcp_connected:
                raise ConnectTimeoutError(
                    self, f"Connection to {target} timed out: {step} did not complete within "
                    f"{timeout:g} s (connect timeout={timeout:g})"
                ) from exc
            raise
        finally:
            self.timeout, self.ssl_context = given, identity
        # What urllib3 sends next (the request) gets the caller's own timeout, as with requests.
        cast(socket.socket, self.sock).settimeout(_seconds(given))

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._tcp_connected = True  # a timeout from here on is the tunnel's or the handshake's
        return sock

    def _require_post_handshake_auth(self) -> None:
        """``cert=`` needs TLS 1.3: post-handshake authentication is the only way it is ever sent."""
        version = cast("ssl.SSLSocket | SSLTransport", self.sock).version()
        if version != "TLSv1.3":
            raise SSLError(
                f"client certificate: {self._target()} negotiated {version}; BlindBox presents a "
                "client certificate only by TLS 1.3 post-handshake authentication, once the "
                "server's key is attested, so the enclave must offer TLS 1.3"
            )

    def _present_client_certificate(self, identity: ssl.SSLContext) -> None:
        """Give this connection, whose key is pinned, the context that carries ``cert=``.

        OpenSSL copies the context's certificate into the live connection, so a
        later post-handshake ``CertificateRequest`` is answered with it.
        """
        sock = cast("ssl.SSLSocket | SSLTransport", self.sock)
        if isinstance(sock, SSLTransport):
            sock.sslobj.context = identity
        else:
            sock.context = identity
        log.debug("%s: client certificate available to the attested key", self._target())

    def _close_for_reconnect(self) -> None:
        """Close the socket but keep the CONNECT tunnel settings, which ``close()`` forgets."""
        host, port, scheme = self._tunnel_host, self._tunnel_port, self._tunnel_scheme
        headers: dict[str, str] = dict(getattr(self, "_tunnel_headers", {}))
        self.close()
        if host is not None:
            self.set_tunnel(host, port, headers=headers, scheme=scheme or "http")

    def _disable_webpki(self, attestor: Attestor) -> None:
        """Whatever the pool was given, trust comes only from attestation."""
        if not attestor.owns(self.ssl_context):
            self.ssl_context = attestor.context
        self.cert_reqs = ssl.CERT_NONE
        self.ca_certs = self.ca_cert_dir = self.ca_cert_data = None
        self.cert_file = self.key_file = self.key_password = None  # client certs live in the context
        self.assert_fingerprint = None
        self.assert_hostname = False

    def _target(self) -> str:
        host = self._tunnel_host if self._tunnel_host is not None else self.host
        port = self._tunnel_port if self._tunnel_host is not None else self.port
        return Origin(host=host, port=port or HTTPS_PORT).host_header

    def _check_or_attest(self, attestor: Attestor, given: float | None) -> bool:
        """Pin check, or attestation on this connection. False: the server closed it afterwards."""
        target = self._target()
        sock = cast(ssl.SSLSocket, self.sock)
        cert_der = sock.getpeercert(binary_form=True)
        try:
            if not cert_der:
                raise NotAnEnclaveError("TLS: expected the server's certificate, found none")
            spki_der = spki_of_certificate(cert_der)
        except AttestationError as exc:
            log.warning("attestation of %s failed: %s", target, exc)
            raise AttestationAbort(exc) from exc
        key_id = _KeyId(spki_der)
        if attestor.pinned(spki_der) is not None:
            log.debug("%s: TLS key %s... is already attested for this session", target, key_id)
            return True
        timeout = given if given is not None else attestor.timeout
        keep_alive = True

        def attest() -> Attestation:
            nonlocal keep_alive
            attestation, keep_alive = self._attest(attestor, sock, target, spki_der, timeout)
            return attestation

        try:
            attestation, fresh = attestor.attest_once(spki_der, attest, timeout=timeout)
        except AttestationError as exc:
            log.warning("attestation of %s failed: %s: %s", target, type(exc).__name__, exc)
            raise AttestationAbort(exc) from exc
        except (ExchangeTimeout, TimeoutError) as exc:
            log.warning("attestation of %s timed out: %s", target, exc)
            raise ConnectTimeoutError(
                self, f"Connection to {target} timed out during attestation: expected verified evidence "
                f"within {timeout:g} s (timeout), found no complete answer in time"
            ) from exc
        if fresh:
            log.debug("%s: attested and pinned TLS key %s... (measurement %s)",
                      target, key_id, attestation.measurement)
        return keep_alive

    def _attest(self, attestor: Attestor, sock: ssl.SSLSocket, target: str, spki_der: bytes,
                timeout: float) -> tuple[Attestation, bool]:
        """Fetch evidence on ``sock`` and verify it: (attestation, whether the server keeps the socket)."""
        nonce = attestor.new_nonce()
        log.debug("%s: new TLS key %s..., fetching evidence (GET %s, %s)", target,
                  _KeyId(spki_der), EVIDENCE_PATH,
                  "fresh nonce" if nonce is not None else "no nonce")
        previous_timeout = sock.gettimeout()
        deadline = Deadline(timeout)  # one deadline for the exchange and the verification
        try:
            response = fetch_evidence(sock, host=target, nonce=nonce, timeout=deadline)
        except AttestationError:
            raise  # already typed and worded once at its source (it is an OSError too)
        except OSError as exc:
            raise NotAnEnclaveError(
                f"evidence: expected an answer from {target} to the evidence request, found the "
                f"connection failing ({type(exc).__name__}: {exc})"
            ) from exc
        sock.settimeout(previous_timeout)
        log.debug("%s: received %d bytes of evidence; verifying", target, response.size)
        attestation = attestor.verify(response.evidence, spki_der=spki_der, nonce=nonce, deadline=deadline)
        return attestation, response.keep_alive


class _KeyId:
    """A TLS key in log lines: 16 hex digits of its SPKI's SHA-256, computed only if a line is written."""

    __slots__ = ("_spki_der",)

    def __init__(self, spki_der: bytes) -> None:
        self._spki_der = spki_der

    def __str__(self) -> str:
        return hashlib.sha256(self._spki_der).hexdigest()[:16]


def _seconds(timeout: Any) -> float | None:
    """A caller's timeout in seconds, or None when it gave none (urllib3's sentinel, None, 0)."""
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return float(timeout)
    return None


def attested_pool_class(attestor: Attestor) -> type[HTTPSConnectionPool]:
    """A pool class whose connections attest for ``attestor``'s session (one class per session)."""
    connection_cls = type("AttestedHTTPSConnection", (AttestedHTTPSConnection,), {"attestor": attestor})
    pool_cls = type("AttestedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": connection_cls})
    return cast(type[HTTPSConnectionPool], pool_cls)
