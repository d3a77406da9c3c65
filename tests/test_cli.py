"""``blindbox verify``: exit statuses, text and JSON output, inputs, and the KDS path."""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from blindbox import cli
from blindbox.cli import main
from blindbox.snp import AmdCertificate, AttestationReport, CertificateChain, Product, TcbVersion
from blindbox.snp.describe import describe, render_text
from blindbox.testing import SoftwarePlatform

from .conftest import VECTORS, ReportVector, cert_valid_at, report_vectors

VECTORS_E2E = report_vectors()
BY_NAME = {v.name: v for v in VECTORS_E2E}
GSG = BY_NAME["milan_gsg_v2_vcek"]
GENOA = BY_NAME["genoa_oak-oc_v5_vcek"]
TURIN = BY_NAME["turin_oak-oc_v5_vcek"]
VLEK = BY_NAME["milan_aws-trustee_v3_vlek"]
MILAN_V3 = BY_NAME["milan_oak-oc-release_v3_vcek"]


def _ids(vectors: list[ReportVector]) -> list[str]:
    return [v.name for v in vectors]


def _argv(vector: ReportVector, *extra: str) -> list[str]:
    return [
        "verify",
        str(vector.report_path),
        "--cert",
        str(vector.cert_path),
        "--at",
        vector.at.isoformat(),
        *extra,
    ]


def _run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def _tcb_json(hex_raw: str, product: str) -> dict[str, Any]:
    tcb = TcbVersion.decode(bytes.fromhex(hex_raw), Product(product.capitalize()))
    return {"raw": hex_raw, **tcb.components()}


def assert_json_matches_index(report: dict[str, Any], entry: dict[str, Any]) -> None:
    assert report["product"] == entry["product"].capitalize()
    assert report["version"] == entry["report_version"]
    assert report["signer_info"]["signing_key"] == entry["signing_key"]
    assert report["policy"]["raw"] == int(entry["policy"], 16)
    assert report["vmpl"] == entry["vmpl"]
    version = report["current_version"]
    assert f"{version['major']}.{version['minor']}.{version['build']}" == entry["current_fw"]
    for name in ("measurement", "chip_id", "report_data", "host_data"):
        assert report[name] == entry[name], name
    assert report["platform_info"]["raw"] == int(entry["platform_info"], 16)
    assert report["reported_tcb"] == {"raw": entry["reported_tcb_hex"], **entry["reported_tcb"]}
    for name in ("current_tcb", "committed_tcb", "launch_tcb"):
        assert report[name] == _tcb_json(entry[f"{name}_hex"], entry["product"]), name
    cpuid = report["cpuid"]
    if entry["cpuid_fam_mod_step"] is None:
        assert cpuid is None
    else:
        assert (
            bytes([cpuid["family"], cpuid["model"], cpuid["stepping"]]).hex() == entry["cpuid_fam_mod_step"]
        )


