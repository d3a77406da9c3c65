"""Every genuine report in the vector set verifies, and parses to the values in index.json."""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

import pytest

from blindbox.errors import NotAnEnclaveError
from blindbox.snp import AmdCertificate, AttestationReport, Product, SigningKey, amd_roots, verify_report
from blindbox.snp.certificate import load_all
from blindbox.snp.report import REPORT_SIZE

from .conftest import VECTORS, ReportVector, cert_valid_at, report_vectors

VECTORS_E2E = report_vectors()
UTC = datetime.timezone.utc
PEERS = VECTORS / "peers"
OMNE_VCEK = (PEERS / "omne-attest" / "kds_vcek.der").read_bytes()
GSG_VCEK = (VECTORS / "certs" / "milan_vcek_3ac3fe21e13fb099_bl2_tee0_snp5_uc68.der").read_bytes()
GSG_REPORT = (VECTORS / "reports" / "milan_gsg_v2_vcek.bin").read_bytes()


def _ids(vectors: list[ReportVector]) -> list[str]:
    return [v.name for v in vectors]


def assert_matches_index(report: AttestationReport, entry: dict[str, Any]) -> None:
    """The parsed report equals every field index.json records for it."""
    assert report.product is Product(entry["product"].capitalize())
    assert report.version == entry["report_version"]
    assert report.signing_key is SigningKey[entry["signing_key"]]
    assert report.policy.raw == int(entry["policy"], 16)
    assert report.vmpl == entry["vmpl"]
    assert str(report.current_version) == entry["current_fw"]
    assert report.measurement.hex() == entry["measurement"]
    assert report.chip_id.hex() == entry["chip_id"]
    assert report.report_data.hex() == entry["report_data"]
    assert report.host_data.hex() == entry["host_data"]
    assert report.platform_info.raw == int(entry["platform_info"], 16)
    assert report.reported_tcb.raw.hex() == entry["reported_tcb_hex"]
    assert report.reported_tcb.components() == entry["reported_tcb"]
    assert report.current_tcb.raw.hex() == entry["current_tcb_hex"]
    assert report.committed_tcb.raw.hex() == entry["committed_tcb_hex"]
    assert report.launch_tcb.raw.hex() == entry["launch_tcb_hex"]
    if entry["cpuid_fam_mod_step"] is None:
        assert report.cpuid is None
    else:
        assert report.cpuid is not None
        cpuid = bytes([report.cpuid.family, report.cpuid.model, report.cpuid.stepping])
        assert cpuid.hex() == entry["cpuid_fam_mod_step"]


def test_vector_set_is_complete() -> None:
    """Guard against a silently shrunken vector set: all three products and both key kinds."""
    assert len(VECTORS_E2E) >= 20
    assert {v.entry["product"] for v in VECTORS_E2E} == {"milan", "genoa", "turin"}
    assert {v.entry["signing_key"] for v in VECTORS_E2E} == {"VCEK", "VLEK"}
    assert {v.entry["report_version"] for v in VECTORS_E2E} == {2, 3, 5}


@pytest.mark.parametrize("vector", VECTORS_E2E, ids=_ids(VECTORS_E2E))
def test_real_report_verifies_with_its_certificate(vector: ReportVector) -> None:
    assert hashlib.sha256(vector.report).hexdigest() == vector.entry["sha256"]
    verified = verify_report(vector.report, certificates=vector.cert, at=vector.at)
    assert_matches_index(verified.report, vector.entry)
    assert verified.product is verified.report.product
    assert verified.roots_are_amd is True
    assert verified.revocation_checked is False
    assert verified.verified_at == vector.at
    assert verified.certificate.der == vector.cert
    assert verified.report.raw == vector.report
    ext = vector.entry["key_cert_ext"]
    assert verified.extensions.spls() == {
        **({"fmc": ext["fmcSPL"]} if ext["fmcSPL"] is not None else {}),
        "bootloader": ext["blSPL"],
        "tee": ext["teeSPL"],
        "snp": ext["snpSPL"],
        "microcode": ext["ucodeSPL"],
    }
    assert verified.extensions.product_name == ext["productName"]
    assert verified.extensions.csp_id == ext["csp_id"]
    assert (verified.extensions.hwid.hex() if verified.extensions.hwid else None) == ext["hwID"]
    # The chain ends in AMD's pinned ARK and ASK/ASVK for this product.
    roots = amd_roots()
    assert verified.chain.anchor.product is verified.product
    assert verified.chain.anchor in roots.anchors
    assert verified.chain.intermediate in roots.intermediates
    expected_ca = "SEV-VLEK-" if verified.signing_key is SigningKey.VLEK else "SEV-"
    assert verified.chain.intermediate.common_name == expected_ca + verified.product.value


