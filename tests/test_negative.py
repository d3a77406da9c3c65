"""Everything that is not genuine AMD evidence raises NotAnEnclaveError (and ``blindbox verify`` exits 1).

Real reports and certificates are altered one thing at a time, so each test shows
one check doing its job; a forged AMD-look-alike chain shows that the root pin,
not some accident of the forgery, is what refuses it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ObjectIdentifier

from blindbox.cli import main
from blindbox.errors import NotAnEnclaveError
from blindbox.snp import AmdCertificate, Product, SigningKey, amd_roots, verify_report
from blindbox.snp.certificate import load_all
from blindbox.snp.chain import verify_chain
from blindbox.snp.extensions import ARC, OID_BL_SPL, OID_HWID, OID_SNP_SPL, OID_UCODE_SPL
from blindbox.snp.report import REPORT_SIZE, SIGNED_LENGTH

from .conftest import VECTORS, ReportVector, cert_valid_at, report_vectors

VECTORS_E2E = report_vectors()
BY_NAME = {v.name: v for v in VECTORS_E2E}
UTC = datetime.timezone.utc
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)


def _read(rel: str) -> bytes:
    return (VECTORS / rel).read_bytes()


def _ids(vectors: list[ReportVector]) -> list[str]:
    return [v.name for v in vectors]


def _patch(report: bytes, offset: int, data: bytes) -> bytes:
    return report[:offset] + data + report[offset + len(data) :]


def _flip(report: bytes, offset: int, bit: int) -> bytes:
    return _patch(report, offset, bytes([report[offset] ^ (1 << bit)]))


def _pem(*certs: AmdCertificate) -> bytes:
    return b"".join(
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(c.der) + b"-----END CERTIFICATE-----\n"
        for c in certs
    )


GSG = BY_NAME["milan_gsg_v2_vcek"]
TRUSTEE = BY_NAME["milan_trustee_v2_vcek"]
VIRTEE = BY_NAME["milan_virtee-sev_v2_vcek"]
OAK_MILAN = BY_NAME["milan_oak-oc-release_v3_vcek"]
GENOA = BY_NAME["genoa_oak-oc_v5_vcek"]
TURIN = BY_NAME["turin_oak-oc_v5_vcek"]
VLEK_US = BY_NAME["milan_aws-trustee_v3_vlek"]
VLEK_EU = BY_NAME["milan_aws-constellation_v3_vlek"]
NOKEY_REPORT = _read("reports/milan_aws-constellation-snp_v2_vlek_NOKEY.bin")
MISMATCH_VLEK = _read("negative/milan_vlek_us-east-2_constellation_MISMATCH.der")
TURIN_NOREPORT_VCEK = _read("certs/turin_vcek_1e550a8ee5cf9f4d_NOREPORT.der")
MILAN_CHAIN = load_all(_read("ca/milan/cert_chain_vcek.pem"))
GENOA_CHAIN = load_all(_read("ca/genoa/cert_chain_vcek.pem"))
GENOA_ASK = next(c for c in GENOA_CHAIN if c.common_name == "SEV-Genoa")
MILAN_ASK = next(c for c in MILAN_CHAIN if c.common_name == "SEV-Milan")


# --- One table of negative cases, run through the API and through `blindbox verify` --------------


@dataclasses.dataclass(frozen=True)
class Case:
    """A report with a signing certificate that must be refused (``match``: part of the message)."""

    id: str
    report: bytes
    cert: bytes | None
    at: datetime.datetime
    match: str
    cli_match: str | None = None  # when the CLI, which files the certificate by its CN, says it otherwise


def _layout_cases() -> list[Case]:
    base, cert, at = OAK_MILAN.report, OAK_MILAN.cert, OAK_MILAN.at
    cases = []
    for version in (0, 1, 6, 7, 0xFFFFFFFF):
        cases.append(
            Case(
                f"version-{version}",
                _patch(base, 0x000, version.to_bytes(4, "little")),
                cert,
                at,
                match="version",
            )
        )
    for algo in (0, 2):
        cases.append(
            Case(
                f"signature-algo-{algo}",
                _patch(base, 0x034, algo.to_bytes(4, "little")),
                cert,
                at,
                match="signature_algo",
            )
        )
    for key in (2, 6, 7):
        cases.append(
            Case(
                f"signing-key-{key}",
                _patch(base, 0x048, (key << 2).to_bytes(4, "little")),
                cert,
                at,
                match="signing_key",
            )
        )
    policy = int.from_bytes(base[0x008:0x010], "little")
    cases.append(
        Case(
            "policy-bit-17-clear",
            _patch(base, 0x008, (policy & ~(1 << 17)).to_bytes(8, "little")),
            cert,
            at,
            match="reserved bit 17",
        )
    )
    cases.append(
        Case(
            "policy-bit-26-set",
            _patch(base, 0x008, (policy | 1 << 26).to_bytes(8, "little")),
            cert,
            at,
            match="bits 63:26",
        )
    )
    for length in (0, 1, SIGNED_LENGTH, REPORT_SIZE - 1):
        cases.append(Case(f"truncated-{length}", base[:length], cert, at, match="expected 1184 bytes"))
    for extra in (1, 20):
        cases.append(
            Case(
                f"over-long-{REPORT_SIZE + extra}", base + bytes(extra), cert, at, match="expected 1184 bytes"
            )
        )
    return cases


def _signature_cases() -> list[Case]:
    """Damage to r, s, their must-be-zero upper 24 bytes, and the signature tail."""
    base, cert, at = GENOA.report, GENOA.cert, GENOA.at
    cases = []
    for name, start in (("r", 0x2A0), ("s", 0x2E8)):
        for k in (0, 23, 46):
            cases.append(
                Case(
                    f"{name}-byte-{k}-flipped",
                    _flip(base, start + k, k % 8),
                    cert,
                    at,
                    match="report signature",
                )
            )
        for k in (48, 60, 71):
            cases.append(
                Case(
                    f"{name}-upper-byte-{k}-set",
                    _flip(base, start + k, 0),
                    cert,
                    at,
                    match=f"signature.{name} upper 24 bytes",
                )
            )
        cases.append(Case(f"{name}-zero", _patch(base, start, bytes(72)), cert, at, match="0 <"))
        cases.append(
            Case(
                f"{name}-equals-n",
                _patch(base, start, P384_ORDER.to_bytes(72, "little")),
                cert,
                at,
                match=">= n",
            )
        )
    for offset in (0x330, 0x400, REPORT_SIZE - 1):
        cases.append(
            Case(f"tail-0x{offset:03x}-set", _flip(base, offset, 3), cert, at, match="signature tail")
        )
    return cases


def _certificate_cases() -> list[Case]:
    mismatch_at = cert_valid_at(MISMATCH_VLEK)
    turin_noreport_at = cert_valid_at(TURIN_NOREPORT_VCEK)
    cases = [
        # negative/: synthetic trustee VCEKs (hwID 00..3f, ASK signature does not verify).
        Case(
            "trustee-invalid-legacy-vcek",
            TRUSTEE.report,
            _read("negative/milan_vcek_invalid-legacy_trustee.der"),
            TRUSTEE.at,
            match="certificate TCB",
        ),
        Case(
            "trustee-invalid-new-vcek",
            TRUSTEE.report,
            _read("negative/milan_vcek_invalid-new_trustee.der"),
            TRUSTEE.at,
            match="certificate TCB",
        ),
        # negative/: genuine VLEK, right TCB, chain verifies, but a different key.
        Case(
            "mismatch-vlek-right-tcb-wrong-key",
            NOKEY_REPORT,
            MISMATCH_VLEK,
            mismatch_at,
            match="report signature",
        ),
        Case(
            "nokey-report-with-another-vlek", NOKEY_REPORT, VLEK_US.cert, VLEK_US.at, match="certificate TCB"
        ),
        # Another chip's VCEK with the same TCB (bl3 tee0 snp8 uc115): the hwID check refuses it.
        Case("other-chip-vcek-same-tcb", TRUSTEE.report, VIRTEE.cert, TRUSTEE.at, match="hwID"),
        # Another VLEK with the same TCB (bl4 tee0 snp24 uc217): no hwID in VLEKs, the signature refuses it.
        Case("other-vlek-same-tcb", VLEK_US.report, VLEK_EU.cert, VLEK_US.at, match="report signature"),
        # VCEKs whose TCB differs from the report's reported_tcb.
        Case(
            "turin-vcek-other-tcb",
            TURIN.report,
            TURIN_NOREPORT_VCEK,
            turin_noreport_at,
            match="certificate TCB",
        ),
        Case(
            "milan-vcek-other-tcb",
            GSG.report,
            BY_NAME["milan_azure-constellation_v2_vcek"].cert,
            GSG.at,
            match="certificate TCB",
        ),
        # Cross-product and key-kind confusion.
        Case("v2-milan-report-genoa-vcek", GSG.report, GENOA.cert, GENOA.at, match="certificate TCB"),
        Case("v3-milan-report-genoa-vcek", OAK_MILAN.report, GENOA.cert, GENOA.at, match="productName"),
        Case(
            "vlek-report-with-a-vcek",
            VLEK_US.report,
            OAK_MILAN.cert,
            VLEK_US.at,
            match="certificate TCB",
            cli_match="signed by a VLEK, found only a VCEK",
        ),
        Case(
            "vcek-report-with-a-vlek",
            OAK_MILAN.report,
            VLEK_US.cert,
            VLEK_US.at,
            match="certificate TCB",
            cli_match="signed by a VCEK, found only a VLEK",
        ),
        Case(
            "ask-presented-as-vcek",
            OAK_MILAN.report,
            MILAN_ASK.der,
            OAK_MILAN.at,
            match="unexpected critical extension",
        ),
        # Validity.
        Case(
            "vcek-expired",
            OAK_MILAN.report,
            OAK_MILAN.cert,
            AmdCertificate.from_der(OAK_MILAN.cert).not_after + datetime.timedelta(seconds=1),
            match="expected valid at",
        ),
        Case(
            "vcek-not-yet-valid",
            OAK_MILAN.report,
            OAK_MILAN.cert,
            AmdCertificate.from_der(OAK_MILAN.cert).not_before - datetime.timedelta(seconds=1),
            match="expected valid at",
        ),
        Case(
            "vlek-expired",
            VLEK_US.report,
            VLEK_US.cert,
            datetime.datetime(2025, 12, 11, tzinfo=UTC),
            match="expected valid at",
        ),
        Case(
            "vlek-not-yet-valid",
            VLEK_US.report,
            VLEK_US.cert,
            datetime.datetime(2024, 12, 1, tzinfo=UTC),
            match="expected valid at",
        ),
        # Garbage in place of a certificate.
        Case("certificate-empty", OAK_MILAN.report, b"", OAK_MILAN.at, match="expected exactly one"),
        Case(
            "certificate-truncated",
            OAK_MILAN.report,
            OAK_MILAN.cert[:-1],
            OAK_MILAN.at,
            match="malformed DER",
        ),
        Case(
            "certificate-is-a-report", OAK_MILAN.report, OAK_MILAN.report, OAK_MILAN.at, match="malformed DER"
        ),
    ]
    return cases


CASES = _layout_cases() + _signature_cases() + _certificate_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_negative_case_raises_not_an_enclave(case: Case) -> None:
    with pytest.raises(NotAnEnclaveError, match=case.match) as info:
        verify_report(case.report, certificates=case.cert, at=case.at)
    assert type(info.value) is NotAnEnclaveError
    assert str(info.value)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_negative_case_makes_the_cli_exit_1(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.bin"
    report.write_bytes(case.report)
    argv = ["verify", str(report), "--at", case.at.isoformat()]
    if case.cert is not None:
        (tmp_path / "cert.der").write_bytes(case.cert)
        argv += ["--cert", str(tmp_path / "cert.der")]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("blindbox verify: NotAnEnclaveError: ")
    assert (case.cli_match or case.match) in err


def test_invalid_trustee_vceks_fail_the_chain_itself() -> None:
    """Their TCB also differs from any report; show that the ASK signature check alone refuses them."""
    for name in ("milan_vcek_invalid-legacy_trustee.der", "milan_vcek_invalid-new_trustee.der"):
        leaf = AmdCertificate.from_der(_read(f"negative/{name}"))
        assert leaf.issuer_common_name == "SEV-Milan"
        with pytest.raises(NotAnEnclaveError, match="signature does not verify"):
            verify_chain(
                leaf,
                signing_key=SigningKey.VCEK,
                product=Product.MILAN,
                roots=amd_roots(),
                intermediates=[MILAN_ASK],
                at=cert_valid_at(leaf.der),
            )


def test_genuine_mismatch_vlek_has_a_valid_chain() -> None:
    """So the MISMATCH case above is refused by the report signature, not by its chain."""
    leaf = AmdCertificate.from_der(MISMATCH_VLEK)
    chain = verify_chain(
        leaf,
        signing_key=SigningKey.VLEK,
        product=Product.MILAN,
        roots=amd_roots(),
        at=cert_valid_at(MISMATCH_VLEK),
    )
    assert chain.intermediate.common_name == "SEV-VLEK-Milan"


# --- Bit flips in the signed area of every real report ---------------------------------------------

#: (offset, field) spread over [0, 0x2A0): every field, reserved ranges included.
FLIP_OFFSETS: tuple[tuple[int, str], ...] = (
    (0x000, "version"),
    (0x004, "guest_svn"),
    (0x008, "policy.abi_minor"),
    (0x00A, "policy.bits16-23"),
    (0x00B, "policy.mbz"),
    (0x010, "family_id"),
    (0x020, "image_id"),
    (0x030, "vmpl"),
    (0x034, "signature_algo"),
    (0x038, "current_tcb"),
    (0x03B, "current_tcb.reserved"),
    (0x040, "platform_info"),
    (0x048, "signer_info"),
    (0x04C, "reserved_after_signer_info"),
    (0x050, "report_data"),
    (0x08F, "report_data.last"),
    (0x090, "measurement"),
    (0x0BF, "measurement.last"),
    (0x0C0, "host_data"),
    (0x0E0, "id_key_digest"),
    (0x110, "author_key_digest"),
    (0x140, "report_id"),
    (0x160, "report_id_ma"),
    (0x180, "reported_tcb.byte0"),
    (0x186, "reported_tcb.byte6"),
    (0x187, "reported_tcb.microcode"),
    (0x188, "cpuid.family"),
    (0x189, "cpuid.model"),
    (0x18A, "cpuid.stepping"),
    (0x18B, "reserved_after_cpuid"),
    (0x1A0, "chip_id"),
    (0x1DF, "chip_id.last"),
    (0x1E0, "committed_tcb"),
    (0x1E8, "current_version.build"),
    (0x1EB, "reserved_after_current_version"),
    (0x1EC, "committed_version"),
    (0x1EF, "reserved_after_committed_version"),
    (0x1F0, "launch_tcb"),
    (0x1F8, "launch_mit_vector"),
    (0x200, "current_mit_vector"),
    (0x208, "reserved"),
    (0x250, "reserved.middle"),
    (0x29F, "last_signed_byte"),
)
#: Fields outside any parse-time rule: a flip there can only be caught by the signature.
SIGNATURE_ONLY = {
    "report_data",
    "report_data.last",
    "measurement",
    "measurement.last",
    "host_data",
    "id_key_digest",
    "family_id",
    "image_id",
    "guest_svn",
    "report_id",
    "report_id_ma",
    "author_key_digest",
}


@pytest.mark.parametrize("vector", VECTORS_E2E, ids=_ids(VECTORS_E2E))
def test_every_signed_bit_flip_is_refused(vector: ReportVector) -> None:
    verify_report(vector.report, certificates=vector.cert, at=vector.at)  # the unflipped report is fine
    for i, (offset, field) in enumerate(FLIP_OFFSETS):
        flipped = _flip(vector.report, offset, (offset + i) % 8)
        with pytest.raises(NotAnEnclaveError) as info:
            verify_report(flipped, certificates=vector.cert, at=vector.at)
        assert type(info.value) is NotAnEnclaveError, field
        if field in SIGNATURE_ONLY:
            assert "report signature" in str(info.value), field


def test_bit_flips_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "vcek.der"
    cert.write_bytes(GSG.cert)
    for offset, _ in FLIP_OFFSETS[::6]:
        report = tmp_path / f"flip-{offset:03x}.bin"
        report.write_bytes(_flip(GSG.report, offset, 0))
        assert main(["verify", str(report), "--cert", str(cert), "--at", GSG.at.isoformat()]) == 1
        assert capsys.readouterr().err.startswith("blindbox verify: NotAnEnclaveError: ")


# --- Regressions found while fuzzing certificates (fixed in snp/certificate.py) --------------------


def _mutated_gsg_vcek(mutate: Callable[[bytes], bytes]) -> bytes:
    mutated = mutate(GSG.cert)
    assert mutated != GSG.cert and len(mutated) == len(GSG.cert)
    return mutated


@pytest.mark.parametrize("curve_arc", [0x01, 0x0A, 0x21, 0x23])
def test_vcek_with_another_curve_is_refused(curve_arc: int) -> None:
    """An unsupported curve used to escape as cryptography's UnsupportedAlgorithm."""
    p384 = bytes.fromhex("06052b81040022")
    vcek = _mutated_gsg_vcek(lambda d: d.replace(p384, p384[:-1] + bytes([curve_arc])))
    with pytest.raises(NotAnEnclaveError, match="public key"):
        verify_report(GSG.report, certificates=vcek, at=GSG.at)


