"""X.509 certificates of the AMD SEV-SNP profile, parsed with BlindBox's own DER reader.

AMD's VCEK and VLEK have serial number 0 and no key identifiers, which general
X.509 libraries reject or deprecate. :class:`AmdCertificate` reads exactly the
fields the chain walk needs, keeps the signed TBS bytes verbatim, and checks
RSASSA-PSS signatures with the parameters AMD uses (SHA-384, MGF1-SHA-384,
salt 48) and no others. Parsed certificates and loaded public keys are
immutable and memoised by their exact bytes, so a client that sees the same
VCEKs again parses each one once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import hashlib
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from blindbox._text import shown
from blindbox.errors import NotAnEnclaveError
from blindbox.snp import der

OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
OID_COMMON_NAME = "2.5.4.3"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_KEY_USAGE = "2.5.29.15"
PSS_SALT_LENGTH = 48
MAX_CERTIFICATE_SIZE = 16 * 1024
#: The longest PEM text of one certificate accepted: base64 of :data:`MAX_CERTIFICATE_SIZE` bytes
#: (21 848 characters) in 64-character CRLF lines (+ 684) with its BEGIN/END lines, rounded up.
MAX_PEM_SIZE = 24 * 1024

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


@dataclass(frozen=True)
class Extension:
    oid: str
    critical: bool
    value: bytes


@dataclass(frozen=True)
class AmdCertificate:
    """One certificate of an AMD chain (ARK, ASK, ASVK, VCEK or VLEK, or a test look-alike)."""

    der: bytes
    tbs: bytes
    serial_number: int
    signature_algorithm: bytes
    signature: bytes
    issuer: tuple[tuple[str, str], ...]
    issuer_der: bytes
    subject: tuple[tuple[str, str], ...]
    subject_der: bytes
    not_before: _dt.datetime
    not_after: _dt.datetime
    spki: bytes
    extensions: tuple[Extension, ...] = field(repr=False)

    def __repr__(self) -> str:
        """One line: names, serial, expiry and fingerprint, never the DER bytes."""
        return (f"AmdCertificate({self.common_name!r}, issuer={self.issuer_common_name!r}, "
                f"serial=0x{self.serial_number:x}, not_after={self.not_after.date().isoformat()}, "
                f"sha256={self.fingerprint_sha256[:16]}...)")

    @property
    def fingerprint_sha256(self) -> str:
        """Lowercase hex SHA-256 of the DER encoding."""
        return hashlib.sha256(self.der).hexdigest()

    @property
    def common_name(self) -> str:
        return next((v for o, v in self.subject if o == OID_COMMON_NAME), "")

    @property
    def issuer_common_name(self) -> str:
        return next((v for o, v in self.issuer if o == OID_COMMON_NAME), "")

    def extension(self, oid: str) -> Extension | None:
        return next((e for e in self.extensions if e.oid == oid), None)

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        try:
            key = _load_public_key(self.spki)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise NotAnEnclaveError(
                f"certificate {self.common_name!r}: unreadable or unsupported public key ({exc})"
            ) from exc
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise NotAnEnclaveError(
                f"certificate {self.common_name!r}: expected an RSA or EC key, "
                f"found {type(key).__name__}"
            )
        return key

    def is_ca(self) -> bool:
        """True when BasicConstraints says cA and KeyUsage allows keyCertSign."""
        bc, ku = self.extension(OID_BASIC_CONSTRAINTS), self.extension(OID_KEY_USAGE)
        if bc is None or ku is None:
            return False
        try:
            items = der.read_single(bc.value, der.SEQUENCE).children()
            ca = bool(items) and items[0].tag == der.BOOLEAN and der.as_bool(items[0])
            bits = der.read_single(ku.value, der.BIT_STRING).content
        except der.DerError:
            return False
        key_cert_sign = len(bits) >= 2 and bool(bits[1] & 0x04)
        return ca and key_cert_sign

    def valid_at(self, at: _dt.datetime) -> bool:
        return self.not_before <= at <= self.not_after

    def verify_signed_by(self, issuer: AmdCertificate) -> None:
        """Check that ``issuer``'s RSA key made this certificate's RSASSA-PSS signature.

        Raises :class:`NotAnEnclaveError` on any mismatch.
        """
        key = issuer.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise NotAnEnclaveError(
                f"certificate {self.common_name!r}: issuer {issuer.common_name!r} has no RSA key"
            )
        if self.issuer_der != issuer.subject_der:
            raise NotAnEnclaveError(
                f"certificate {self.common_name!r}: issuer name {self.issuer_common_name!r} "
                f"does not match {issuer.common_name!r}"
            )
        if not verify_pss_sha384(key, self.signature, self.tbs):
            raise NotAnEnclaveError(
                f"certificate {self.common_name!r}: signature does not verify under "
                f"{issuer.common_name!r} (sha256 {issuer.fingerprint_sha256[:16]}...)"
            )

    @classmethod
    def from_der(cls, data: bytes) -> AmdCertificate:
        """Parse one DER certificate of the AMD profile (RSASSA-PSS signed)."""
        if len(data) > MAX_CERTIFICATE_SIZE:
            raise NotAnEnclaveError(
                f"certificate: expected at most {MAX_CERTIFICATE_SIZE} bytes, found {len(data)}"
            )
        try:
            return _parse_certificate_memoised(bytes(data))
        except der.DerError as exc:
            raise NotAnEnclaveError(f"certificate: malformed DER ({exc})") from None

    @classmethod
    def load(cls, data: bytes | str | AmdCertificate) -> AmdCertificate:
        """Accept a certificate as DER bytes, PEM text/bytes, or an already parsed one."""
        if isinstance(data, AmdCertificate):
            return data
        certs = load_all(data)
        if len(certs) != 1:
            raise NotAnEnclaveError(f"certificate: expected exactly one, found {len(certs)}")
        return certs[0]


@functools.lru_cache(maxsize=256)
def _load_public_key(spki: bytes) -> PublicKeyTypes:
    return serialization.load_der_public_key(spki)


_NAME_LABELS = {"2.5.4.3": "CN", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C", "2.5.4.7": "L",
                "2.5.4.8": "ST"}


def format_name(name: tuple[tuple[str, str], ...]) -> str:
    """A distinguished name for messages, e.g. ``CN=ARK-Milan, O=Advanced Micro Devices``."""
    return ", ".join(f"{_NAME_LABELS.get(oid, oid)}={value}" for oid, value in name)


def verify_pss_sha384(key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    """RSASSA-PSS with SHA-384, MGF1-SHA-384 and salt 48 — AMD's only signature scheme."""
    try:
        key.verify(
            signature,
            data,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT_LENGTH),
            hashes.SHA384(),
        )
    except InvalidSignature:
        return False
    return True


