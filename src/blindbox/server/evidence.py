"""Protocol v1 evidence for the agent's one TLS key: a fresh report per nonce, one cached without.

Security property: every document binds this agent's TLS SPKI, the served
owner-policy bytes and the client's nonce exactly as
:func:`blindbox.attest.binding.expected_report_data` says (the one binding both
sides call) and is encoded by :meth:`blindbox.attest.evidence.Evidence.to_json`.
Report requests reach the backend one at a time (the secure processor
serialises them anyway) and at most ``max_waiting`` wait: past that
:class:`EvidenceBusy` is raised at once, so a flood of nonces cannot tie up
the agent's threads or starve application traffic.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from blindbox.attest.binding import expected_report_data
from blindbox.attest.evidence import Evidence, decode_nonce
from blindbox.server.backends.base import RawEvidence, ReportBackend
from blindbox.server.framing import Refusal
from blindbox.snp.certificate import pem_encode


class EvidenceBusy(Exception):
    """Too many report requests are waiting; the client should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many evidence requests in flight; retry after {retry_after} s")
        self.retry_after = retry_after


def certificates_pem(raw: RawEvidence) -> dict[str, str]:
    """The known certificates of a backend's certificate table, as PEM strings by name."""
    return {name: pem_encode(der) for name, der in raw.certificates.items()}


def parse_nonce_query(query: str) -> bytes | None:
    """The nonce of an evidence request's query string (None without one); :class:`Refusal` 400 else."""
    params = urllib.parse.parse_qs(query, keep_blank_values=True)  # other parameters are ignored
    values = params.get("nonce")
    if values is None:
        return None
    if len(values) != 1:
        raise Refusal(400, "nonce: expected exactly one value")
    try:
        return decode_nonce(values[0])
    except ValueError as exc:
        raise Refusal(400, str(exc)) from None


class EvidenceSource(Protocol):
    """What the agent's evidence endpoint calls: the protocol v1 document for one nonce (or None).

    :class:`EvidenceService` (a report backend) is the production source; the test kit
    adds a recorded fixture and fault-injecting sources. It may raise
    :class:`EvidenceBusy` (503 with ``Retry-After``) or :class:`Refusal` (its status);
    any other exception is a backend failure (503, logged for the operator).
    ``close_after_evidence``: answer evidence with ``Connection: close`` (evidence
    on a connection of its own; clients reconnect and check the key again).
    """

    @property
    def close_after_evidence(self) -> bool: ...

    def document(self, nonce: bytes | None) -> bytes: ...


class EvidenceService:
    """Makes evidence documents for one TLS key and one policy (or none).

    ``certificates``: PEM certificates to serve when the backend's table has
    none (e.g. fetched from AMD KDS once at start); a backend's own table
    always wins. ``max_waiting``: report requests allowed to queue behind the
    one in progress; ``wait_seconds``: how long one may wait for its turn.
    """

    close_after_evidence = False

    def __init__(self, backend: ReportBackend, *, spki_der: bytes, policy: bytes | None,
                 certificates: Mapping[str, str] | None = None, max_waiting: int = 8,
                 wait_seconds: float = 10.0) -> None:
        self.backend = backend
        self._spki, self.policy = spki_der, policy
        self._fallback = MappingProxyType(dict(certificates or {}))
        self._max_waiting, self._wait = max_waiting, wait_seconds
        self._hardware = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0
        self._cached: bytes | None = None

    def document(self, nonce: bytes | None) -> bytes:
        """The JSON evidence document for ``nonce`` (cached when None). May raise :class:`EvidenceBusy`."""
        if nonce is None and self._cached is not None:
            return self._cached
        with self._count_lock:
            if self._waiting > self._max_waiting:
                raise EvidenceBusy(1)
            self._waiting += 1
        try:
            if not self._hardware.acquire(timeout=self._wait):
                raise EvidenceBusy(1)
            try:
                if nonce is None and self._cached is not None:
                    return self._cached
                body = self._make(nonce)
                if nonce is None:
                    self._cached = body
                return body
            finally:
                self._hardware.release()
        finally:
            with self._count_lock:
                self._waiting -= 1

    def _make(self, nonce: bytes | None) -> bytes:
        raw = self.backend.get_report(expected_report_data(self._spki, self.policy, nonce))
        certificates = certificates_pem(raw) or dict(self._fallback)
        return Evidence(report=raw.report, certificates=certificates, policy=self.policy).to_json()