@pytest.mark.parametrize("bad_date", [b"221324", b"220931", b"220229"])
def test_vcek_with_an_impossible_date_is_refused(bad_date: bytes) -> None:
    """An impossible date used to escape as a plain ValueError from strptime."""
    vcek = _mutated_gsg_vcek(lambda d: d.replace(b"220924", bad_date, 1))
    with pytest.raises(NotAnEnclaveError, match=r"malformed DER.*invalid time"):
        verify_report(GSG.report, certificates=vcek, at=GSG.at)


def test_vcek_with_an_empty_name_attribute_is_refused() -> None:
    """An empty AttributeTypeAndValue used to escape as a ValueError (tuple unpacking)."""
    ou = bytes.fromhex("060355040b")  # OID 2.5.4.11 (organizationalUnitName)
    start = GSG.cert.index(ou) - 2  # the SEQUENCE header of the first issuer attribute
    assert GSG.cert[start] == 0x30
    vcek = _mutated_gsg_vcek(lambda d: d[: start + 1] + b"\x00" + d[start + 2 :])
    with pytest.raises(NotAnEnclaveError, match="AttributeTypeAndValue"):
        verify_report(GSG.report, certificates=vcek, at=GSG.at)


# --- A Milan VCEK with the Genoa chain -------------------------------------------------------------