def load_all(data: bytes | str) -> list[AmdCertificate]:
    """Parse every certificate in PEM text (any number) or a single DER blob.

    PEM blocks are found by their BEGIN/END markers with ``bytes.find`` (no regular expression,
    so time is linear in the input); text outside CERTIFICATE blocks is ignored.
    """
    blob = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    if b"-----BEGIN" not in blob:
        return [AmdCertificate.from_der(blob)] if blob else []
    out = [AmdCertificate.from_der(_pem_body(body)) for body in _pem_blocks(blob)]
    if not out:
        raise NotAnEnclaveError("certificate: PEM text holds no CERTIFICATE block")
    return out


@functools.lru_cache(maxsize=256)
def pem_encode(der: bytes) -> str:
    """A DER certificate as PEM (64-character lines), unparsed; memoised, as the same certificates
    are served with every evidence document."""
    body = base64.b64encode(der).decode("ascii")
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


def _pem_blocks(blob: bytes) -> list[bytes]:
    """The text between each BEGIN CERTIFICATE line and the END line that follows it."""
    blocks = []
    pos = 0
    while (begin := blob.find(_PEM_BEGIN, pos)) >= 0:
        start = begin + len(_PEM_BEGIN)
        end = blob.find(_PEM_END, start)
        if end < 0:
            raise NotAnEnclaveError(
                f"certificate: expected an END CERTIFICATE line after the BEGIN line at byte {begin}, "
                "found none"
            )
        blocks.append(blob[start:end])
        pos = end + len(_PEM_END)
    return blocks


def _pem_body(body: bytes) -> bytes:
    """Decode one PEM block's base64 (whitespace anywhere), refusing an oversized block unread."""
    if len(body) > MAX_PEM_SIZE:
        raise NotAnEnclaveError(
            f"certificate: expected a PEM block of at most {MAX_PEM_SIZE} bytes, found {len(body)}"
        )
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error as exc:
        raise NotAnEnclaveError(f"certificate: invalid PEM base64 ({exc})") from None


def parse_name(tlv: der.Tlv) -> tuple[tuple[str, str], ...]:
    out = []
    for rdn in tlv.expect(der.SEQUENCE).children():
        for atv in rdn.expect(der.SET).children():
            parts = atv.expect(der.SEQUENCE).children()
            if len(parts) != 2:
                raise der.DerError("AttributeTypeAndValue must have 2 elements")
            out.append((der.as_oid(parts[0]), der.as_string(parts[1])))
    return tuple(out)


def parse_time(tlv: der.Tlv) -> _dt.datetime:
    text = tlv.content.decode("ascii", "replace")
    if tlv.tag == der.UTC_TIME and re.fullmatch(r"[0-9]{12}Z", text):
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (tlv.tag == der.GENERALIZED_TIME and re.fullmatch(r"[0-9]{14}Z", text)):
        raise der.DerError(f"unsupported time encoding {shown(text, 40)}")
    # Fourteen ASCII digits (checked above) read field by field: datetime.strptime would cost the
    # first verification of a process tens of milliseconds (its locale tables and regexes).
    try:
        return _dt.datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
                            int(text[10:12]), int(text[12:14]), tzinfo=_dt.timezone.utc)
    except ValueError:
        raise der.DerError(f"invalid time {shown(text, 40)}") from None