# --- Every genuine report, through the command line ------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS_E2E, ids=_ids(VECTORS_E2E))
def test_verify_json_for_every_real_report(vector: ReportVector, capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = _run_json(_argv(vector), capsys)
    assert (code, err) == (0, "")
    assert result["verified"] is True
    assert "error" not in result
    assert_json_matches_index(result["report"], vector.entry)
    verification = result["verification"]
    assert verification["roots_are_amd"] is True
    assert verification["revocation_checked"] is False
    assert verification["verified_at"] == vector.at.isoformat()
    cert = verification["certificate"]
    assert cert["sha256"] == hashlib.sha256(vector.cert).hexdigest()
    ext = vector.entry["key_cert_ext"]
    assert cert["tcb"]["microcode"] == ext["ucodeSPL"] and cert["tcb"]["snp"] == ext["snpSPL"]
    assert cert["hwid"] == ext["hwID"] and cert["csp_id"] == ext["csp_id"]
    assert cert["not_after"].startswith(vector.entry["key_cert_not_after"])
    expected_root = f"ARK-{vector.entry['product'].capitalize()}"
    assert verification["root"]["subject"] == expected_root


@pytest.mark.parametrize("vector", VECTORS_E2E, ids=_ids(VECTORS_E2E))
def test_verify_text_for_every_real_report(vector: ReportVector, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(vector)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    product = vector.entry["product"].capitalize()
    assert out.startswith(f"GENUINE: {product} SEV-SNP report signed by a {vector.entry['signing_key']}")
    assert f"measurement         {vector.entry['measurement']}" in out
    assert f"chip id             {vector.entry['chip_id']}" in out
    tcb = " ".join(f"{k}={v}" for k, v in vector.entry["reported_tcb"].items())
    assert f"reported tcb        {vector.entry['reported_tcb_hex']}  {tcb}" in out
    assert f"firmware            current {vector.entry['current_fw']}," in out
    assert f"vmpl                {vector.entry['vmpl']}\n" in out
    assert f"report data         {vector.entry['report_data']}" in out
    assert "roots               AMD's pinned roots" in out
    assert "revocation          not checked" in out


def test_text_shows_policy_flags_and_platform_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(GSG)) == 0  # policy 0xb0000: debug on
    out = capsys.readouterr().out
    assert "policy              0xb0000 (ABI 0.0): debug yes, migrate_ma no, smt allowed" in out
    assert "platform info       0x1: smt_enabled" in out
    assert main(_argv(TURIN)) == 0  # platform info 0x67 sets bit 6, which has no name
    out = capsys.readouterr().out
    assert "debug no" in out
    assert "0x67: smt_enabled, tsme_enabled, ecc_enabled, alias_check_complete, unknown bits 0x40" in out
    assert "reported tcb        0001000200000047  fmc=0 bootloader=1 tee=0 snp=2 microcode=71" in out


def test_text_says_masked_for_a_masked_chip_id() -> None:
    raw = bytearray(MILAN_V3.report)
    raw[0x048] |= 0x02  # MASK_CHIP_ID
    raw[0x1A0:0x1E0] = bytes(64)
    text = render_text(describe(AttestationReport.from_bytes(bytes(raw))))
    assert "chip id             masked" in text
    assert text.startswith("PARSED ONLY")


def test_verify_via_python_dash_m_subprocess() -> None:
    argv = [sys.executable, "-m", "blindbox", *_argv(GENOA, "--json")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    result = json.loads(done.stdout)
    assert result["verified"] is True
    assert_json_matches_index(result["report"], GENOA.entry)
    bad = subprocess.run(
        [*argv[:-1], "--at", "2020-01-01"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("blindbox verify: NotAnEnclaveError: ")


# --- Inputs ----------------------------------------------------------------------------------------


def test_report_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(MILAN_V3.report)))
    argv = ["verify", "-", "--cert", str(MILAN_V3.cert_path), "--at", MILAN_V3.at.isoformat()]
    code, result, _ = _run_json(argv, capsys)
    assert code == 0
    assert result["report"]["measurement"] == MILAN_V3.entry["measurement"]


def test_pem_certificate_and_kds_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "vlek.pem"
    pem.write_bytes(
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(VLEK.cert) + b"-----END CERTIFICATE-----\n"
    )
    argv = [
        "verify",
        str(VLEK.report_path),
        "--cert",
        str(pem),
        "--chain",
        str(VLEK.chain_path),
        "--at",
        "2025-06-01",
    ]
    code, result, err = _run_json(argv, capsys)
    assert (code, err) == (0, "")
    assert result["verification"]["intermediate"]["subject"] == "SEV-VLEK-Milan"
    assert result["verification"]["certificate"]["csp_id"] == "CN=cc-us-east-2.amazonaws.com"
    assert result["verification"]["verified_at"] == "2025-06-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-01", datetime.datetime(2025, 6, 1, tzinfo=datetime.timezone.utc)),
        ("2025-06-01T12:30:00Z", datetime.datetime(2025, 6, 1, 12, 30, tzinfo=datetime.timezone.utc)),
        ("2025-06-01T14:30:00+02:00", datetime.datetime(2025, 6, 1, 12, 30, tzinfo=datetime.timezone.utc)),
    ],
)
def test_at_accepts_iso_dates(
    text: str, expected: datetime.datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["verify", str(VLEK.report_path), "--cert", str(VLEK.cert_path), "--at", text]
    code, result, _ = _run_json(argv, capsys)
    assert code == 0
    assert datetime.datetime.fromisoformat(result["verification"]["verified_at"]) == expected


def test_expired_vlek_without_at_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """The AWS VLEKs expired on 2025-12-10: checked at 'now', they must fail."""
    code = main(["verify", str(VLEK.report_path), "--cert", str(VLEK.cert_path)])
    assert code == 1
    assert "expected valid at" in capsys.readouterr().err


# --- Failure output --------------------------------------------------------------------------------


def test_json_failure_with_a_parsed_report(capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = _run_json(_argv(GENOA, "--at", "2020-01-01"), capsys)
    assert code == 1
    assert set(result) == {"verified", "report", "verification", "error"}
    assert result["verified"] is False
    assert result["verification"] is None
    assert result["report"]["measurement"] == GENOA.entry["measurement"]
    assert result["error"]["type"] == "NotAnEnclaveError" and result["error"]["exit_status"] == 1
    assert "expected valid at 2020-01-01" in result["error"]["message"]
    assert err == f"blindbox verify: NotAnEnclaveError: {result['error']['message']}\n"


def test_json_failure_with_an_unparseable_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(GENOA.report[:100])
    code, result, _ = _run_json(["verify", str(short), "--cert", str(GENOA.cert_path)], capsys)
    assert code == 1
    assert result == {
        "verified": False,
        "report": None,
        "verification": None,
        "error": {"type": "NotAnEnclaveError", "message": "report: expected 1184 bytes, found 100",
                  "exit_status": 1},
    }


def test_product_flag_that_contradicts_cpuid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(GENOA, "--product", "milan")) == 1
    assert "product: expected Milan, found Genoa" in capsys.readouterr().err


def test_oversized_input_is_not_read_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(1 << 20))
    assert main(["verify", str(big), "--cert", str(GENOA.cert_path)]) == 1
    assert "expected at most 65536 bytes" in capsys.readouterr().err