def test_milan_vcek_with_genoa_roots_and_ask_is_refused() -> None:
    genoa_roots = _pem(*GENOA_CHAIN)
    with pytest.raises(NotAnEnclaveError, match="no anchor for Milan"):
        verify_report(
            OAK_MILAN.report,
            certificates={"vcek": OAK_MILAN.cert, "ask": GENOA_ASK.der},
            roots=genoa_roots,
            at=OAK_MILAN.at,
        )
    # Even with the product question taken away (a v2 report, product from the VCEK), Genoa's roots
    # cannot anchor a Milan VCEK.
    with pytest.raises(NotAnEnclaveError, match="no anchor for Milan"):
        verify_report(
            GSG.report, certificates={"vcek": GSG.cert, "ask": GENOA_ASK.der}, roots=genoa_roots, at=GSG.at
        )


def test_a_stray_genoa_ask_in_the_evidence_does_not_change_the_milan_chain() -> None:
    """Evidence certificates are only candidates: with AMD's roots, the pinned Milan ASK is used."""
    verified = verify_report(
        OAK_MILAN.report, certificates={"vcek": OAK_MILAN.cert, "ask": GENOA_ASK.der}, at=OAK_MILAN.at
    )
    assert verified.chain.intermediate.der == MILAN_ASK.der