@pytest.mark.parametrize("vector", VECTORS_E2E, ids=_ids(VECTORS_E2E))
def test_real_report_verifies_with_the_kds_chain_in_the_mapping(vector: ReportVector) -> None:
    """The shape of protocol v1 / the cert table: leaf + ASK/ASVK + ARK (the ARK is ignored)."""
    chain = load_all(vector.chain_path.read_bytes())
    ca = next(c for c in chain if c.subject_der != c.issuer_der)
    ark = next(c for c in chain if c.subject_der == c.issuer_der)
    leaf_name = vector.entry["signing_key"].lower()
    ca_name = "asvk" if leaf_name == "vlek" else "ask"
    certs = {leaf_name: vector.cert, ca_name: ca.der, "ark": ark.der}
    verified = verify_report(vector.report, certificates=certs, at=vector.at)
    assert verified.chain.intermediate.der == ca.der
    assert verified.chain.anchor.certificate.der == ark.der


@pytest.mark.parametrize("vector", VECTORS_E2E, ids=_ids(VECTORS_E2E))
def test_real_report_validity_window_is_enforced_at_its_edges(vector: ReportVector) -> None:
    cert = AmdCertificate.from_der(vector.cert)
    second = datetime.timedelta(seconds=1)
    for at in (cert.not_before, cert.not_after):
        assert verify_report(vector.report, certificates=vector.cert, at=at).verified_at == at
    for at in (cert.not_before - second, cert.not_after + second):
        with pytest.raises(NotAnEnclaveError, match="expected valid at"):
            verify_report(vector.report, certificates=vector.cert, at=at)


def test_v2_report_product_comes_from_the_certificate() -> None:
    """A v2 report has no CPUID: its product (and TCB layout) is resolved from productName."""
    assert AttestationReport.from_bytes(GSG_REPORT).product is None
    verified = verify_report(GSG_REPORT, certificates=GSG_VCEK, at=cert_valid_at(GSG_VCEK))
    assert verified.product is Product.MILAN
    assert verified.report.product is Product.MILAN
    explicit = verify_report(
        GSG_REPORT, certificates=GSG_VCEK, at=cert_valid_at(GSG_VCEK), product=Product.MILAN
    )
    assert explicit.report == verified.report


# --- Peer-package vectors (peers/SOURCES.md) -------------------------------------------------------


def test_omne_attest_report_verifies_with_its_newer_vcek() -> None:
    report = (PEERS / "omne-attest" / "attestation.bin").read_bytes()
    assert report == GSG_REPORT  # the same go-sev-guest file, byte for byte
    verified = verify_report(report, certificates=OMNE_VCEK, at=cert_valid_at(OMNE_VCEK))
    assert verified.product is Product.MILAN
    assert verified.report.measurement.hex() == (
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
    )
    assert verified.report.policy.debug is True  # policy 0xb0000: genuine, but a debug guest


def test_omne_peer_ships_amds_own_milan_ark_and_ask() -> None:
    roots = amd_roots()
    pinned = {c.certificate.der for c in roots.anchors} | {c.der for c in roots.intermediates}
    for name in ("milan_ark.der", "milan_ask.der"):
        assert AmdCertificate.from_der((PEERS / "omne-attest" / name).read_bytes()).der in pinned


