"""The software SEV-SNP platform: exact report encoding, AMD-shaped test chains, test keys.

The platform must (1) encode any report field exactly where the ABI puts it, so
that every real report re-encodes to its own signed bytes; (2) issue chains that
``verify_report`` accepts only when the caller passes the test roots; and (3)
sign with the committed, labelled PUBLIC test keys by default or with fresh
random keys, all from ``cryptography`` (no RSA arithmetic of its own).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from blindbox.errors import NotAnEnclaveError
from blindbox.snp import AmdCertificate, AttestationReport, Product, SigningKey, TcbVersion, verify_report
from blindbox.snp.certificate import OID_COMMON_NAME, load_all
from blindbox.snp.certtable import decode_cert_table
from blindbox.snp.chain import CertificateChain
from blindbox.snp.crl import RevocationList, check_revocation
from blindbox.snp.extensions import OID_HWID, OID_UCODE_SPL, parse_extensions
from blindbox.snp.report import REPORT_SIZE, SIGNED_LENGTH, Cpuid, FirmwareVersion
from blindbox.snp.roots import amd_roots
from blindbox.testing import (
    DEFAULT_CPUID,
    DEFAULT_CSP_ID,
    DEFAULT_TCB,
    ReportFields,
    SoftwarePlatform,
    _keys,
    default_chip_id,
)

from .conftest import VECTORS, load_index

SRC = Path(__file__).resolve().parents[1] / "src" / "blindbox"
NOW = dt.datetime(2030, 6, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="session")
def platform() -> SoftwarePlatform:
    return SoftwarePlatform()


@pytest.fixture(scope="session")
def roots(platform: SoftwarePlatform) -> str:
    """ARK, ASK and ASVK of all three products (the shared PUBLIC test keys' roots)."""
    return platform.roots_pem()


@pytest.fixture(scope="module")
def fresh() -> SoftwarePlatform:
    """A platform with fresh random keys (its Milan CAs are made on first use)."""
    return SoftwarePlatform.generate()


# --- strategies ------------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
CPUID_MODELS = {
    Product.MILAN: (0x19, list(range(0x00, 0x10))),
    Product.GENOA: (0x19, [*range(0x10, 0x20), *range(0xA0, 0xB0)]),
    Product.TURIN: (0x1A, list(range(0x00, 0x12))),
}


def tcbs(product: Product) -> st.SearchStrategy[TcbVersion]:
    if product.has_fmc:
        return st.builds(
            lambda f, b, t, s, u: TcbVersion.from_components(fmc=f, bootloader=b, tee=t, snp=s, microcode=u),
            u8, u8, u8, u8, u8,
        )
    return st.builds(
        lambda b, t, s, u: TcbVersion.from_components(bootloader=b, tee=t, snp=s, microcode=u), u8, u8, u8, u8
    )


@st.composite
def report_fields(draw: st.DrawFn, versions: tuple[int, ...] = (2, 3, 4, 5)) -> ReportFields:
    product = draw(st.sampled_from(list(Product)))
    version = draw(st.sampled_from([v for v in versions if not (v == 2 and product is Product.TURIN)]))
    family, models = CPUID_MODELS[product]
    cpuid = None if version == 2 else Cpuid(family, draw(st.sampled_from(models)), draw(u8))
    chip_id = draw(st.binary(min_size=product.hwid_length, max_size=product.hwid_length)).ljust(64, b"\0")
    firmware = st.builds(FirmwareVersion, u8, u8, u8)

    def blob(size: int) -> bytes:
        return draw(st.binary(min_size=size, max_size=size))

    return ReportFields(
        product=product,
        version=version,
        guest_svn=draw(u32),
        policy=draw(st.integers(0, (1 << 26) - 1)) | 1 << 17,
        family_id=blob(16),
        image_id=blob(16),
        vmpl=draw(u32),
        current_tcb=draw(tcbs(product)),
        platform_info=draw(u64),
        author_key_enabled=draw(st.booleans()),
        mask_chip_id=draw(st.booleans()),
        signing_key=draw(st.sampled_from(list(SigningKey))),
        report_data=blob(64),
        measurement=blob(48),
        host_data=blob(32),
        id_key_digest=blob(48),
        author_key_digest=blob(48),
        report_id=blob(32),
        report_id_ma=blob(32),
        reported_tcb=draw(tcbs(product)),
        cpuid=cpuid,
        chip_id=chip_id,
        committed_tcb=draw(tcbs(product)),
        current_version=draw(firmware),
        committed_version=draw(firmware),
        launch_tcb=draw(tcbs(product)),
        launch_mit_vector=draw(u64) if version >= 5 else None,
        current_mit_vector=draw(u64) if version >= 5 else None,
    )


def with_dummy_signature(body: bytes) -> bytes:
    """A structurally valid signature (r = s = 1): enough for the parser, which does not verify."""
    component = (1).to_bytes(72, "little")
    return body + component + component + bytes(REPORT_SIZE - SIGNED_LENGTH - 144)


def as_parsed(fields: ReportFields) -> ReportFields:
    """What a report built from ``fields`` says: a masked chip id reads as zeros."""
    return dataclasses.replace(fields, chip_id=bytes(64)) if fields.mask_chip_id else fields


# --- encoding ---------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(fields=report_fields())
def test_parse_of_encode_gives_back_every_field(fields: ReportFields) -> None:
    body = fields.encode()
    assert len(body) == SIGNED_LENGTH
    parsed = AttestationReport.from_bytes(with_dummy_signature(body), fields.product)
    assert parsed.signed_bytes == body
    assert ReportFields.from_report(parsed, fields.product) == as_parsed(fields)
    assert parsed.product is fields.product
    assert parsed.signing_key is fields.signing_key
    assert parsed.chip_id_masked is fields.mask_chip_id


# Offsets and sizes from the ABI table (AMD SEV-SNP ABI specification, ATTESTATION_REPORT table).
ABI = {
    "version": (0x000, 4), "guest_svn": (0x004, 4), "policy": (0x008, 8), "family_id": (0x010, 16),
    "image_id": (0x020, 16), "vmpl": (0x030, 4), "signature_algo": (0x034, 4), "current_tcb": (0x038, 8),
    "platform_info": (0x040, 8), "signer_info": (0x048, 4), "report_data": (0x050, 64),
    "measurement": (0x090, 48), "host_data": (0x0C0, 32), "id_key_digest": (0x0E0, 48),
    "author_key_digest": (0x110, 48), "report_id": (0x140, 32), "report_id_ma": (0x160, 32),
    "reported_tcb": (0x180, 8), "cpuid": (0x188, 3), "chip_id": (0x1A0, 64), "committed_tcb": (0x1E0, 8),
    "current_version": (0x1E8, 3), "committed_version": (0x1EC, 3), "launch_tcb": (0x1F0, 8),
    "launch_mit_vector": (0x1F8, 8), "current_mit_vector": (0x200, 8),
}


def test_every_field_lands_at_its_abi_offset() -> None:
    def marker(tag: int, size: int) -> bytes:
        return bytes((tag + i) % 255 + 1 for i in range(size))

    def tcb(tag: int) -> TcbVersion:
        return TcbVersion.from_components(bootloader=tag, tee=tag + 1, snp=tag + 2, microcode=tag + 3)

    fields = ReportFields(
        product=Product.GENOA, version=5, guest_svn=0x04030201, policy=0x0123_0000_0003_0A0B, vmpl=0x11223344,
        signature_algo=0x55667788, platform_info=0x0102030405060708, author_key_enabled=True,
        signing_key=SigningKey.VLEK, family_id=marker(1, 16), image_id=marker(2, 16),
        report_data=marker(3, 64),
        measurement=marker(4, 48), host_data=marker(5, 32), id_key_digest=marker(6, 48),
        author_key_digest=marker(7, 48), report_id=marker(8, 32), report_id_ma=marker(9, 32),
        chip_id=marker(10, 64), current_tcb=tcb(10), reported_tcb=tcb(20), committed_tcb=tcb(30),
        launch_tcb=tcb(40), cpuid=Cpuid(0x19, 0xA1, 2), current_version=FirmwareVersion(1, 55, 21),
        committed_version=FirmwareVersion(1, 54, 9), launch_mit_vector=0xA1A2A3A4A5A6A7A8,
        current_mit_vector=0xB1B2B3B4B5B6B7B8,
    )
    expected = {
        "version": bytes.fromhex("05000000"), "guest_svn": bytes.fromhex("01020304"),
        "policy": bytes.fromhex("0b0a030000002301"), "vmpl": bytes.fromhex("44332211"),
        "signature_algo": bytes.fromhex("88776655"), "platform_info": bytes.fromhex("0807060504030201"),
        "signer_info": bytes.fromhex("05000000"),  # author key (bit 0) | VLEK (1 << 2)
        "cpuid": bytes.fromhex("19a102"),
        "current_version": bytes([21, 55, 1]), "committed_version": bytes([9, 54, 1]),  # build, minor, major
        "launch_mit_vector": bytes.fromhex("a8a7a6a5a4a3a2a1"),
        "current_mit_vector": bytes.fromhex("b8b7b6b5b4b3b2b1"),
        **{name: getattr(fields, name).raw for name in ("current_tcb", "reported_tcb", "committed_tcb",
                                                        "launch_tcb")},
        **{name: getattr(fields, name) for name in ("family_id", "image_id", "report_data", "measurement",
                                                    "host_data", "id_key_digest", "author_key_digest",
                                                    "report_id", "report_id_ma", "chip_id")},
    }
    assert set(expected) == set(ABI)
    body = bytearray(fields.encode())
    for name, (offset, size) in ABI.items():
        assert bytes(body[offset : offset + size]) == expected[name], name
        body[offset : offset + size] = bytes(size)
    assert not any(body), "bytes outside the named fields must be zero"


def test_masked_chip_id_is_written_as_zeros_and_keeps_the_chip_identity() -> None:
    fields = ReportFields(mask_chip_id=True)
    assert fields.chip_id == default_chip_id(Product.MILAN)
    assert fields.encode()[0x1A0:0x1E0] == bytes(64)
    assert fields.encode()[0x048] == 0b010


def test_defaults_follow_the_product() -> None:
    turin = ReportFields(product=Product.TURIN)
    assert turin.reported_tcb == DEFAULT_TCB[Product.TURIN] and turin.reported_tcb.fmc is not None
    assert turin.cpuid == DEFAULT_CPUID[Product.TURIN] == Cpuid(0x1A, 0x02, 1)
    assert turin.chip_id[8:] == bytes(56) and any(turin.chip_id[:8])
    assert ReportFields(product=Product.GENOA).cpuid == Cpuid(0x19, 0x11, 1)
    assert ReportFields(product=Product.MILAN).cpuid == Cpuid(0x19, 0x01, 1)
    v2 = ReportFields(version=2)
    assert v2.cpuid is None and v2.launch_mit_vector is None
    assert v2.encode()[0x188:0x1A0] == bytes(24)
    assert ReportFields(version=5).launch_mit_vector == 0
    assert ReportFields(product=Product.TURIN, chip_id=b"\x01" * 8).chip_id == b"\x01" * 8 + bytes(56)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"report_data": bytes(32)}, "report_data: expected 64 bytes, found 32 bytes"),
        ({"measurement": "00" * 48}, "measurement: expected 48 bytes"),
        ({"chip_id": b"\x01" * 8}, "chip_id: expected 64 bytes, found 8 bytes"),  # only Turin pads
        ({"version": 1 << 32}, "version: expected 0 <= value < 2\\*\\*32"),
        ({"policy": -1}, "policy: expected 0 <= value < 2\\*\\*64"),
        ({"current_version": FirmwareVersion(256, 0, 0)}, "current_version.major: expected 0..255"),
        ({"current_tcb": TcbVersion(b"\0" * 7, 0, 0, 0, 0)}, "current_tcb: expected an 8-byte TCB_VERSION"),
    ],
)
def test_values_that_do_not_fit_their_field_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReportFields(**changes)  # type: ignore[arg-type]