def test_garbage_chain_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert main(_argv(GENOA, "--chain", str(chain))) == 1
    err = capsys.readouterr().err
    assert err.startswith("blindbox verify: NotAnEnclaveError: certificate: malformed DER")


# --- Usage errors: exit 2 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["verify"],
        ["nonsense"],
        ["verify", "report.bin", "--at", "yesterday"],
        ["verify", "report.bin", "--product", "naples"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: blindbox" in capsys.readouterr().err


def test_unreadable_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.bin")
    assert main(["verify", missing, "--cert", str(GENOA.cert_path)]) == 2
    assert "cannot read report" in capsys.readouterr().err
    assert main(["verify", str(GENOA.report_path), "--cert", missing]) == 2
    assert "cannot read certificate" in capsys.readouterr().err
    assert main(["verify", str(GENOA.report_path), "--cert", str(tmp_path)]) == 2  # a directory
    assert "cannot read certificate" in capsys.readouterr().err


def test_chain_with_two_asks_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = tmp_path / "chain.pem"
    milan, genoa = (VECTORS / "ca" / "milan" / "ask.pem"), (VECTORS / "ca" / "genoa" / "ask.pem")
    chain.write_bytes(milan.read_bytes() + genoa.read_bytes())
    assert main(_argv(GENOA, "--chain", str(chain))) == 2
    assert "expected at most one ASK" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "verify" in capsys.readouterr().out
    assert main(["verify", "--help"]) == 0
    assert "--offline" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("blindbox ")


# --- Without --cert: the VCEK comes from a KDS client ----------------------------------------------


class FakeKds:
    """Serves VCEKs from the vector set and records what verify asked for."""

    def __init__(self, offline: bool) -> None:
        self.offline = offline
        self.requests: list[tuple[Product, bytes, TcbVersion]] = []
        self.revocation_checks: list[CertificateChain] = []

    def vcek(self, product: Product, chip_id: bytes, tcb: TcbVersion, *,
             check: Callable[[AmdCertificate], object] | None = None) -> AmdCertificate:
        self.requests.append((product, chip_id, tcb))
        for vector in VECTORS_E2E:
            if vector.entry["chip_id"] == chip_id.hex() and vector.entry["reported_tcb_hex"] == tcb.raw.hex():
                cert = AmdCertificate.from_der(vector.cert)
                if check is not None:
                    check(cert)
                return cert
        raise AssertionError("no such VCEK in the vectors")

    def check_revocation(self, chain: CertificateChain, at: datetime.datetime) -> None:
        self.revocation_checks.append(chain)


@pytest.fixture
def fake_kds(monkeypatch: pytest.MonkeyPatch) -> list[FakeKds]:
    made: list[FakeKds] = []

    def factory(offline: bool) -> FakeKds:
        made.append(FakeKds(offline))
        return made[-1]

    monkeypatch.setattr(cli, "_kds_client", factory)
    return made


@pytest.mark.parametrize("offline", [False, True])
def test_vcek_fetched_from_kds_and_revocation_checked(
    offline: bool, fake_kds: list[FakeKds], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "verify",
        str(GENOA.report_path),
        "--at",
        GENOA.at.isoformat(),
        *(["--offline"] if offline else []),
    ]
    code, result, err = _run_json(argv, capsys)
    assert (code, err) == (0, "")
    (kds,) = fake_kds
    assert kds.offline is offline
    ((product, chip_id, tcb),) = kds.requests
    assert product is Product.GENOA
    assert chip_id.hex() == GENOA.entry["chip_id"]
    assert tcb.raw.hex() == GENOA.entry["reported_tcb_hex"]
    assert len(kds.revocation_checks) == 1
    assert result["verification"]["revocation_checked"] is True
    assert main(argv) == 0
    assert "revocation          checked against AMD's CRL" in capsys.readouterr().out


def test_v2_report_needs_product_to_fetch_its_vcek(
    fake_kds: list[FakeKds], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["verify", str(GSG.report_path), "--at", GSG.at.isoformat()]
    assert main(argv) == 2  # a missing argument, named as the user types it
    assert capsys.readouterr().err == (
        "blindbox verify: report: a v2 report carries no CPUID, so its VCEK cannot be fetched without "
        "the product: pass --product milan|genoa|turin, or the VCEK with --cert\n")
    assert fake_kds == []  # refused before any KDS client was made
    assert main([*argv, "--product", "milan"]) == 0
    assert fake_kds[-1].requests[0][0] is Product.MILAN


def test_vlek_report_without_cert_is_refused(
    fake_kds: list[FakeKds], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(VLEK.report_path), "--at", "2025-06-01"]) == 1
    assert "VLEKs cannot be fetched" in capsys.readouterr().err
    assert fake_kds[-1].requests == []


def test_chain_without_cert_goes_to_kds_for_the_leaf_only(
    fake_kds: list[FakeKds], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "verify",
        str(MILAN_V3.report_path),
        "--chain",
        str(MILAN_V3.chain_path),
        "--at",
        cert_valid_at(MILAN_V3.cert).isoformat(),
    ]
    assert main(argv) == 0
    assert len(fake_kds[-1].requests) == 1
    capsys.readouterr()


OFFLINE_HINT = ("blindbox verify: AMD KDS could not be used; pass the VCEK with --cert (and the ASK with "
                "--chain) to verify offline\n")


def test_offline_end_to_end_with_a_hand_provisioned_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real KdsClient, offline, under AMD's pinned roots: a missing VCEK, then a missing CRL, each
    named; then a CRL that AMD's ARK did not sign (the test platform's), refused: revocation fails closed."""
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda name: str(tmp_path / name))
    kds = tmp_path / "blindbox" / "kds"
    at = datetime.datetime(2026, 9, 1, tzinfo=datetime.timezone.utc)
    argv = ["verify", str(GENOA.report_path), "--offline", "--at", at.isoformat()]
    vcek = kds / "vcek" / "Genoa" / GENOA.entry["chip_id"] / "bl10_tee0_snp25_uc84.der"
    assert main(argv) == 4  # an offline cache miss: could not complete, neither verified nor refused
    err = capsys.readouterr().err
    assert err.startswith("blindbox verify: KdsError: offline: the Genoa VCEK")
    assert f"not cached at {vcek}" in err
    vcek.parent.mkdir(parents=True)
    vcek.write_bytes(GENOA.cert)
    crl = kds / "crl" / "vcek" / "Genoa.crl"
    assert main(argv) == 4
    err = capsys.readouterr().err
    assert err.startswith("blindbox verify: KdsError: offline: no current Genoa VCEK CRL")
    assert f"none cached at {crl}" in err
    crl.parent.mkdir(parents=True)
    day = datetime.timedelta(days=1)
    test_crl = SoftwarePlatform().crl(Product.GENOA, this_update=at - day, next_update=at + day)
    crl.write_bytes(b"blindbox-kds-crl vcek Genoa\n" + test_crl)  # the product and family it is for
    code, result, err = _run_json(argv, capsys)
    assert code == 4 and result["verified"] is False  # no usable CRL: revocation could not be checked
    message = result["error"]["message"]
    assert message.startswith("offline: no current Genoa VCEK CRL")
    refused = (f"the cached one (disk, {crl}) is unusable: CRL: expected issuer 'OU=Engineering, C=US, "
               "L=Santa Clara, ST=CA, O=Advanced Micro Devices, CN=ARK-Genoa' (the chain's anchor)")
    assert refused in message
    assert err == f"blindbox verify: KdsError: {message}\n" + OFFLINE_HINT
    assert crl.is_file()  # refused, not trusted, and left for the operator to replace


def test_chain_holding_the_leaf_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = tmp_path / "bundle.pem"
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(GENOA.cert) + b"-----END CERTIFICATE-----\n"
    chain.write_bytes(pem + GENOA.chain_path.read_bytes())
    assert main(_argv(GENOA, "--chain", str(chain))) == 2
    assert "--chain: holds a VCEK; pass the signing certificate with --cert" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("report", "vcek", "product"),
    [
        ("omne-attest/attestation.bin", "omne-attest/kds_vcek.der", "Milan"),
        ("sev-attest-tool/sample_attestation.bin", "sev-attest-tool/sample_vcek.der", "Genoa"),
    ],
)
def test_peer_vectors_through_the_cli(
    report: str, vcek: str, product: str, capsys: pytest.CaptureFixture[str]
) -> None:
    peers = VECTORS / "peers"
    at = cert_valid_at((peers / vcek).read_bytes())
    argv = ["verify", str(peers / report), "--cert", str(peers / vcek), "--at", at.isoformat()]
    code, result, _ = _run_json(argv, capsys)
    assert code == 0
    assert result["verification"]["product"] == product
    assert result["report"]["product"] == product  # a v2 report, product resolved from the VCEK
    assert result["report"]["version"] == 2