def check_pss_algorithm(alg: der.Tlv) -> None:
    items = alg.expect(der.SEQUENCE).children()
    if len(items) != 2 or der.as_oid(items[0]) != OID_RSASSA_PSS:
        raise der.DerError("signature algorithm is not RSASSA-PSS")
    params = {p.tag: p for p in items[1].expect(der.SEQUENCE).children()}
    if set(params) - {0xA0, 0xA1, 0xA2, 0xA3}:
        raise der.DerError("unexpected RSASSA-PSS parameter")

    def hash_is_sha384(t: der.Tlv) -> bool:
        parts = t.expect(der.SEQUENCE).children()
        if not parts:
            return False
        tail_ok = len(parts) == 1 or (len(parts) == 2 and parts[1].tag == der.NULL and not parts[1].content)
        return der.as_oid(parts[0]) == OID_SHA384 and tail_ok

    if 0xA0 not in params or not hash_is_sha384(der.read_single(params[0xA0].content)):
        raise der.DerError("RSASSA-PSS hash is not SHA-384")
    if 0xA1 not in params:
        raise der.DerError("RSASSA-PSS mask generation is not MGF1-SHA-384")
    mgf = der.read_single(params[0xA1].content, der.SEQUENCE).children()
    if len(mgf) != 2 or der.as_oid(mgf[0]) != OID_MGF1 or not hash_is_sha384(mgf[1]):
        raise der.DerError("RSASSA-PSS mask generation is not MGF1-SHA-384")
    if 0xA2 not in params or der.as_int(der.read_single(params[0xA2].content)) != PSS_SALT_LENGTH:
        raise der.DerError(f"RSASSA-PSS salt length is not {PSS_SALT_LENGTH}")
    if 0xA3 in params and der.as_int(der.read_single(params[0xA3].content)) != 1:
        raise der.DerError("RSASSA-PSS trailer field is not 1")


def _parse_certificate(data: bytes) -> AmdCertificate:
    outer = der.read_single(data, der.SEQUENCE).children()
    if len(outer) != 3:
        raise der.DerError("Certificate must have 3 elements")
    tbs_tlv, sig_alg, sig_value = outer
    fields = tbs_tlv.expect(der.SEQUENCE).children()
    if not fields or fields[0].tag != 0xA0:
        raise der.DerError("only X.509 v3 certificates are accepted")
    if der.as_int(der.read_single(fields[0].content)) != 2:
        raise der.DerError("only X.509 v3 certificates are accepted")
    if len(fields) < 7:
        raise der.DerError("TBSCertificate is missing fields")
    serial = der.as_int(fields[1], der.MAX_SERIAL_BITS)
    if fields[2].encoded != sig_alg.encoded:
        raise der.DerError("TBS signature algorithm differs from the outer one")
    check_pss_algorithm(sig_alg)
    validity = fields[4].expect(der.SEQUENCE).children()
    if len(validity) != 2:
        raise der.DerError("Validity must have 2 elements")
    spki = fields[6].expect(der.SEQUENCE)
    extensions: list[Extension] = []
    rest = fields[7:]
    for item in rest:
        if item.tag in (0x81, 0x82):
            continue
        if item.tag != 0xA3 or item is not rest[-1]:
            raise der.DerError(f"unexpected TBSCertificate element tag 0x{item.tag:02x}")
        seen: set[str] = set()
        for ext in der.read_single(item.content, der.SEQUENCE).children():
            parts = ext.expect(der.SEQUENCE).children()
            if len(parts) == 2:
                oid, value, critical = der.as_oid(parts[0]), parts[1], False
            elif len(parts) == 3:
                oid, critical, value = der.as_oid(parts[0]), der.as_bool(parts[1]), parts[2]
                if not critical:
                    raise der.DerError("DEFAULT FALSE critical flag encoded explicitly")
            else:
                raise der.DerError("malformed Extension")
            if oid in seen:
                raise der.DerError(f"duplicate extension {oid}")
            seen.add(oid)
            extensions.append(Extension(oid, critical, value.expect(der.OCTET_STRING).content))
    return AmdCertificate(
        der=data,
        tbs=tbs_tlv.encoded,
        serial_number=serial,
        signature_algorithm=sig_alg.encoded,
        signature=der.as_bit_string(sig_value),
        issuer=parse_name(fields[3]),
        issuer_der=fields[3].encoded,
        subject=parse_name(fields[5]),
        subject_der=fields[5].encoded,
        not_before=parse_time(validity[0]),
        not_after=parse_time(validity[1]),
        spki=spki.encoded,
        extensions=tuple(extensions),
    )


#: Keyed by the exact DER; failures are not cached (lru_cache never caches an exception).
_parse_certificate_memoised = functools.lru_cache(maxsize=256)(_parse_certificate)