def real_reports() -> list[tuple[str, Path, Product]]:
    by_file = {entry["file"]: Product.from_name(entry["product"]) for entry in load_index()}
    # The peers' v2 reports carry no CPUID; their products are stated in peers/SOURCES.md.
    peers = {"omne-attest": Product.MILAN, "sev-attest-tool": Product.GENOA}
    out = [(p.name, p, by_file[f"reports/{p.name}"]) for p in sorted((VECTORS / "reports").glob("*.bin"))]
    out += [(f"{p.parent.name}/{p.name}", p, peers[p.parent.name])
            for p in sorted((VECTORS / "peers").glob("*/*.bin"))]
    return out


REAL = real_reports()


def test_all_real_reports_are_covered() -> None:
    assert len(REAL) == len(list((VECTORS / "reports").glob("*.bin"))) + 2
    assert {r[2] for r in REAL} == set(Product)


@pytest.mark.parametrize(("name", "path", "product"), REAL, ids=[r[0] for r in REAL])
def test_real_reports_re_encode_to_their_signed_bytes(name: str, path: Path, product: Product) -> None:
    raw = path.read_bytes()
    fields = ReportFields.from_report(AttestationReport.from_bytes(raw, product), product)
    assert fields.encode() == raw[:SIGNED_LENGTH]


