"""Protocol v1 report_data binding: what ties a report to one TLS key, policy and nonce.

``report_data = SHA-512(b"blindbox-attestation-v1\\x00" || SHA-256(SPKI DER)
|| (SHA-256(policy) or 32 zero bytes) || (nonce or 32 zero bytes))``.

Client and server both call :func:`expected_report_data`, so the two sides
cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac

from blindbox.errors import BindingMismatchError, NotAnEnclaveError
from blindbox.snp import der

DOMAIN = b"blindbox-attestation-v1\x00"
NONCE_SIZE = 32
_ZERO = bytes(32)


def expected_report_data(spki_der: bytes, policy: bytes | None, nonce: bytes | None) -> bytes:
    """The 64 report_data bytes that bind ``spki_der``, ``policy`` and ``nonce``."""
    if nonce is not None and len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce: expected {NONCE_SIZE} bytes, got {len(nonce)}")
    return hashlib.sha512(
        DOMAIN
        + hashlib.sha256(spki_der).digest()
        + (hashlib.sha256(policy).digest() if policy is not None else _ZERO)
        + (nonce if nonce is not None else _ZERO)
    ).digest()


#: Why evidence recorded without a nonce fails for a client that sent one, and what a test types instead.
#: Never advice to a production client: from a live server such evidence may be a replay.
RECORDED = ("a binding of this TLS key with no nonce: the evidence was recorded, not made for this "
            "connection (a replay, or a test fixture); only for a SIMULATED fixture under its own test "
            "roots, accept it with nonce=False (blindbox attest --no-nonce)")


def recorded_without_nonce(report_data: bytes, spki_der: bytes, policy: bytes | None,
                           nonce: bytes | None) -> bool:
    """True when a nonce was sent but ``report_data`` binds this key and policy with none (a recording)."""
    if nonce is None:
        return False
    return hmac.compare_digest(expected_report_data(spki_der, policy, None), report_data)


def check_binding(report_data: bytes, spki_der: bytes, policy: bytes | None, nonce: bytes | None) -> None:
    """Raise :class:`BindingMismatchError` unless ``report_data`` binds exactly these values."""
    expected = expected_report_data(spki_der, policy, nonce)
    if not hmac.compare_digest(expected, report_data):
        if recorded_without_nonce(report_data, spki_der, policy, nonce):
            raise BindingMismatchError(f"report_data: expected a binding of the nonce sent, found {RECORDED}")
        raise BindingMismatchError(
            "report_data: expected SHA-512 binding of this connection's TLS key "
            f"(SPKI SHA-256 {hashlib.sha256(spki_der).hexdigest()[:16]}...), "
            f"{'the served policy' if policy is not None else 'no policy'} and "
            f"{'the nonce sent' if nonce is not None else 'no nonce'}: "
            f"{expected.hex()[:32]}..., found {report_data.hex()[:32]}..."
        )


def spki_of_certificate(cert_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an X.509 certificate, read without trusting it.

    Uses BlindBox's strict DER reader, so any certificate a server presents
    (serial 0, odd extensions) is read the same way and malformed ones fail.
    """
    try:
        outer = der.read_single(cert_der, der.SEQUENCE).children()
        if len(outer) != 3:
            raise der.DerError("Certificate must have 3 elements")
        fields = outer[0].expect(der.SEQUENCE).children()
        offset = 1 if fields and fields[0].tag == 0xA0 else 0
        if len(fields) < offset + 6:
            raise der.DerError("TBSCertificate is missing fields")
        return fields[offset + 5].expect(der.SEQUENCE).encoded
    except der.DerError as exc:
        raise NotAnEnclaveError(f"TLS certificate: malformed DER ({exc})") from None
