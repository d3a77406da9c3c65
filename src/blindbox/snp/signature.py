"""The report signature: ECDSA P-384 with SHA-384 over the original bytes [0, 0x2A0)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from blindbox.errors import NotAnEnclaveError
from blindbox.snp.certificate import AmdCertificate
from blindbox.snp.report import AttestationReport


def verify_report_signature(report: AttestationReport, signer: AmdCertificate) -> None:
    """Check that ``signer``'s key signed exactly the bytes that were received.

    The signature is verified over ``report.raw[:0x2A0]`` as received, never over
    a re-serialised structure, so no byte of the signed area can go unchecked.
    """
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise NotAnEnclaveError("report signature: the signing certificate has no P-384 key")
    der_signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(der_signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise NotAnEnclaveError(
            f"report signature: expected an ECDSA P-384 signature by the {report.signing_key.name} "
            f"{signer.common_name!r} (serial {signer.serial_number}, "
            f"sha256 {signer.fingerprint_sha256[:16]}...) over the signed bytes, found one that does "
            "not verify"
        ) from None