@pytest.mark.parametrize(("name", "path", "product"), REAL, ids=[r[0] for r in REAL])
def test_real_report_fields_re_signed_by_the_platform_verify_under_its_roots(
    name: str, path: Path, product: Product, platform: SoftwarePlatform, roots: str
) -> None:
    fields = ReportFields.from_report(AttestationReport.from_bytes(path.read_bytes(), product), product)
    signed = platform.sign(fields)
    assert signed.raw[:SIGNED_LENGTH] == path.read_bytes()[:SIGNED_LENGTH]
    verified = verify_report(signed.raw, certificates=signed.certificates, roots=roots, at=NOW)
    assert verified.product is product and not verified.roots_are_amd


# --- signing and verification ---------------------------------------------------------------------

MATRIX = [
    (product, key, version)
    for product in Product
    for key in SigningKey
    for version in (2, 3, 5)
    if not (version == 2 and product is Product.TURIN)
]


@pytest.mark.parametrize(("product", "key", "version"), MATRIX,
                         ids=[f"{p.value}-{k.name}-v{v}" for p, k, v in MATRIX])
def test_signed_reports_verify_under_the_test_roots(
    product: Product, key: SigningKey, version: int, platform: SoftwarePlatform, roots: str
) -> None:
    fields = ReportFields(product=product, version=version, signing_key=key,
                          report_data=hashlib.sha512(b"nonce").digest(), measurement=b"\x42" * 48)
    signed = platform.sign(fields)
    assert len(signed.raw) == REPORT_SIZE and not any(signed.raw[0x330:])
    leaf, ca = ("vcek", "ask") if key is SigningKey.VCEK else ("vlek", "asvk")
    assert set(signed.certificates) == {leaf, ca, "ark"}
    verified = verify_report(signed.raw, certificates=signed.certificates, roots=roots, at=NOW)
    assert verified.product is product
    assert verified.signing_key is key
    assert verified.measurement == b"\x42" * 48
    assert verified.report.report_data == fields.report_data
    assert not verified.roots_are_amd
    assert verified.chain.anchor.certificate.common_name == f"ARK-{product.value}"
    assert verified.chain.intermediate.der == signed.certificates[ca]
    assert verified.extensions.spls() == fields.reported_tcb.components()
    # The same evidence through a GHCB certificate table, in either GUID byte order.
    for mixed in (False, True):
        table = decode_cert_table(signed.cert_table(mixed_endian=mixed))
        again = verify_report(signed.raw, certificates=table.certificates, roots=roots, at=NOW)
        assert again.product is product


