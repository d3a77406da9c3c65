"""The certificate chain walk: ARK (self-signed) → ASK/ASVK → VCEK/VLEK.

Chains are built by signature only: an intermediate is usable when the anchor's
key signed it, whoever supplied it; names are checked as well, never trusted
instead. Validity windows are checked at the caller's time. Signature results
are memoised by the exact DER of both certificates, so repeated verifications
of the same chain cost nothing and can never be confused with another chain.
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from blindbox.errors import NotAnEnclaveError
from blindbox.snp.certificate import AmdCertificate
from blindbox.snp.product import Product
from blindbox.snp.report import SigningKey
from blindbox.snp.roots import Anchor, TrustRoots


@dataclass(frozen=True)
class CertificateChain:
    """A verified chain, leaf first."""

    leaf: AmdCertificate
    intermediate: AmdCertificate
    anchor: Anchor
    roots_are_amd: bool

    def __repr__(self) -> str:
        """One line: the names from leaf to anchor, never certificate bytes."""
        names = " <- ".join(repr(c.common_name) for c in (self.leaf, self.intermediate,
                                                              self.anchor.certificate))
        return f"CertificateChain({names}, roots_are_amd={self.roots_are_amd})"


@functools.lru_cache(maxsize=256)
def _signature_ok(subject_der: bytes, issuer_der: bytes) -> bool:
    subject = AmdCertificate.from_der(subject_der)
    issuer = AmdCertificate.from_der(issuer_der)
    try:
        subject.verify_signed_by(issuer)
    except NotAnEnclaveError:
        return False
    return True


def _is_ca(cert: AmdCertificate) -> bool:
    return _is_ca_by_der(cert.der)


@functools.lru_cache(maxsize=256)
def _is_ca_by_der(der: bytes) -> bool:
    """``AmdCertificate.is_ca``, decoded once per exact DER."""
    return AmdCertificate.from_der(der).is_ca()


def _check_validity(cert: AmdCertificate, role: str, at: _dt.datetime) -> None:
    if not cert.valid_at(at):
        raise NotAnEnclaveError(
            f"{role} {cert.common_name!r}: expected valid at {at.isoformat()}, "
            f"found validity {cert.not_before.isoformat()} to {cert.not_after.isoformat()}"
        )


def _check_leaf(leaf: AmdCertificate, signing_key: SigningKey) -> None:
    expected_cn = f"SEV-{signing_key.name}"
    if leaf.common_name != expected_cn:
        raise NotAnEnclaveError(
            f"{signing_key.name}: expected subject CN {expected_cn!r} (the report says it was "
            f"signed by a {signing_key.name}), found {leaf.common_name!r}"
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise NotAnEnclaveError(f"{signing_key.name}: expected an ECDSA P-384 public key")
    if _is_ca(leaf):
        raise NotAnEnclaveError(f"{signing_key.name}: a signing key must not be a CA certificate")


def verify_chain(
    leaf: AmdCertificate,
    *,
    signing_key: SigningKey,
    product: Product,
    roots: TrustRoots,
    intermediates: Sequence[AmdCertificate] = (),
    at: _dt.datetime,
) -> CertificateChain:
    """Find and verify a path leaf → intermediate → anchor for ``product``.

    ``intermediates`` (e.g. from the evidence or KDS) are only candidates: they
    count when a trusted anchor signed them. Raises :class:`NotAnEnclaveError`
    saying what was tried when no path verifies.
    """
    _check_leaf(leaf, signing_key)
    _check_validity(leaf, signing_key.name, at)
    anchors = roots.anchors_for(product)
    if not anchors:
        raise NotAnEnclaveError(
            f"roots: no anchor for {product.value} in {roots.describe()}"
        )
    want_vlek_ca = signing_key is SigningKey.VLEK
    candidates: list[AmdCertificate] = []
    for cert in (*roots.intermediates, *intermediates):
        if cert.der not in (c.der for c in candidates):
            candidates.append(cert)
    tried: list[str] = []
    for ca in candidates:
        if ca.subject_der != leaf.issuer_der:
            continue
        if ca.common_name.startswith("SEV-VLEK-") != want_vlek_ca:
            tried.append(f"{ca.common_name!r} (signs {'VLEKs' if not want_vlek_ca else 'VCEKs'})")
            continue
        if not _signature_ok(leaf.der, ca.der):
            tried.append(f"{ca.common_name!r} (signature does not verify)")
            continue
        if not _is_ca(ca):
            tried.append(f"{ca.common_name!r} (not a CA certificate)")
            continue
        for anchor in anchors:
            ark = anchor.certificate
            if ca.issuer_der != ark.subject_der or not _signature_ok(ca.der, ark.der):
                tried.append(f"{ca.common_name!r} not signed by anchor {ark.common_name!r}")
                continue
            if not _is_ca(ark) or not _signature_ok(ark.der, ark.der):
                tried.append(f"anchor {ark.common_name!r} is not a self-signed CA")
                continue
            _check_validity(ca, "intermediate", at)
            _check_validity(ark, "root", at)
            return CertificateChain(leaf, ca, anchor, roots.is_amd)
    detail = "; ".join(tried) if tried else f"no intermediate named {leaf.issuer_common_name!r}"
    raise NotAnEnclaveError(
        f"{signing_key.name} ({product.value}): expected a chain to {roots.describe()}, "
        f"found none: {detail}"
    )
