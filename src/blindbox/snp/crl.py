"""AMD's certificate revocation lists (CRLs), parsed and checked without the network.

AMD KDS publishes one CRL per product and key family, signed by the product's
ARK. A CRL counts only when the anchor of the chain being checked signed it
(RSASSA-PSS SHA-384, MGF1-SHA-384, salt 48, as for certificates), its issuer
name is that anchor's subject, and ``thisUpdate <= at < nextUpdate``; a CRL
without nextUpdate, with a critical extension, or in any unexpected shape is
refused. The anchor always comes from the verified chain, never from the
network. The CRL is read with BlindBox's strict DER reader, like the
certificates (AMD's serial-0 VCEKs are deprecated by general X.509 loaders).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from blindbox.errors import NotAnEnclaveError
from blindbox.snp import der
from blindbox.snp.certificate import (
    AmdCertificate,
    check_pss_algorithm,
    format_name,
    parse_name,
    parse_time,
    verify_pss_sha384,
)
from blindbox.snp.chain import CertificateChain

#: The largest CRL accepted (AMD's are under 1 KiB and list a handful of ASKs). Parsing is linear
#: in the size, with a cost per entry: 256 KiB keeps the worst case (about 10 000 entries) in
#: tenths of a second.
MAX_CRL_SIZE = 256 * 1024

_CRL_V2 = 1
_TIME_TAGS = (der.UTC_TIME, der.GENERALIZED_TIME)


@dataclass(frozen=True)
class RevocationList:
    """A parsed X.509 v2 CRL of the AMD profile; nothing in it is trusted before
    :meth:`verify_signed_by` and :meth:`check_current` pass."""

    der: bytes
    tbs: bytes
    signature: bytes
    issuer: tuple[tuple[str, str], ...]
    issuer_der: bytes
    this_update: _dt.datetime
    next_update: _dt.datetime
    revoked_serials: frozenset[int]

    def __repr__(self) -> str:
        """One line: issuer, window and revoked serials, never the DER bytes."""
        serials = ", ".join(f"0x{s:x}" for s in sorted(self.revoked_serials)[:8])
        if len(self.revoked_serials) > 8:
            serials += f", ... ({len(self.revoked_serials)} in all)"
        return (f"RevocationList({self.issuer_common_name!r}, this_update={self.this_update.isoformat()}, "
                f"next_update={self.next_update.isoformat()}, revoked=[{serials}])")

    @property
    def issuer_common_name(self) -> str:
        return next((v for o, v in self.issuer if o == "2.5.4.3"), "")

    def describe(self) -> str:
        return (f"CRL of {self.issuer_common_name!r} (thisUpdate {self.this_update.isoformat()}, "
                f"nextUpdate {self.next_update.isoformat()})")

    @classmethod
    def from_der(cls, data: bytes) -> RevocationList:
        """Parse one DER CRL, refusing anything outside the strict profile."""
        if len(data) > MAX_CRL_SIZE:
            raise NotAnEnclaveError(f"CRL: expected at most {MAX_CRL_SIZE} bytes, found {len(data)}")
        try:
            return _parse_crl(bytes(data))
        except der.DerError as exc:
            raise NotAnEnclaveError(f"CRL: malformed DER ({exc})") from None

    def is_revoked(self, serial_number: int) -> bool:
        return serial_number in self.revoked_serials

    def verify_signed_by(self, issuer: AmdCertificate) -> None:
        """Check that ``issuer`` (an ARK) issued and signed this CRL, over its original TBS bytes."""
        if self.issuer_der != issuer.subject_der:
            raise NotAnEnclaveError(
                f"CRL: expected issuer {format_name(issuer.subject)!r} (the chain's anchor), "
                f"found {format_name(self.issuer)!r}"
            )
        key = issuer.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise NotAnEnclaveError(f"CRL: anchor {issuer.common_name!r} has no RSA key")
        if not verify_pss_sha384(key, self.signature, self.tbs):
            raise NotAnEnclaveError(
                f"CRL: signature does not verify under the anchor {issuer.common_name!r} "
                f"(sha256 {issuer.fingerprint_sha256[:16]}...)"
            )

    def check_current(self, at: _dt.datetime) -> None:
        """Require ``thisUpdate <= at < nextUpdate``."""
        if at.tzinfo is None:
            raise ValueError("at: expected a timezone-aware datetime")
        if at < self.this_update:
            raise NotAnEnclaveError(
                f"CRL: not yet valid at {at.isoformat()}: {self.describe()}"
            )
        if at >= self.next_update:
            raise NotAnEnclaveError(
                f"CRL: expired at {at.isoformat()} (stale): {self.describe()}"
            )


def check_revocation(crl: RevocationList, chain: CertificateChain, at: _dt.datetime) -> None:
    """Fail unless ``crl`` is a current CRL of ``chain``'s anchor that does not list its intermediate.

    The signature is checked against ``chain.anchor.certificate`` only. A CRL
    speaks for the certificates its issuer issued (RFC 5280 5.1.2.6; a serial
    number is unique only per issuer), and the ARK issues the ASK and ASVK
    alone, so only the intermediate's serial is looked up. The leaf (VCEK or
    VLEK) was issued by the intermediate and is not looked up: every AMD VCEK
    has serial 0, so an ARK-CRL entry 0 would otherwise refuse every VCEK of
    the product, an entry AMD has no certificate to mean. An entry naming
    another issuer (an indirect CRL) carries a critical extension and is
    refused when the CRL is parsed. A leaf that must no longer be trusted is
    refused through the TCB it certifies (``min_tcb``), not by revocation.
    """
    crl.verify_signed_by(chain.anchor.certificate)
    crl.check_current(at)
    cert = chain.intermediate
    if crl.is_revoked(cert.serial_number):
        raise NotAnEnclaveError(
            f"revoked: intermediate {cert.common_name!r} serial 0x{cert.serial_number:x} is listed "
            f"in the {crl.describe()}"
        )


def _extensions(tlv: der.Tlv, where: str) -> list[str]:
    """Read Extensions, refusing duplicates and any critical one (none is understood here)."""
    oids: list[str] = []
    seen: set[str] = set()  # a set: the list's `in` made many extensions quadratic
    for ext in tlv.expect(der.SEQUENCE).children():
        parts = ext.expect(der.SEQUENCE).children()
        if len(parts) == 3:
            if not der.as_bool(parts[1]):
                raise der.DerError("DEFAULT FALSE critical flag encoded explicitly")
            raise der.DerError(f"unsupported critical {where} extension {der.as_oid(parts[0])}")
        if len(parts) != 2:
            raise der.DerError(f"malformed {where} extension")
        oid = der.as_oid(parts[0])
        parts[1].expect(der.OCTET_STRING)
        if oid in seen:
            raise der.DerError(f"duplicate {where} extension {oid}")
        seen.add(oid)
        oids.append(oid)
    return oids


def _parse_crl(data: bytes) -> RevocationList:
    outer = der.read_single(data, der.SEQUENCE).children()
    if len(outer) != 3:
        raise der.DerError("CertificateList must have 3 elements")
    tbs, sig_alg, sig_value = outer
    check_pss_algorithm(sig_alg)
    fields = tbs.expect(der.SEQUENCE).children()
    if len(fields) < 5 or fields[0].tag != der.INTEGER or der.as_int(fields[0]) != _CRL_V2:
        raise der.DerError("only X.509 v2 CRLs are accepted")
    if fields[1].encoded != sig_alg.encoded:
        raise der.DerError("TBS signature algorithm differs from the outer one")
    issuer = fields[2].expect(der.SEQUENCE)
    if fields[3].tag not in _TIME_TAGS:
        raise der.DerError("thisUpdate is missing")
    if fields[4].tag not in _TIME_TAGS:
        raise der.DerError("nextUpdate is missing (a CRL without one is never current)")
    this_update, next_update = parse_time(fields[3]), parse_time(fields[4])
    if next_update <= this_update:
        raise der.DerError("nextUpdate is not after thisUpdate")
    rest = fields[5:]
    revoked: set[int] = set()
    if rest and rest[0].tag == der.SEQUENCE:
        for entry in rest.pop(0).children():
            items = entry.expect(der.SEQUENCE).children()
            if len(items) not in (2, 3) or items[1].tag not in _TIME_TAGS:
                raise der.DerError("malformed revokedCertificates entry")
            parse_time(items[1])
            if len(items) == 3:
                _extensions(items[2], "CRL entry")
            revoked.add(der.as_int(items[0], der.MAX_SERIAL_BITS))
    if rest and rest[0].tag == 0xA0:
        _extensions(der.read_single(rest.pop(0).content), "CRL")
    if rest:
        raise der.DerError(f"unexpected TBSCertList element tag 0x{rest[0].tag:02x}")
    return RevocationList(
        der=data,
        tbs=tbs.encoded,
        signature=der.as_bit_string(sig_value),
        issuer=parse_name(issuer),
        issuer_der=issuer.encoded,
        this_update=this_update,
        next_update=next_update,
        revoked_serials=frozenset(revoked),
    )