@pytest.mark.parametrize(("product", "key"), [(p, k) for p in Product for k in SigningKey])
def test_test_reports_fail_under_amds_pinned_roots(product: Product, key: SigningKey,
                                                   platform: SoftwarePlatform) -> None:
    signed = platform.sign(ReportFields(product=product, signing_key=key))
    with pytest.raises(NotAnEnclaveError, match="expected a chain to AMD's pinned roots"):
        verify_report(signed.raw, certificates=signed.certificates, at=NOW)


@settings(max_examples=25, deadline=None)
@given(fields=report_fields(versions=(2, 3, 5)))
def test_any_signed_report_verifies(fields: ReportFields, platform: SoftwarePlatform, roots: str) -> None:
    signed = platform.sign(fields)
    verified = verify_report(signed.raw, certificates=signed.certificates, roots=roots, at=NOW)
    assert verified.report.signed_bytes == fields.encode()
    assert ReportFields.from_report(verified.report) == as_parsed(fields)


def test_roots_of_one_product_do_not_verify_another(platform: SoftwarePlatform) -> None:
    signed = platform.sign(ReportFields(product=Product.GENOA))
    with pytest.raises(NotAnEnclaveError, match="no anchor for Genoa"):
        verify_report(signed.raw, certificates=signed.certificates, roots=platform.roots_pem(Product.MILAN),
                      at=NOW)


def test_vcek_of_another_chip_is_refused(platform: SoftwarePlatform, roots: str) -> None:
    fields = ReportFields()
    signed = platform.sign(fields)
    other = platform.vcek_der(Product.MILAN, b"\x07" * 64, fields.reported_tcb)
    with pytest.raises(NotAnEnclaveError, match="hwID: expected the report's chip_id"):
        verify_report(signed.raw, certificates={**signed.certificates, "vcek": other}, roots=roots, at=NOW)


def test_vcek_of_another_tcb_is_refused(platform: SoftwarePlatform, roots: str) -> None:
    fields = ReportFields()
    signed = platform.sign(fields)
    older = dataclasses.replace(fields, reported_tcb=TcbVersion.from_components(
        bootloader=4, tee=0, snp=24, microcode=219))
    other = platform.vcek_der(Product.MILAN, fields.chip_id, older.reported_tcb)
    with pytest.raises(NotAnEnclaveError, match="snp SPL 24 does not equal the report's reported_tcb snp 27"):
        verify_report(signed.raw, certificates={**signed.certificates, "vcek": other}, roots=roots, at=NOW)


def test_signing_arbitrary_body_lets_tests_reach_the_parser(platform: SoftwarePlatform, roots: str) -> None:
    fields = ReportFields()
    body = bytearray(fields.encode())
    body[0x208] = 1  # a must-be-zero byte, under a valid signature
    signed = platform.sign(fields, body=bytes(body))
    with pytest.raises(NotAnEnclaveError, match="reserved before signature"):
        verify_report(signed.raw, certificates=signed.certificates, roots=roots, at=NOW)
    with pytest.raises(ValueError, match="body: expected 672 bytes"):
        platform.sign(fields, body=bytes(10))


