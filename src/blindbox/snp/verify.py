"""One entry point that decides whether genuine AMD hardware produced a report."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from blindbox.errors import NotAnEnclaveError
from blindbox.snp.certificate import AmdCertificate
from blindbox.snp.chain import CertificateChain, verify_chain
from blindbox.snp.extensions import KdsExtensions, check_against_report, parse_extensions
from blindbox.snp.product import Product
from blindbox.snp.report import AttestationReport, SigningKey
from blindbox.snp.roots import TrustRoots, amd_roots, load_roots
from blindbox.snp.signature import verify_report_signature
from blindbox.snp.tcb import TcbVersion

log = logging.getLogger("blindbox.snp")

CertificateInput = bytes | str | AmdCertificate
#: Names accepted in a certificates mapping (those of protocol v1 and the cert table).
CERTIFICATE_NAMES = ("vcek", "vlek", "ask", "asvk", "ark")


class KdsSource(Protocol):
    """What :func:`verify_report` needs from a KDS client (see :mod:`blindbox.snp.kds`)."""

    def vcek(self, product: Product, chip_id: bytes, tcb: TcbVersion, *,
             check: Callable[[AmdCertificate], object] | None = None) -> AmdCertificate:
        """The VCEK; ``check`` (the chain walk) must pass for a cached one, else it is fetched again."""

    def check_revocation(self, chain: CertificateChain, at: _dt.datetime) -> None: ...


@dataclass(frozen=True)
class VerifiedReport:
    """A report proven to come from genuine SEV-SNP hardware (or the caller's explicit roots).

    Genuineness only: which code, firmware and guest policy are acceptable is
    decided by an appraisal policy on top of this.
    """

    report: AttestationReport
    product: Product
    signing_key: SigningKey
    certificate: AmdCertificate
    extensions: KdsExtensions
    chain: CertificateChain
    verified_at: _dt.datetime
    revocation_checked: bool

    def __repr__(self) -> str:
        """One line: product, key, chain and measurement, never certificate or report bytes."""
        return (f"VerifiedReport({self.product.value}, {self.signing_key.name}, "
                f"measurement={self.report.measurement.hex()}, {self.chain!r}, "
                f"revocation_checked={self.revocation_checked})")

    @property
    def roots_are_amd(self) -> bool:
        """True when the chain ends in AMD's pinned roots, False for caller-supplied roots."""
        return self.chain.roots_are_amd

    @property
    def measurement(self) -> bytes:
        return self.report.measurement


def _collect(certificates: Mapping[str, CertificateInput] | CertificateInput | None,
             signing_key: SigningKey) -> tuple[AmdCertificate | None, list[AmdCertificate]]:
    """Return the signing certificate (if given) and candidate intermediates."""
    if certificates is None:
        return None, []
    if not isinstance(certificates, Mapping):
        return _load(certificates), []
    unknown = set(certificates) - set(CERTIFICATE_NAMES)
    if unknown:
        raise NotAnEnclaveError(
            f"certificates: expected names among {', '.join(CERTIFICATE_NAMES)}, "
            f"found {', '.join(sorted(unknown))}"
        )
    wanted, other = ("vlek", "vcek") if signing_key is SigningKey.VLEK else ("vcek", "vlek")
    if certificates.get(other) is not None and certificates.get(wanted) is None:
        raise NotAnEnclaveError(
            f"certificates: the report is signed by a {wanted.upper()}, "
            f"found only a {other.upper()}"
        )
    leaf_input = certificates.get(wanted)
    leaf = _load(leaf_input) if leaf_input is not None else None
    # An ARK from the evidence is never an anchor; only ASK/ASVK are chain candidates.
    intermediates = [_load(certificates[name]) for name in ("ask", "asvk")
                     if certificates.get(name) is not None]
    return leaf, intermediates


def _load(value: CertificateInput) -> AmdCertificate:
    """``AmdCertificate.load``, parsed once per process for exactly the same PEM or DER input."""
    if type(value) is str or type(value) is bytes:
        return _load_exact(value)
    return AmdCertificate.load(value)  # parsed already, or bytes-like (not hashable)


@functools.lru_cache(maxsize=256)
def _load_exact(value: bytes | str) -> AmdCertificate:
    """Keyed by the exact text or bytes; input that does not parse raises every time."""
    return AmdCertificate.load(value)


def _extensions(cert: AmdCertificate) -> KdsExtensions:
    """``parse_extensions(cert)``, decoded once per process for the exact DER of the certificate.

    The rules that bind the extensions to a report (:func:`check_against_report`)
    still run on every report. Each caller gets its own copy of the one mutable part.
    """
    parsed = _extensions_by_der(cert.der)
    return dataclasses.replace(parsed, reserved_spls=dict(parsed.reserved_spls))


@functools.lru_cache(maxsize=256)
def _extensions_by_der(der: bytes) -> KdsExtensions:
    """Keyed by the exact DER; a malformed certificate raises every time (errors are not cached)."""
    return parse_extensions(AmdCertificate.from_der(der))


def verify_report(
    report: bytes | AttestationReport,
    *,
    certificates: Mapping[str, CertificateInput] | CertificateInput | None = None,
    roots: TrustRoots | str | bytes | None = None,
    at: _dt.datetime | None = None,
    kds: KdsSource | None = None,
    product: Product | None = None,
) -> VerifiedReport:
    """Verify that genuine AMD SEV-SNP hardware signed ``report``.

    Checks, failing closed with :class:`NotAnEnclaveError` on the first problem:
    the report layout and every must-be-zero field; the VCEK/VLEK extensions
    against the report (product, structVersion, every SPL, hwID/chip_id,
    csp_id); the chain to a pinned AMD root (or to ``roots`` when given, which
    replace AMD's); validity at ``at`` (default: now); revocation when a ``kds``
    client is given; and the ECDSA signature over the original bytes.

    ``certificates`` is the signing certificate (DER/PEM) or a mapping with
    ``vcek``/``vlek`` and optionally ``ask``/``asvk``/``ark`` (an ARK there is
    ignored: anchors never come from evidence). Without a VCEK, ``kds`` fetches
    it; a VLEK cannot be fetched and must be supplied. ``product`` is needed
    only for a v2 report whose certificate must be fetched.
    """
    when = at if at is not None else _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is None:
        raise ValueError("at: expected a timezone-aware datetime")
    if isinstance(report, AttestationReport):
        parsed = report
    else:
        parsed = AttestationReport.from_bytes(report, product)
    if product is not None and parsed.product not in (None, product):
        raise NotAnEnclaveError(
            f"product: expected {product.value}, found {parsed.product.value if parsed.product else '?'}"
        )
    leaf, intermediates = _collect(certificates, parsed.signing_key)
    trust = amd_roots() if roots is None else load_roots(roots)
    if leaf is None:
        if parsed.signing_key is SigningKey.VLEK:
            raise NotAnEnclaveError(
                "certificates: the report is VLEK-signed and no VLEK was supplied; "
                "VLEKs cannot be fetched from AMD KDS and must come with the evidence"
            )
        if kds is None:
            raise NotAnEnclaveError(
                "certificates: no VCEK supplied and no KDS client to fetch one (pass kds=KdsClient())"
            )
        if parsed.chip_id_masked:
            raise NotAnEnclaveError(
                "certificates: no VCEK supplied and the report masks its chip_id, "
                "so the VCEK cannot be fetched"
            )
        fetch_product = parsed.product or product
        if fetch_product is None:
            raise NotAnEnclaveError(
                "product: a v2 report carries no CPUID; pass product= or supply the VCEK"
            )
        vcek_product = fetch_product

        def chains_to_roots(cert: AmdCertificate) -> None:
            # At the VCEK's own notBefore: a genuine VCEK is never evicted because of ``at``.
            verify_chain(cert, signing_key=SigningKey.VCEK, product=vcek_product, roots=trust,
                         intermediates=intermediates, at=cert.not_before)

        leaf = kds.vcek(fetch_product, parsed.chip_id, parsed.reported_tcb, check=chains_to_roots)

    extensions = _extensions(leaf)
    cert_product = extensions.product
    if parsed.product is None:
        parsed = parsed.with_product(cert_product)
    check_against_report(extensions, parsed)
    resolved = parsed.product
    if resolved is None:  # unreachable: check_against_report refuses an unresolved product
        raise NotAnEnclaveError("product: unknown for this report")
    chain = verify_chain(
        leaf,
        signing_key=parsed.signing_key,
        product=resolved,
        roots=trust,
        intermediates=intermediates,
        at=when,
    )
    if kds is not None:
        kds.check_revocation(chain, when)
    verify_report_signature(parsed, leaf)
    log.debug(
        "verified %s v%d report signed by %s (measurement %s)",
        resolved.value, parsed.version, parsed.signing_key.name, parsed.measurement.hex(),
    )
    return VerifiedReport(
        report=parsed,
        product=resolved,
        signing_key=parsed.signing_key,
        certificate=leaf,
        extensions=extensions,
        chain=chain,
        verified_at=when,
        revocation_checked=kds is not None,
    )
