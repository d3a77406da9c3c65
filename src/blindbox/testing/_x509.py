"""Certificates shaped like AMD's (ARK, ASK, ASVK, VCEK, VLEK), issued by test keys.

Subjects say plainly that they are test certificates and not AMD's; only the
common names follow AMD's so that the chain walk accepts them. Certificates are
built and signed (RSASSA-PSS SHA-384, MGF1-SHA-384, salt 48, as AMD signs) by
``cryptography``'s CertificateBuilder, with random serial numbers; only the
values of AMD's VCEK/VLEK extensions are encoded here, as AMD encodes them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from blindbox.snp import der
from blindbox.snp.extensions import (
    OID_BL_SPL,
    OID_CSP_ID,
    OID_FMC_SPL,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_SPL_4,
    OID_SPL_5,
    OID_SPL_6,
    OID_SPL_7,
    OID_STRUCT_VERSION,
    OID_TEE_SPL,
    OID_UCODE_SPL,
)
from blindbox.snp.product import Product
from blindbox.snp.tcb import TcbVersion

ORGANIZATION = "BlindBox TEST root - NOT AMD"
#: Organizational units: the shared hierarchy's keys are public (they ship with blindbox).
UNIT_SHARED = "simulated SEV-SNP, PUBLIC test key"
UNIT_FRESH = "simulated SEV-SNP, fresh test key"
CA_NOT_BEFORE = _dt.datetime(2020, 1, 1, tzinfo=_dt.timezone.utc)
CA_NOT_AFTER = _dt.datetime(2050, 1, 1, tzinfo=_dt.timezone.utc)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def der_integer(value: int) -> bytes:
    """DER INTEGER of a non-negative value (minimal, with a 0x00 pad before a high bit)."""
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return _tlv(der.INTEGER, body)


def der_ia5(text: str) -> bytes:
    return _tlv(der.IA5_STRING, text.encode("ascii"))


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + length + content


def _finish(builder: x509.CertificateBuilder, issuer_key: rsa.RSAPrivateKey) -> bytes:
    """The DER of ``builder`` signed by ``cryptography`` with RSASSA-PSS SHA-384 (salt 48)."""
    signed = builder.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)
    return signed.public_bytes(serialization.Encoding.DER)


def ca_certificate(
    *,
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    path_length: int | None,
) -> bytes:
    """An ARK (self-signed: ``issuer_key is key``) or an ASK/ASVK, valid 2020 to 2050."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(CA_NOT_BEFORE)
        .not_valid_after(CA_NOT_AFTER)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return _finish(builder, issuer_key)


def signing_key_certificate(
    *,
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    product: Product,
    product_name: str,
    tcb: TcbVersion,
    hwid: bytes | None,
    csp_id: str | None,
    not_before: _dt.datetime,
    not_after: _dt.datetime,
) -> bytes:
    """A VCEK (``hwid``) or VLEK (``csp_id``) carrying AMD's extensions, encoded as AMD does."""
    turin = product.has_fmc
    values: list[tuple[str, bytes]] = [
        (OID_STRUCT_VERSION, der_integer(1 if turin else 0)),
        (OID_PRODUCT_NAME, der_ia5(product_name)),
    ]
    if turin:
        values.append((OID_FMC_SPL, der_integer(tcb.fmc or 0)))
    values += [
        (OID_BL_SPL, der_integer(tcb.bootloader)),
        (OID_TEE_SPL, der_integer(tcb.tee)),
        (OID_SNP_SPL, der_integer(tcb.snp)),
    ]
    if not turin:
        values.append((OID_SPL_4, der_integer(0)))
    values += [(oid, der_integer(0)) for oid in (OID_SPL_5, OID_SPL_6, OID_SPL_7)]
    values.append((OID_UCODE_SPL, der_integer(tcb.microcode)))
    if hwid is not None:
        values.append((OID_HWID, bytes(hwid)))  # raw bytes, no DER tag, as AMD encodes it
    if csp_id is not None:
        values.append((OID_CSP_ID, der_ia5(csp_id)))
    unit = issuer.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    # The serial names what is certified (as a KDS serves one VCEK per chip and TCB), so that
    # messages quoting it stay the same from run to run; positive, 63 bits, never zero.
    certified = f"{common_name}/{product.value}/{tcb.raw.hex()}/{(hwid or b'').hex()}/{csp_id}"
    serial = int.from_bytes(hashlib.sha256(certified.encode()).digest()[:8], "big") >> 1 | 1
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(common_name, str(unit)))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for oid, value in values:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
        )
    return _finish(builder, issuer_key)