def test_leaf_validity_is_a_parameter(platform: SoftwarePlatform, roots: str) -> None:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    signed = platform.sign(ReportFields(), not_before=start, not_after=end)
    vcek = AmdCertificate.from_der(signed.certificates["vcek"])
    assert (vcek.not_before, vcek.not_after) == (start, end)
    verify_report(signed.raw, certificates=signed.certificates, roots=roots, at=start + dt.timedelta(days=1))
    with pytest.raises(NotAnEnclaveError, match="expected valid at 2026-02-01"):
        verify_report(signed.raw, certificates=signed.certificates, roots=roots,
                      at=dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc))


def test_tcb_in_the_wrong_layout_for_the_product_is_refused(platform: SoftwarePlatform) -> None:
    fields = ReportFields(product=Product.TURIN, reported_tcb=DEFAULT_TCB[Product.MILAN])
    with pytest.raises(ValueError, match="expected the Turin layout"):
        platform.sign(fields)
    with pytest.raises(ValueError, match="expected the Milan/Genoa layout"):
        platform.vcek_der(Product.GENOA, bytes(64), DEFAULT_TCB[Product.TURIN])


# --- certificate profile --------------------------------------------------------------------------


def names_of(cert: AmdCertificate) -> dict[str, str]:
    oids = {"2.5.4.10": "O", "2.5.4.11": "OU", OID_COMMON_NAME: "CN"}
    return {oids[oid]: value for oid, value in cert.subject}


@pytest.mark.parametrize("product", list(Product))
def test_ca_certificates_have_amds_shape_and_say_they_are_not_amds(product: Product,
                                                                   platform: SoftwarePlatform) -> None:
    for role, cn, issuer in (("ark", f"ARK-{product.value}", f"ARK-{product.value}"),
                             ("ask", f"SEV-{product.value}", f"ARK-{product.value}"),
                             ("asvk", f"SEV-VLEK-{product.value}", f"ARK-{product.value}")):
        der = platform.ca_der(product, role)  # type: ignore[arg-type]
        cert = AmdCertificate.from_der(der)  # also checks RSASSA-PSS SHA-384 / MGF1-SHA-384 / salt 48
        assert names_of(cert) == {"O": "BlindBox TEST root - NOT AMD",
                                  "OU": "simulated SEV-SNP, PUBLIC test key", "CN": cn}
        assert cert.issuer_common_name == issuer
        assert cert.is_ca()
        assert (cert.not_before.year, cert.not_after.year) == (2020, 2050)
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.key_size == 4096 and key.public_numbers().e == 65537
        parsed = x509.load_der_x509_certificate(der)
        constraints = parsed.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.path_length == (None if role == "ark" else 0)
        usage = parsed.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
        cert.verify_signed_by(AmdCertificate.from_der(platform.ca_der(product, "ark")))


@pytest.mark.parametrize("product", list(Product))
def test_vcek_and_vlek_extensions_are_encoded_as_amd_does(product: Product,
                                                          platform: SoftwarePlatform) -> None:
    tcb = DEFAULT_TCB[product]
    chip = default_chip_id(product)
    vcek = AmdCertificate.from_der(platform.vcek_der(product, chip, tcb))
    vlek = AmdCertificate.from_der(platform.vlek_der(product, tcb))
    assert (vcek.common_name, vlek.common_name) == ("SEV-VCEK", "SEV-VLEK")
    assert vcek.issuer_common_name == f"SEV-{product.value}"
    assert vlek.issuer_common_name == f"SEV-VLEK-{product.value}"
    turin = product is Product.TURIN
    vcek_name = "Milan-B0" if product is Product.MILAN else product.value
    for cert, name in ((vcek, vcek_name), (vlek, product.value)):
        ext = parse_extensions(cert)
        assert ext.struct_version == (1 if turin else 0)
        assert ext.product_name == name
        assert ext.spls() == tcb.components()
        assert ext.reserved_spls == ({} if turin else {"spl_4": 0}) | {"spl_5": 0, "spl_6": 0, "spl_7": 0}
        assert {e.oid for e in cert.extensions if not e.oid.startswith("1.3.6.1.4.1.3704.")} == set()
    hwid = vcek.extension(OID_HWID)
    assert hwid is not None and hwid.value == chip[: product.hwid_length]  # raw, no DER tag
    assert parse_extensions(vcek).csp_id is None
    assert vlek.extension(OID_HWID) is None and parse_extensions(vlek).csp_id == DEFAULT_CSP_ID
    ucode = vcek.extension(OID_UCODE_SPL)
    assert ucode is not None and ucode.value == bytes([2, 1 + (tcb.microcode >= 0x80)]) + (
        b"\0" if tcb.microcode >= 0x80 else b"") + bytes([tcb.microcode])
    assert names_of(vcek)["O"] == "BlindBox TEST root - NOT AMD"