def test_product_hint_that_contradicts_the_report_is_refused() -> None:
    with pytest.raises(NotAnEnclaveError, match="product"):
        verify_report(OAK_MILAN.report, certificates=OAK_MILAN.cert, at=OAK_MILAN.at, product=Product.GENOA)
    with pytest.raises(NotAnEnclaveError, match="productName"):
        verify_report(GSG.report, certificates=GSG.cert, at=GSG.at, product=Product.GENOA)


# --- A forged chain: self-made ARK and ASK named like AMD's, re-issued VCEK, re-signed report ------


def _name(cert: AmdCertificate) -> x509.Name:
    return x509.Name([x509.NameAttribute(ObjectIdentifier(oid), value) for oid, value in cert.subject])


def _der_integer(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8 or 1, "big")
    return bytes([0x02, len(body)]) + body


PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclasses.dataclass(frozen=True)
class Forgery:
    ark: x509.Certificate
    ask: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    vcek_key: ec.EllipticCurvePrivateKey
    template: AmdCertificate

    @property
    def roots_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.ark, self.ask))

    def vcek(self, overrides: Mapping[str, bytes] | None = None, template: bytes | None = None) -> bytes:
        """Re-issue a real VCEK/VLEK (same names, dates, AMD extensions) for our own key."""
        real = AmdCertificate.from_der(template) if template is not None else self.template
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(real))
            .issuer_name(self.ask.subject)
            .public_key(self.vcek_key.public_key())
            .serial_number(1)
            .not_valid_before(real.not_before)
            .not_valid_after(real.not_after)
        )
        for ext in real.extensions:
            if ext.oid.startswith(ARC + "."):
                value = (overrides or {}).get(ext.oid, ext.value)
                builder = builder.add_extension(
                    x509.UnrecognizedExtension(ObjectIdentifier(ext.oid), value), critical=False
                )
        cert = builder.sign(self.ask_key, hashes.SHA384(), rsa_padding=PSS)
        return cert.public_bytes(serialization.Encoding.DER)

    def sign(self, report: bytes) -> bytes:
        signed = report[:SIGNED_LENGTH]
        r, s = decode_dss_signature(self.vcek_key.sign(signed, ec.ECDSA(hashes.SHA384())))
        out = signed + r.to_bytes(72, "little") + s.to_bytes(72, "little")
        return out + bytes(REPORT_SIZE - len(out))


