"""One session's trust state: what it accepts, and which TLS keys it has attested.

The :class:`Attestor` owns the appraisal policy, the trust roots, the TLS
client contexts (no WebPKI trust: the attested key is the identity) and the
pinned set of SubjectPublicKeyInfo digests. Each distinct key is attested once
per session, even when many threads meet it at the same time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
import ssl
import threading
from collections.abc import Callable

from urllib3.util.ssl_ import create_urllib3_context

from blindbox._text import shown
from blindbox.attest.binding import NONCE_SIZE
from blindbox.attest.evidence import Evidence
from blindbox.attest.owner_policy import PolicyRequirements
from blindbox.attest.policy import AttestationPolicy
from blindbox.attest.verifier import Assessment, Attestation, assess_evidence, verify_evidence
from blindbox.errors import AttestationError, NotAnEnclaveError
from blindbox.requests.exchange import Deadline
from blindbox.snp.roots import TrustRoots
from blindbox.snp.verify import KdsSource

log = logging.getLogger("blindbox.requests")

ClientCert = str | tuple[str, str] | None


def _client_context() -> ssl.SSLContext:
    """A new client context: no WebPKI trust, no renegotiation, post-handshake authentication on."""
    context = create_urllib3_context(cert_reqs=ssl.CERT_NONE)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # The pinned key must stay the key: no TLS 1.2 renegotiation to another certificate.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    # A client certificate goes out only by TLS 1.3 post-handshake authentication,
    # after the server's key is pinned (see blindbox.requests.connection).
    context.post_handshake_auth = True
    return context


@functools.lru_cache(maxsize=1)
def _handshake_context() -> ssl.SSLContext:
    """The one handshake context of the process, shared by every session (built once).

    It holds no client certificate and no trust store, so sharing it shares
    no identity and no trust decision: what is trusted is each session's own
    pinned set. Nothing changes it after creation (urllib3 re-applies the same
    ``verify_mode``/``check_hostname`` values). Client certificates live in
    per-session contexts from :meth:`Attestor.context_for`. Python's client
    sockets resume no TLS session unless handed one, so sessions never resume
    each other's.
    """
    return _client_context()


class Attestor:
    """Appraisal policy, owner-policy requirements, roots and the pinned set of one :class:`SecureSession`."""

    def __init__(self, policy: AttestationPolicy, roots: TrustRoots | None, *, nonce: bool,
                 timeout: float, requirements: PolicyRequirements | None = None,
                 kds: KdsSource | None = None) -> None:
        self.policy = policy
        self.requirements = requirements
        self.roots = roots
        self.kds = kds
        self.use_nonce = nonce
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pins: dict[bytes, Attestation] = {}
        self._gates: dict[bytes, threading.Lock] = {}
        self.context = _handshake_context()
        self._contexts: dict[tuple[str, str | None] | None, ssl.SSLContext] = {None: self.context}

    # -- TLS contexts -------------------------------------------------------------------------
    def context_for(self, cert: ClientCert) -> ssl.SSLContext:
        """The handshake context for None, else the session's context with ``cert`` loaded, built once.

        Certificate verification is off on purpose: the server's key is trusted
        only once attestation evidence binds it.
        """
        key: tuple[str, str | None] | None
        if cert is None:
            key = None
        elif isinstance(cert, tuple):
            key = (os.fspath(cert[0]), os.fspath(cert[1]))
        else:
            key = (os.fspath(cert), None)
        with self._lock:
            context = self._contexts.get(key)
            if context is None and key is not None:
                for path in key:
                    if path is not None and not os.path.exists(path):
                        raise OSError(f"Could not find the TLS certificate or key file: {path}")
                context = _client_context()
                context.load_cert_chain(key[0], key[1])
                self._contexts[key] = context
            return context if context is not None else self.context

    def owns(self, context: ssl.SSLContext | None) -> bool:
        with self._lock:
            return any(context is c for c in self._contexts.values())

    # -- pins -----------------------------------------------------------------------------------
    @property
    def attestations(self) -> tuple[Attestation, ...]:
        """Every attested TLS identity, in the order they were first verified."""
        with self._lock:
            return tuple(self._pins.values())

    def pinned(self, spki_der: bytes) -> Attestation | None:
        digest = hashlib.sha256(spki_der).digest()
        with self._lock:
            return self._pins.get(digest)

    def attest_once(self, spki_der: bytes, attest: Callable[[], Attestation], *,
                    timeout: float) -> tuple[Attestation, bool]:
        """The pinned attestation for ``spki_der``, running ``attest`` only if it has none.

        Returns ``(attestation, fresh)``. Concurrent callers for the same key
        wait for one attestation instead of each fetching evidence; if it
        fails, the next caller tries on its own connection.
        """
        digest = hashlib.sha256(spki_der).digest()
        with self._lock:
            pinned = self._pins.get(digest)
            if pinned is not None:
                return pinned, False
            gate = self._gates.setdefault(digest, threading.Lock())
        if not gate.acquire(timeout=timeout):
            raise TimeoutError(f"waited {timeout:g} s for another thread's attestation of this key")
        try:
            with self._lock:
                pinned = self._pins.get(digest)
            if pinned is not None:
                return pinned, False
            attestation = attest()
            with self._lock:
                self._pins.setdefault(digest, attestation)
            return attestation, True
        finally:
            gate.release()

    # -- verification ---------------------------------------------------------------------------
    def new_nonce(self) -> bytes | None:
        """A fresh 32-byte nonce, or None when the session uses recorded evidence (``nonce=False``)."""
        return secrets.token_bytes(NONCE_SIZE) if self.use_nonce else None

    def verify(self, evidence: Evidence, *, spki_der: bytes, nonce: bytes | None,
               deadline: Deadline | None = None) -> Attestation:
        """Genuine, bound to ``spki_der`` and ``nonce``, and acceptable under the session's expectations.

        With the ``deadline`` of the connection's attestation (the one its evidence exchange ran
        under), verification starts only while time remains, and a result that arrives after the
        deadline is not used: the whole attestation, exchange and verification, is bounded by
        ``timeout``. An overrun raises :class:`~blindbox.requests.exchange.ExchangeTimeout`.
        """
        if deadline is not None:
            deadline.check("verification")
        try:
            attestation = verify_evidence(evidence, spki_der=spki_der, nonce=nonce, policy=self.policy,
                                          requirements=self.requirements, roots=self.roots, kds=self.kds)
        except AttestationError:
            raise
        except Exception as exc:  # fail closed: an unexpected error is a refusal, never a pass
            raise NotAnEnclaveError(
                f"evidence: expected verifiable SEV-SNP evidence, found evidence whose verification "
                f"failed with {type(exc).__name__}: {shown(str(exc))}"
            ) from exc
        if deadline is not None:
            deadline.check("verification")
        return attestation

    def assess(self, evidence: Evidence | NotAnEnclaveError, *, spki_der: bytes | None,
               nonce: bytes | None) -> Assessment:
        """Every check :meth:`verify` runs, evaluated without stopping (for ``blindbox attest``)."""
        return assess_evidence(evidence, spki_der=spki_der, nonce=nonce, policy=self.policy,
                               requirements=self.requirements, roots=self.roots, kds=self.kds)