def test_two_issues_of_one_vcek_verify_the_same_report() -> None:
    """Same chip, same TCB, same key, different certificate bytes and validity windows."""
    old, new = AmdCertificate.from_der(GSG_VCEK), AmdCertificate.from_der(OMNE_VCEK)
    assert old.der != new.der
    assert old.spki == new.spki
    assert new.not_before > old.not_before
    both_valid = new.not_before + datetime.timedelta(days=1)
    assert both_valid < old.not_after
    for cert in (GSG_VCEK, OMNE_VCEK):
        verified = verify_report(GSG_REPORT, certificates=cert, at=both_valid)
        assert verified.certificate.der == cert
    # Before the newer issue existed only the older certificate is valid.
    early = old.not_before + datetime.timedelta(days=1)
    verify_report(GSG_REPORT, certificates=GSG_VCEK, at=early)
    with pytest.raises(NotAnEnclaveError, match="expected valid at"):
        verify_report(GSG_REPORT, certificates=OMNE_VCEK, at=early)


def test_sev_attest_tool_genoa_v2_report_verifies_and_matches_virtees_parse() -> None:
    """Cross-check our parser against the independent serde-JSON of virtee ``sev`` 2.0.2."""
    report = (PEERS / "sev-attest-tool" / "sample_attestation.bin").read_bytes()
    vcek = (PEERS / "sev-attest-tool" / "sample_vcek.der").read_bytes()
    ref = json.loads((PEERS / "sev-attest-tool" / "sample_attestation.json").read_text())
    verified = verify_report(report, certificates=vcek, at=cert_valid_at(vcek))
    parsed = verified.report
    assert verified.product is Product.GENOA  # v2: product from the VCEK's productName
    assert parsed.version == ref["version"] == 2
    assert parsed.guest_svn == ref["guest_svn"]
    assert parsed.policy.raw == ref["policy"]
    assert parsed.vmpl == ref["vmpl"]
    assert parsed.signature_algo == ref["sig_algo"]
    assert parsed.platform_info.raw == ref["plat_info"]
    for name in (
        "family_id",
        "image_id",
        "report_data",
        "measurement",
        "host_data",
        "id_key_digest",
        "author_key_digest",
        "report_id",
        "report_id_ma",
        "chip_id",
    ):
        assert getattr(parsed, name) == bytes(ref[name]), name
    for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        tcb = getattr(parsed, name)
        assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc) == (
            ref[name]["bootloader"],
            ref[name]["tee"],
            ref[name]["snp"],
            ref[name]["microcode"],
            None,
        ), name
    for kind in ("current", "committed"):
        version = getattr(parsed, f"{kind}_version")
        assert version.as_tuple() == (ref[f"{kind}_major"], ref[f"{kind}_minor"], ref[f"{kind}_build"])
    assert parsed.signature_r == int.from_bytes(bytes(ref["signature"]["r"]), "little")
    assert parsed.signature_s == int.from_bytes(bytes(ref["signature"]["s"]), "little")
    assert len(report) == REPORT_SIZE


P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16
)


@pytest.mark.parametrize("vector", VECTORS_E2E[:3], ids=_ids(VECTORS_E2E[:3]))
def test_ecdsa_twin_signature_verifies_but_signs_the_same_bytes(vector: ReportVector) -> None:
    """ECDSA is malleable: (r, n - s) verifies as well as (r, s). AMD firmware does not normalise s,
    so refusing either half would refuse genuine reports. What the twin cannot change is the signed
    area: anything that identifies a report (replay caches, logs) must key on ``signed_bytes``,
    never on the raw 1184 bytes."""
    s = int.from_bytes(vector.report[0x2E8 : 0x2E8 + 48], "little")
    twin = vector.report[:0x2E8] + (P384_ORDER - s).to_bytes(72, "little") + vector.report[0x330:]
    assert twin != vector.report
    verified = verify_report(twin, certificates=vector.cert, at=vector.at)
    assert verified.report.signed_bytes == AttestationReport.from_bytes(vector.report).signed_bytes