@pytest.fixture(scope="module")
def forgery() -> Forgery:
    real_ark = next(c for c in MILAN_CHAIN if c.common_name == "ARK-Milan")
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def ca(
        subject: x509.Name,
        issuer: x509.Name,
        key: rsa.RSAPrivateKey,
        signer: rsa.RSAPrivateKey,
        template: AmdCertificate,
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(template.not_before)
            .not_valid_after(template.not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .sign(signer, hashes.SHA384(), rsa_padding=PSS)
        )

    ark = ca(_name(real_ark), _name(real_ark), ark_key, ark_key, real_ark)
    ask = ca(_name(MILAN_ASK), ark.subject, ask_key, ark_key, MILAN_ASK)
    return Forgery(
        ark, ask, ask_key, ec.generate_private_key(ec.SECP384R1()), AmdCertificate.from_der(GSG.cert)
    )


def test_forged_chain_is_named_like_amds(forgery: Forgery) -> None:
    ask = AmdCertificate.from_der(forgery.ask.public_bytes(serialization.Encoding.DER))
    vcek = AmdCertificate.from_der(forgery.vcek())
    assert ask.common_name == "SEV-Milan" and ask.issuer_common_name == "ARK-Milan"
    assert vcek.common_name == "SEV-VCEK" and vcek.issuer_common_name == "SEV-Milan"
    assert ask.der != MILAN_ASK.der


def test_forged_chain_is_refused_by_the_pinned_roots(forgery: Forgery) -> None:
    report, vcek = forgery.sign(GSG.report), forgery.vcek()
    ask = forgery.ask.public_bytes(serialization.Encoding.DER)
    ark = forgery.ark.public_bytes(serialization.Encoding.DER)
    for certificates in (vcek, {"vcek": vcek, "ask": ask}, {"vcek": vcek, "ask": ask, "ark": ark}):
        with pytest.raises(NotAnEnclaveError, match="expected a chain to AMD's pinned roots"):
            verify_report(report, certificates=certificates, at=GSG.at)


def test_forged_chain_verifies_when_its_root_is_passed_explicitly(forgery: Forgery) -> None:
    """Proves that the refusal above is the root pin: everything else about the forgery is valid."""
    verified = verify_report(
        forgery.sign(GSG.report), certificates=forgery.vcek(), roots=forgery.roots_pem, at=GSG.at
    )
    assert verified.roots_are_amd is False
    assert verified.report.measurement == GSG.report[0x090:0x0C0]


def test_forged_chain_cli_exit_1(
    forgery: Forgery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "report.bin").write_bytes(forgery.sign(GSG.report))
    (tmp_path / "vcek.der").write_bytes(forgery.vcek())
    (tmp_path / "chain.pem").write_bytes(forgery.roots_pem)
    argv = [
        "verify",
        str(tmp_path / "report.bin"),
        "--cert",
        str(tmp_path / "vcek.der"),
        "--chain",
        str(tmp_path / "chain.pem"),
        "--at",
        GSG.at.isoformat(),
    ]
    assert main(argv) == 1
    assert "expected a chain to AMD's pinned roots" in capsys.readouterr().err


def test_same_chip_vcek_with_a_different_tcb_is_refused(forgery: Forgery) -> None:
    """The only VCEK difference is snpSPL (5 -> 6): the TCB check alone refuses it."""
    report = forgery.sign(GSG.report)
    other_tcb = forgery.vcek({OID_SNP_SPL: _der_integer(6)})
    with pytest.raises(NotAnEnclaveError, match="certificate TCB: snp SPL 6 does not equal"):
        verify_report(report, certificates=other_tcb, roots=forgery.roots_pem, at=GSG.at)


def test_same_tcb_vcek_for_another_chip_is_refused(forgery: Forgery) -> None:
    """The only VCEK difference is hwID: the chip-id check alone refuses it."""
    report = forgery.sign(GSG.report)
    other_chip = forgery.vcek({OID_HWID: bytes(64)})
    with pytest.raises(NotAnEnclaveError, match="certificate hwID"):
        verify_report(report, certificates=other_chip, roots=forgery.roots_pem, at=GSG.at)


def _spl_overrides(report: bytes) -> dict[str, bytes]:
    """AMD extension values that make a leaf's TCB equal this (Milan) report's reported_tcb."""
    tcb = report[0x180:0x188]
    return {
        OID_BL_SPL: _der_integer(tcb[0]),
        OID_SNP_SPL: _der_integer(tcb[6]),
        OID_UCODE_SPL: _der_integer(tcb[7]),
    }


def test_vlek_signed_report_with_a_vcek_of_the_right_tcb_is_refused(forgery: Forgery) -> None:
    report = forgery.sign(VLEK_US.report)
    vcek = forgery.vcek(_spl_overrides(VLEK_US.report))
    with pytest.raises(NotAnEnclaveError, match=r"csp_id is missing \(VLEK\)"):
        verify_report(report, certificates=vcek, roots=forgery.roots_pem, at=GSG.at)
    with pytest.raises(NotAnEnclaveError, match="signed by a VLEK, found only a VCEK"):
        verify_report(report, certificates={"vcek": vcek}, roots=forgery.roots_pem, at=GSG.at)


def test_vcek_signed_report_with_a_vlek_of_the_right_tcb_is_refused(forgery: Forgery) -> None:
    report = forgery.sign(GSG.report)
    vlek = forgery.vcek(_spl_overrides(GSG.report), template=VLEK_US.cert)
    assert AmdCertificate.from_der(vlek).common_name == "SEV-VLEK"
    with pytest.raises(NotAnEnclaveError, match="a VCEK must not carry csp_id"):
        verify_report(report, certificates=vlek, roots=forgery.roots_pem, at=VLEK_US.at)
    with pytest.raises(NotAnEnclaveError, match="signed by a VCEK, found only a VLEK"):
        verify_report(report, certificates={"vlek": vlek}, roots=forgery.roots_pem, at=VLEK_US.at)