# --- CRLs -----------------------------------------------------------------------------------------

CRL_FROM = NOW - dt.timedelta(days=1)
CRL_UNTIL = NOW + dt.timedelta(days=6)


def platform_chain(platform: SoftwarePlatform, roots: str, product: Product,
                   key: SigningKey) -> CertificateChain:
    signed = platform.sign(ReportFields(product=product, signing_key=key))
    return verify_report(signed.raw, certificates=signed.certificates, roots=roots, at=NOW).chain


@pytest.mark.parametrize("product", list(Product))
def test_crl_is_a_v2_pss_crl_of_the_ark_read_alike_by_cryptography(product: Product,
                                                                     platform: SoftwarePlatform) -> None:
    ark_der = platform.ca_der(product, "ark")
    ark = AmdCertificate.from_der(ark_der)
    crl_der = platform.crl(product, revoked=(0, 0x1234), this_update=CRL_FROM, next_update=CRL_UNTIL)
    ours = RevocationList.from_der(crl_der)
    ours.verify_signed_by(ark)
    ours.check_current(NOW)
    assert ours.issuer_der == ark.subject_der
    assert (ours.this_update, ours.next_update) == (CRL_FROM, CRL_UNTIL)
    assert ours.revoked_serials == frozenset({0, 0x1234})
    # An independent parser: same content, a valid PSS signature, AMD's two non-critical extensions.
    theirs = x509.load_der_x509_crl(crl_der)
    ark_x509 = x509.load_der_x509_certificate(ark_der)
    assert theirs.is_signature_valid(ark_x509.public_key())  # type: ignore[arg-type]
    assert theirs.issuer == ark_x509.subject
    assert theirs.last_update_utc == CRL_FROM and theirs.next_update_utc == CRL_UNTIL
    assert sorted(r.serial_number for r in theirs) == [0, 0x1234]
    assert all(r.revocation_date_utc == CRL_FROM for r in theirs)
    assert isinstance(theirs.signature_algorithm_parameters, padding.PSS)
    assert [(e.oid.dotted_string, e.critical) for e in theirs.extensions] == [
        ("2.5.29.35", False), ("2.5.29.20", False)]
    aki = theirs.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ark_x509.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    number = theirs.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    later = platform.crl(product, this_update=CRL_UNTIL, next_update=CRL_UNTIL + dt.timedelta(days=7))
    assert x509.load_der_x509_crl(later).extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number > number
    empty = platform.crl(product, "vlek", this_update=CRL_FROM, next_update=CRL_UNTIL)
    assert len(x509.load_der_x509_crl(empty)) == 0
    assert RevocationList.from_der(empty).revoked_serials == frozenset()


@pytest.mark.parametrize("product", list(Product))
def test_crl_verifies_only_under_its_own_products_test_ark(product: Product,
                                                            platform: SoftwarePlatform) -> None:
    crl = RevocationList.from_der(platform.crl(product, this_update=CRL_FROM, next_update=CRL_UNTIL))
    other = next(p for p in Product if p is not product)
    for anchor in (AmdCertificate.from_der(platform.ca_der(other, "ark")),
                   amd_roots().anchors_for(product)[0].certificate,
                   AmdCertificate.from_der(platform.ca_der(product, "ask"))):
        with pytest.raises(NotAnEnclaveError, match="CRL: expected issuer"):
            crl.verify_signed_by(anchor)


@pytest.mark.parametrize(("product", "key"), [(p, k) for p in Product for k in SigningKey])
def test_crl_revokes_the_intermediate_of_a_test_chain(
    product: Product, key: SigningKey, platform: SoftwarePlatform, roots: str
) -> None:
    chain = platform_chain(platform, roots, product, key)
    family: Literal["vcek", "vlek"] = "vlek" if key is SigningKey.VLEK else "vcek"
    leaf, intermediate = chain.leaf.serial_number, chain.intermediate.serial_number
    assert 0 not in (leaf, intermediate) and leaf != intermediate  # unlike AMD's VCEKs (serial 0)

    def crl(*revoked: int) -> RevocationList:
        return RevocationList.from_der(platform.crl(product, family, revoked=revoked, this_update=CRL_FROM,
                                                    next_update=CRL_UNTIL))

    check_revocation(crl(), chain, NOW)
    check_revocation(crl(0, leaf + 1, intermediate + 1), chain, NOW)
    name = chain.intermediate.common_name
    with pytest.raises(NotAnEnclaveError, match=f"revoked: intermediate '{name}' serial 0x{intermediate:x}"):
        check_revocation(crl(intermediate), chain, NOW)
    # The ARK's CRL speaks for what the ARK issued: the leaf's serial (AMD's VCEKs: all 0) is not looked up.
    check_revocation(crl(7, leaf), chain, NOW)
    amd_style = dataclasses.replace(chain, leaf=dataclasses.replace(chain.leaf, serial_number=0))
    check_revocation(crl(0), amd_style, NOW)


