"""A software SEV-SNP platform: test roots, VCEKs, VLEKs and signed reports.

It mirrors AMD's hierarchy for Milan, Genoa and Turin: an RSA-4096 ARK
(self-signed, RSASSA-PSS SHA-384) signs an ASK and an ASVK, which sign P-384
VCEKs and VLEKs carrying AMD's extensions; the ARK also signs the CRLs. Keys
and signatures come from ``cryptography``: ``SoftwarePlatform()`` uses the
shared PUBLIC test keys committed with blindbox (whose roots are therefore the
same in every process, and accept evidence anyone can sign), and
:meth:`SoftwarePlatform.generate` fresh random keys.

Nothing it issues is trusted by default: :func:`blindbox.snp.verify_report`
accepts these reports only when the caller passes ``roots=platform.roots_pem()``,
and refuses them under AMD's pinned roots. No verification path imports this
module.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from blindbox.snp import der
from blindbox.snp.certificate import AmdCertificate, pem_encode
from blindbox.snp.certtable import encode_cert_table
from blindbox.snp.product import Product
from blindbox.snp.report import REPORT_SIZE, SIGNED_LENGTH, SigningKey
from blindbox.snp.tcb import TcbVersion
from blindbox.testing import _x509
from blindbox.testing._keys import CaRole, Hierarchy, shared_hierarchy
from blindbox.testing.report import ReportFields

DEFAULT_CSP_ID = "CN=csp.blindbox-test.invalid"
LEAF_NOT_BEFORE = _dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc)
LEAF_NOT_AFTER = _dt.datetime(2049, 12, 31, tzinfo=_dt.timezone.utc)
#: productName as AMD writes it in VCEKs and in VLEKs.
VCEK_PRODUCT_NAME = {Product.MILAN: "Milan-B0", Product.GENOA: "Genoa", Product.TURIN: "Turin"}
VLEK_PRODUCT_NAME = {Product.MILAN: "Milan", Product.GENOA: "Genoa", Product.TURIN: "Turin"}

CrlFamily = Literal["vcek", "vlek"]
_SIGNATURE_COMPONENT = 72
# Extension OIDs (DER) of the non-critical CRL extensions AMD's CRLs carry.
_OID_AUTHORITY_KEY_IDENTIFIER = bytes.fromhex("0603551d23")  # 2.5.29.35
_OID_CRL_NUMBER = bytes.fromhex("0603551d14")  # 2.5.29.20
_UTC_TIME_YEARS = range(1950, 2050)  # RFC 5280: UTCTime for these years, GeneralizedTime otherwise


@dataclass(frozen=True)
class SignedReport:
    """A signed 1184-byte report and the certificates that go with it.

    ``certificates`` maps "vcek" or "vlek", "ask" or "asvk", and "ark" to DER,
    as :func:`blindbox.snp.verify_report` takes them.
    """

    raw: bytes
    certificates: Mapping[str, bytes]
    fields: ReportFields

    def cert_table(self, *, mixed_endian: bool = False) -> bytes:
        """These certificates as a GHCB extended-report certificate table."""
        return encode_cert_table(self.certificates, mixed_endian=mixed_endian)



def _seq(*parts: bytes) -> bytes:
    return _x509._tlv(der.SEQUENCE, b"".join(parts))


def _der_time(when: _dt.datetime) -> bytes:
    if when.year in _UTC_TIME_YEARS:
        return _x509._tlv(der.UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _x509._tlv(der.GENERALIZED_TIME, when.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def _crl_der(
    hierarchy: Hierarchy,
    product: Product,
    revoked: tuple[int, ...],
    this_update: _dt.datetime,
    next_update: _dt.datetime,
) -> bytes:
    """An X.509 v2 CRL by the product's ARK, encoded here (``cryptography`` refuses serial 0).

    TBSCertList: version v2, the ARK's signature AlgorithmIdentifier (RSASSA-PSS
    SHA-384 / MGF1-SHA-384 / salt 48), issuer = the ARK's subject bytes,
    thisUpdate, nextUpdate, the revoked entries (revocationDate = thisUpdate)
    and, as in AMD's CRLs, a non-critical AuthorityKeyIdentifier and CRLNumber
    (the thisUpdate second, so that later CRLs have larger numbers). The
    signature is ``cryptography``'s RSASSA-PSS over those bytes.
    """
    authority = hierarchy.authority(product, "ark")
    ark = AmdCertificate.from_der(authority.der)
    key_id = x509.SubjectKeyIdentifier.from_public_key(authority.key.public_key()).digest
    extensions = _seq(
        _seq(_OID_AUTHORITY_KEY_IDENTIFIER, _x509._tlv(der.OCTET_STRING, _seq(_x509._tlv(0x80, key_id)))),
        _seq(_OID_CRL_NUMBER, _x509._tlv(der.OCTET_STRING, _x509.der_integer(int(this_update.timestamp())))),
    )
    fields = [
        _x509.der_integer(1),  # v2
        ark.signature_algorithm,
        ark.subject_der,
        _der_time(this_update),
        _der_time(next_update),
    ]
    if revoked:
        fields.append(_seq(*(_seq(_x509.der_integer(serial), _der_time(this_update)) for serial in revoked)))
    fields.append(_x509._tlv(0xA0, extensions))  # [0] EXPLICIT crlExtensions
    tbs = _seq(*fields)
    signature = authority.key.sign(tbs, _x509.PSS, hashes.SHA384())
    return _seq(tbs, ark.signature_algorithm, _x509._tlv(der.BIT_STRING, b"\x00" + signature))


def _check_tcb(product: Product, tcb: TcbVersion) -> None:
    if (tcb.fmc is not None) != product.has_fmc or len(tcb.raw) != 8:
        layout = "the Turin layout (with fmc)" if product.has_fmc else "the Milan/Genoa layout (no fmc)"
        raise ValueError(f"TCB for {product.value}: expected {layout}, got {tcb}")


@dataclass(frozen=True)
class SoftwarePlatform:
    """A simulated AMD key hierarchy for Milan, Genoa and Turin.

    ``SoftwarePlatform()`` signs with the shared PUBLIC test keys that ship
    with blindbox: its roots are the same in every process, and anyone can
    sign evidence they accept, so they belong in loopback tests only.
    :meth:`generate` makes a platform with fresh random keys. Keys and
    certificates are made on first use and kept by the platform's hierarchy.
    """

    hierarchy: Hierarchy = field(default_factory=shared_hierarchy, repr=False)

    @classmethod
    def generate(cls) -> SoftwarePlatform:
        """A platform with fresh random keys (RSA-4096 CAs made per product on first use)."""
        return cls(Hierarchy.generate())

    @property
    def shared_test_keys(self) -> bool:
        """True when this platform signs with the shared PUBLIC test keys."""
        return self.hierarchy.shared

    def ca_der(self, product: Product, role: CaRole) -> bytes:
        """The DER of this platform's ARK, ASK or ASVK for ``product``."""
        return self.hierarchy.authority(product, role).der

    def roots_pem(self, *products: Product) -> str:
        """ARK, ASK and ASVK PEM of ``products`` (default: all), for ``verify_report(roots=...)``.

        The text starts with a notice saying what these roots are (for the
        shared keys: PUBLIC test keys); PEM readers skip it.
        """
        notice = "".join(f"# {line}\n" for line in self.hierarchy.notice.splitlines())
        return notice + "".join(
            pem_encode(self.ca_der(product, role))
            for product in (products or tuple(Product))
            for role in ("ark", "ask", "asvk")
        )

    def vcek_key(self, product: Product, chip_id: bytes, tcb: TcbVersion) -> ec.EllipticCurvePrivateKey:
        """The VCEK private key of a chip at a TCB (hwID: CHIP_ID, first 8 bytes on Turin)."""
        _check_tcb(product, tcb)
        return self._leaf_key(product, SigningKey.VCEK, tcb, self._hwid(product, chip_id))

    def vlek_key(
        self, product: Product, tcb: TcbVersion, csp_id: str = DEFAULT_CSP_ID
    ) -> ec.EllipticCurvePrivateKey:
        """The VLEK private key of a cloud provider at a TCB."""
        _check_tcb(product, tcb)
        return self._leaf_key(product, SigningKey.VLEK, tcb, csp_id)

    def _leaf_key(self, product: Product, signing_key: SigningKey, tcb: TcbVersion,
                  ident: bytes | str) -> ec.EllipticCurvePrivateKey:
        return self.hierarchy.memo(("key", product, signing_key, tcb.raw, ident),
                                   lambda: ec.generate_private_key(ec.SECP384R1()))

    def _leaf_der(self, product: Product, signing_key: SigningKey, tcb: TcbVersion, ident: bytes | str,
                  not_before: _dt.datetime, not_after: _dt.datetime) -> bytes:
        vcek = signing_key is SigningKey.VCEK
        issuer = self.hierarchy.authority(product, "ask" if vcek else "asvk")

        def make() -> bytes:
            return _x509.signing_key_certificate(
                common_name="SEV-VCEK" if vcek else "SEV-VLEK",
                key=self._leaf_key(product, signing_key, tcb, ident),
                issuer=issuer.subject,
                issuer_key=issuer.key,
                product=product,
                product_name=(VCEK_PRODUCT_NAME if vcek else VLEK_PRODUCT_NAME)[product],
                tcb=tcb,
                hwid=ident if isinstance(ident, bytes) else None,
                csp_id=ident if isinstance(ident, str) else None,
                not_before=not_before,
                not_after=not_after,
            )

        return self.hierarchy.memo(("cert", product, signing_key, tcb.raw, ident, not_before, not_after),
                                   make)

    def vcek_der(
        self,
        product: Product,
        chip_id: bytes,
        tcb: TcbVersion,
        *,
        not_before: _dt.datetime = LEAF_NOT_BEFORE,
        not_after: _dt.datetime = LEAF_NOT_AFTER,
    ) -> bytes:
        """The VCEK certificate for a chip at a TCB, as AMD KDS would serve it."""
        _check_tcb(product, tcb)
        hwid = self._hwid(product, chip_id)
        return self._leaf_der(product, SigningKey.VCEK, tcb, hwid, not_before, not_after)

    def vlek_der(
        self,
        product: Product,
        tcb: TcbVersion,
        *,
        csp_id: str = DEFAULT_CSP_ID,
        not_before: _dt.datetime = LEAF_NOT_BEFORE,
        not_after: _dt.datetime = LEAF_NOT_AFTER,
    ) -> bytes:
        """The VLEK certificate for a cloud provider at a TCB."""
        _check_tcb(product, tcb)
        if not csp_id.isascii():
            raise ValueError("csp_id: expected ASCII (an IA5String)")
        return self._leaf_der(product, SigningKey.VLEK, tcb, csp_id, not_before, not_after)

    def sign(
        self,
        fields: ReportFields,
        *,
        body: bytes | None = None,
        csp_id: str = DEFAULT_CSP_ID,
        not_before: _dt.datetime = LEAF_NOT_BEFORE,
        not_after: _dt.datetime = LEAF_NOT_AFTER,
    ) -> SignedReport:
        """Sign ``fields`` as the chip would, with the VCEK or VLEK they name.

        The key and certificate follow ``fields.product``, ``fields.chip_id``
        (VCEK hwID) and ``fields.reported_tcb`` (its SPLs), so that the report
        verifies under :meth:`roots_pem`. ``body`` replaces the encoded fields
        (0x2A0 bytes) to sign bytes the encoder would not produce.
        """
        product, tcb = fields.product, fields.reported_tcb
        signed = fields.encode() if body is None else bytes(body)
        if len(signed) != SIGNED_LENGTH:
            raise ValueError(f"body: expected {SIGNED_LENGTH} bytes, got {len(signed)}")
        if fields.signing_key is SigningKey.VCEK:
            key = self.vcek_key(product, fields.chip_id, tcb)
            leaf = {"vcek": self.vcek_der(product, fields.chip_id, tcb,
                                          not_before=not_before, not_after=not_after)}
            ca = {"ask": self.ca_der(product, "ask")}
        else:
            key = self.vlek_key(product, tcb, csp_id)
            leaf = {"vlek": self.vlek_der(product, tcb, csp_id=csp_id,
                                          not_before=not_before, not_after=not_after)}
            ca = {"asvk": self.ca_der(product, "asvk")}
        r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(_SIGNATURE_COMPONENT, "little") + s.to_bytes(_SIGNATURE_COMPONENT, "little")
        raw = signed + signature + bytes(REPORT_SIZE - SIGNED_LENGTH - len(signature))
        certificates = MappingProxyType({**leaf, **ca, "ark": self.ca_der(product, "ark")})
        return SignedReport(raw=raw, certificates=certificates, fields=fields)

    def crl(
        self,
        product: Product,
        family: CrlFamily = "vcek",
        *,
        revoked: Iterable[int] = (),
        this_update: _dt.datetime,
        next_update: _dt.datetime,
    ) -> bytes:
        """The DER CRL that KDS would serve at ``crl_url(product, ...)``, listing ``revoked`` serials.

        Signed by the product's test ARK with RSASSA-PSS SHA-384 (MGF1-SHA-384,
        salt 48) and issued in its name, so it verifies only under this
        platform's ARK, never under AMD's. As at AMD, the VCEK (ASK) and VLEK
        (ASVK) lists have the same issuer; ``family`` says which list is meant
        and does not change the bytes. Serial 0, which every AMD VCEK has, can
        be listed. Times are kept to the second.
        """
        if family not in ("vcek", "vlek"):
            raise ValueError(f"family: expected 'vcek' or 'vlek', got {family!r}")
        if not isinstance(product, Product):
            raise ValueError(f"product: expected a Product, got {product!r}")
        listed = tuple(revoked)
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in listed):
            raise ValueError(f"revoked: expected non-negative integer serials, got {listed!r}")
        serials = tuple(sorted(set(listed)))
        times = []
        for label, when in (("this_update", this_update), ("next_update", next_update)):
            if when.tzinfo is None:
                raise ValueError(f"{label}: expected a timezone-aware datetime")
            times.append(when.astimezone(_dt.timezone.utc).replace(microsecond=0))
        start, end = times
        if end <= start:
            raise ValueError(f"next_update: expected after this_update ({start.isoformat()}), "
                             f"got {end.isoformat()}")
        return _crl_der(self.hierarchy, product, serials, start, end)

    @staticmethod
    def _hwid(product: Product, chip_id: bytes) -> bytes:
        hwid = bytes(chip_id[: product.hwid_length])
        if len(hwid) != product.hwid_length:
            raise ValueError(
                f"chip_id: expected at least {product.hwid_length} bytes for {product.value}, "
                f"got {len(chip_id)}"
            )
        return hwid