def test_crl_lists_its_inputs_and_verifies_only_under_its_own_ark(
    platform: SoftwarePlatform, fresh: SoftwarePlatform
) -> None:
    def crl(p: SoftwarePlatform, revoked: tuple[int, ...] = (3, 1), **times: dt.datetime) -> RevocationList:
        window = {"this_update": CRL_FROM, "next_update": CRL_UNTIL} | times
        return RevocationList.from_der(p.crl(Product.MILAN, "vcek", revoked=revoked, **window))

    first = crl(platform)
    assert first.revoked_serials == {1, 3} and (first.this_update, first.next_update) == (CRL_FROM, CRL_UNTIL)
    # The signed bytes depend on the inputs alone (the RSASSA-PSS salt is random, so signatures differ).
    assert crl(platform, (1, 3, 3)).tbs == first.tbs  # a set of serials: order and repeats do not matter
    assert crl(platform, this_update=CRL_FROM + dt.timedelta(microseconds=999)).tbs == first.tbs
    assert crl(platform, (1,)).tbs != first.tbs
    assert crl(platform, next_update=CRL_UNTIL + dt.timedelta(seconds=1)).tbs != first.tbs
    vlek_list = RevocationList.from_der(platform.crl(Product.MILAN, "vlek", revoked=(3, 1),
                                                     this_update=CRL_FROM, next_update=CRL_UNTIL))
    assert vlek_list.tbs == first.tbs  # one issuer for both lists, as at AMD
    ark = AmdCertificate.from_der(platform.ca_der(Product.MILAN, "ark"))
    first.verify_signed_by(ark)
    other = crl(fresh)
    with pytest.raises(NotAnEnclaveError, match=r"PUBLIC test key.*found .*fresh test key"):
        other.verify_signed_by(ark)


def test_crl_times_from_2050_are_generalized_time(platform: SoftwarePlatform) -> None:
    start = dt.datetime(2049, 12, 31, tzinfo=dt.timezone.utc)
    end = dt.datetime(2050, 1, 2, tzinfo=dt.timezone.utc)
    crl_der = platform.crl(Product.MILAN, this_update=start, next_update=end)
    assert b"\x17\x0d491231000000Z" in crl_der and b"\x18\x0f20500102000000Z" in crl_der
    crl = RevocationList.from_der(crl_der)
    assert (crl.this_update, crl.next_update) == (start, end)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"family": "ask"}, "family: expected 'vcek' or 'vlek'"),
    ({"this_update": NOW.replace(tzinfo=None)}, "this_update: expected a timezone-aware"),
    ({"next_update": CRL_UNTIL.replace(tzinfo=None)}, "next_update: expected a timezone-aware"),
    ({"next_update": CRL_FROM}, "next_update: expected after this_update"),
    ({"revoked": (5, -1)}, "revoked: expected non-negative integer serials"),
    ({"revoked": (True,)}, "revoked: expected non-negative integer serials"),
])
def test_crl_refuses_bad_input(kwargs: dict[str, Any], message: str, platform: SoftwarePlatform) -> None:
    args: dict[str, Any] = {"family": "vcek", "this_update": CRL_FROM, "next_update": CRL_UNTIL} | kwargs
    with pytest.raises(ValueError, match=message):
        platform.crl(Product.MILAN, **args)


# --- test keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("product", list(Product))
def test_shared_test_keys_are_the_committed_public_files(product: Product,
                                                         platform: SoftwarePlatform) -> None:
    """The default hierarchy is the committed files, which say that their keys are public."""
    path = SRC / "testing" / "data" / f"public-test-keys-{product.value.lower()}.pem"
    text = path.read_text()
    assert text.startswith("BlindBox PUBLIC TEST KEYS - NOT SECRET, NOT AMD.")
    assert platform.shared_test_keys and platform.hierarchy is _keys.shared_hierarchy()
    assert _keys.export_pem(platform.hierarchy, product) == text  # nothing else is loaded
    roots = platform.roots_pem(product)
    assert roots.startswith("# BlindBox PUBLIC TEST KEYS - NOT SECRET, NOT AMD.")
    assert [c.der for c in load_all(roots)] == [platform.ca_der(product, r) for r in ("ark", "ask", "asvk")]


def test_shared_roots_are_the_same_in_another_process(roots: str) -> None:
    code = ("import hashlib; from blindbox.testing import SoftwarePlatform; "
            "print(hashlib.sha256(SoftwarePlatform().roots_pem().encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip() == hashlib.sha256(roots.encode()).hexdigest()


def test_committed_keys_that_do_not_match_their_certificates_are_refused(tmp_path: Path) -> None:
    blocks = [m.group(0) for m in _keys._BLOCK.finditer(
        (SRC / "testing" / "data" / "public-test-keys-milan.pem").read_bytes())]
    swapped = b"".join([blocks[2], blocks[1], *blocks[2:]])  # the ASK key above the ARK certificate
    with pytest.raises(ValueError, match="expected the ARK key and its certificate"):
        _keys._parse_shared("public-test-keys-milan.pem", swapped, Product.MILAN)
    with pytest.raises(ValueError, match="found 5 PEM blocks"):
        _keys._parse_shared("public-test-keys-milan.pem", b"".join(blocks[:5]), Product.MILAN)


def test_fresh_platforms_have_their_own_keys_and_refuse_each_others_reports(
    platform: SoftwarePlatform, fresh: SoftwarePlatform
) -> None:
    assert not fresh.shared_test_keys
    assert fresh.roots_pem(Product.MILAN).startswith("# BlindBox TEST ROOTS - NOT AMD.")
    fresh_ark = AmdCertificate.from_der(fresh.ca_der(Product.MILAN, "ark"))
    assert fresh_ark.spki != AmdCertificate.from_der(platform.ca_der(Product.MILAN, "ark")).spki
    assert names_of(fresh_ark)["OU"] == "simulated SEV-SNP, fresh test key"
    fields = ReportFields()
    assert fresh.vcek_key(Product.MILAN, fields.chip_id, fields.reported_tcb).private_numbers() != \
        platform.vcek_key(Product.MILAN, fields.chip_id, fields.reported_tcb).private_numbers()
    mine, theirs = platform.sign(fields), fresh.sign(fields)
    verify_report(theirs.raw, certificates=theirs.certificates, roots=fresh.roots_pem(Product.MILAN), at=NOW)
    for signed, roots in ((mine, fresh.roots_pem(Product.MILAN)), (theirs, platform.roots_pem())):
        with pytest.raises(NotAnEnclaveError, match="caller-supplied roots"):
            verify_report(signed.raw, certificates=signed.certificates, roots=roots, at=NOW)


def test_leaf_keys_and_certificates_are_made_once_per_hierarchy(platform: SoftwarePlatform) -> None:
    fields = ReportFields(product=Product.TURIN)
    vcek = platform.vcek_der(Product.TURIN, fields.chip_id, fields.reported_tcb)
    assert SoftwarePlatform().vcek_der(Product.TURIN, fields.chip_id, fields.reported_tcb) == vcek
    key = platform.vcek_key(Product.TURIN, fields.chip_id, fields.reported_tcb)
    assert AmdCertificate.from_der(vcek).public_key().public_numbers() == key.public_key().public_numbers()
    other_tcb = TcbVersion.from_components(fmc=1, bootloader=2, tee=3, snp=4, microcode=5)
    assert platform.vcek_der(Product.TURIN, fields.chip_id, other_tcb) != vcek


def test_the_package_does_no_rsa_arithmetic() -> None:
    """Keys and signatures come from cryptography: no modular exponentiation or inverse anywhere."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "pow"
                    and len(node.args) == 3):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
    assert {name for name in vars(_keys) if "prime" in name.lower() or "pss" in name.lower()} == set()


# --- isolation ------------------------------------------------------------------------------------


def test_nothing_outside_testing_imports_it() -> None:
    """No verification path imports the test kit; only the CLI's demo and fixture commands and
    ``serve --backend simulator`` load it, lazily, inside the functions that run those commands."""
    allowed = {("cli.py", "_cmd_demo"), ("cli.py", "_cmd_fixture_create"), ("cli.py", "_cmd_fixture_serve"),
               ("_serve_cli.py", "_backend")}
    offenders: list[str] = []
    lazy: set[tuple[str, str]] = set()
    for path in SRC.rglob("*.py"):
        if "testing" in path.relative_to(SRC).parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        scopes = {id(inner): fn.name for fn in ast.walk(tree)
                  if isinstance(fn, ast.FunctionDef) for inner in ast.walk(fn)}
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            if any(m == "blindbox.testing" or m.startswith("blindbox.testing.") for m in modules):
                where = (str(path.relative_to(SRC)), scopes.get(id(node), "<module>"))
                if where in allowed:
                    lazy.add(where)
                else:
                    offenders.append(f"{where[0]}:{node.lineno} in {where[1]}")
    assert offenders == []
    assert lazy == allowed  # these commands really are the ones that load it
