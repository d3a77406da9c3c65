"""One exit-status contract for every command, a script can trust (issue 18 §7).

0 verified; 1 refused; 2 usage or unreadable input; 3 a trust input failed verification;
4 could not complete; 130 Ctrl-C (tests/test_cli_interrupt.py). Each status is produced here by
the real path that leads to it, for every command it applies to.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from blindbox import cli
from blindbox.attest.manifest import sign_manifest
from blindbox.cli import EXIT_EPILOG, EXIT_STATUSES, exit_status, main
from blindbox.errors import (
    BindingMismatchError,
    ConfigurationError,
    InvalidEnclaveCode,
    ManifestError,
    ManifestTrustError,
    NotAnEnclaveError,
    PolicyMismatchError,
    VerificationIncompleteError,
)
from blindbox.snp.kds import KdsClient, KdsError, KdsRateLimitedError
from blindbox.testing.evidence import LiveEvidence
from blindbox.testing.server import EnclaveServer, Fault

from .conftest import VECTORS, manifest_validity
from .test_cli import GENOA, _argv
from .test_docs import _help, _hook

MEASURE = VECTORS / "measure"
OTHER = "ab" * 48
ATTEST_ENV = ("BLINDBOX_MANIFEST", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
              "all_proxy", "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ATTEST_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def enclave() -> Iterator[EnclaveServer]:
    with EnclaveServer(evidence=LiveEvidence.create()) as server:
        yield server


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def roots(server: EnclaveServer, tmp_path: Path) -> str:
    path = tmp_path / "roots.pem"
    path.write_text(server.roots_pem)
    return str(path)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the block ends


# --- the contract itself ----------------------------------------------------------------------------
def test_the_statuses_are_the_documented_ones() -> None:
    assert [code for code, _ in EXIT_STATUSES] == [0, 1, 2, 3, 4, 130]


@pytest.mark.parametrize(("error", "status"), [
    (NotAnEnclaveError("x"), 1),
    (InvalidEnclaveCode("x"), 1),
    (BindingMismatchError("x"), 1),
    (PolicyMismatchError("x"), 1),
    (ConfigurationError("x"), 2),
    (ManifestError("x"), 2),
    (FileNotFoundError(2, "No such file"), 2),
    (ManifestTrustError("x"), 3),  # a ManifestError, but a trust input that failed, not a usage error
    (VerificationIncompleteError("x"), 4),
    (KdsError("x"), 4),  # a KDS that did not deliver: nothing was shown either way
    (KdsRateLimitedError("x"), 4),
    (requests.ConnectionError("x"), 4),
    (TimeoutError("x"), 4),
    (KeyboardInterrupt(), 130),
    (ValueError("a bug"), None),  # unknown: raised as is, never reported as a verdict
])
def test_exception_to_status(error: BaseException, status: int | None) -> None:
    assert exit_status(error) == status


def test_every_help_ends_with_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["verify"], ["attest"], ["measure"], ["fixture"], ["fixture", "create"],
                 ["fixture", "serve"], ["demo"]):
        text = _help(*argv)
        tail = text[text.index("exit status (the same for every command):"):]
        for code, meaning in EXIT_STATUSES:
            first_words = " ".join(meaning.split()[:3])
            assert re.search(rf"^  {code} +{re.escape(first_words)}", tail, re.MULTILINE), (argv, code)


def test_docs_render_the_same_contract() -> None:
    page = _hook().render()
    for code, meaning in EXIT_STATUSES:
        assert f"| {code} | {meaning[0].upper() + meaning[1:]} |" in page
    assert page.count("Exit status: see [Exit statuses](#exit-statuses).") == 9  # every (sub)command
    assert "## Exit statuses" in page and EXIT_EPILOG not in page


# --- verify: 0, 1, 2, 4 -------------------------------------------------------------------------------
def test_verify_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *_argv(GENOA))[0] == 0
    code, _, err = run(capsys, *_argv(GENOA, "--at", "2020-01-01"))
    assert code == 1 and err.startswith("blindbox verify: NotAnEnclaveError: VCEK")
    code, _, err = run(capsys, "verify", str(tmp_path / "missing.bin"))
    assert code == 2 and err.startswith("blindbox verify: cannot read report")
    assert run(capsys, "verify")[0] == 2  # argparse: a missing argument


@pytest.mark.parametrize("as_json", [False, True])
def test_verify_kds_unreachable_is_4(
    as_json: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real KdsClient (an empty cache, retries not slept) against a KDS that cannot be reached."""
    slept: list[float] = []
    monkeypatch.setattr(cli, "_kds_client", lambda offline: KdsClient(
        offline=offline, cache_dir=tmp_path / "kds", max_retries=1, sleep=slept.append))
    argv = ["verify", str(GENOA.report_path), "--at", GENOA.at.isoformat(), *(["--json"] if as_json else [])]
    with responses.RequestsMock() as mock:
        mock.add(responses.GET, re.compile(r"https://kdsintf\.amd\.com/vcek/v1/Genoa/.*"),
                 body=requests.ConnectionError("Connection refused"))
        code, out, err = run(capsys, *argv)
        assert len(mock.calls) == 2  # one retry, then it gives up
    assert code == 4 and len(slept) == 1
    assert err.startswith("blindbox verify: KdsError: KDS unavailable: VCEK request https://kdsintf.amd.com/")
    assert err.count("\n") == 2 and err.endswith("to verify offline\n")  # the error line, then the hint
    if as_json:
        doc = json.loads(out)
        assert doc["verified"] is False and doc["error"]["exit_status"] == 4
        assert doc["report"]["measurement"] == GENOA.entry["measurement"]
    else:
        assert out == ""


# --- attest: 0, 1, 2, 3, 4 ----------------------------------------------------------------------------
def test_attest_statuses(enclave: EnclaveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trust = roots(enclave, tmp_path)
    assert run(capsys, "attest", enclave.url, "--measurement", enclave.measurement, "--roots", trust)[0] == 0
    code, out, _ = run(capsys, "attest", enclave.url, "--measurement", OTHER, "--roots", trust)
    assert code == 1 and "result: FAIL: 1 of" in out
    code, out, _ = run(capsys, "attest", enclave.url, "--measurement", enclave.measurement)  # AMD's roots
    assert code == 1 and "FAIL" in out
    code, _, err = run(capsys, "attest", enclave.url, "--measurement", "abc")
    assert code == 2 and err.startswith("blindbox attest: ConfigurationError: ") and "96 hex" in err
    code, _, err = run(capsys, "attest", "http://" + enclave.address, "--measurement", OTHER)
    assert code == 2 and "plain HTTP" in err
    code, _, err = run(capsys, "attest", f"127.0.0.1:{closed_port()}", "--measurement", OTHER)
    assert code == 4 and "VerificationIncompleteError: cannot attest" in err


def test_attest_evidence_that_never_comes_is_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with EnclaveServer(evidence=LiveEvidence.create(), faults=[Fault.SLOW_EVIDENCE], slow_seconds=5) as slow:
        code, out, err = run(capsys, "attest", slow.url, "--measurement", slow.measurement,
                             "--roots", roots(slow, tmp_path), "--timeout", "0.5")
    assert (code, out) == (4, "")
    assert err.startswith(f"blindbox attest: VerificationIncompleteError: cannot attest {slow.url}: ")
    assert err.endswith(
        ": ConnectTimeout: attestation: evidence exchange not finished within the 0.5 s timeout\n")


def test_attest_forged_manifest_signature_is_3(
    enclave: EnclaveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = {"ovmf_sha256": "ab" * 32, "vcpus": 4, "vcpu_type": "EPYC-Milan", "vmm": "qemu",
              "guest_features": "0x1"}
    data = json.dumps({"schema": "blindbox-manifest-v2", "name": "vendor app", "version": "1",
                       **manifest_validity(),
                       "measurements": [{"digest": enclave.measurement, "inputs": inputs}]}).encode()
    vendor, forger = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "m.json").write_bytes(data)
    (tmp_path / "forged.sig").write_bytes(sign_manifest(data, forger))
    (tmp_path / "vendor.pem").write_bytes(vendor.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    before = len(enclave.evidence_requests)
    code, out, err = run(capsys, "attest", enclave.url, "--manifest", str(tmp_path / "m.json"),
                         "--manifest-signature", str(tmp_path / "forged.sig"),
                         "--publisher-key", str(tmp_path / "vendor.pem"), "--manifest-name", "vendor app",
                         "--roots", roots(enclave, tmp_path))
    assert (code, out) == (3, "")
    assert err.startswith("blindbox attest: ManifestTrustError: signature: expected a valid Ed25519 ")
    assert len(enclave.evidence_requests) == before  # refused before connecting


# --- measure: 0, 2 ------------------------------------------------------------------------------------
def test_measure_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ovmf = str(MEASURE / "ovmf_AmdSev_suffix.bin")
    code, out, _ = run(capsys, "measure", "--ovmf", ovmf, "--vcpus", "1", "--vcpu-type", "EPYC-v4")
    assert code == 0 and re.fullmatch(r"[0-9a-f]{96}\n", out)
    not_ovmf = tmp_path / "not-ovmf.bin"
    not_ovmf.write_bytes(bytes(4096))
    code, _, err = run(capsys, "measure", "--ovmf", str(not_ovmf), "--vcpus", "1", "--vcpu-type", "EPYC-v4")
    assert code == 2 and err.startswith("blindbox measure: MeasurementError: ")
    code, _, err = run(capsys, "measure", "--ovmf", str(tmp_path / "none"), "--vcpus", "1",
                       "--vcpu-type", "EPYC-v4")
    assert code == 2 and err.startswith("blindbox measure: ")


# --- fixture: 0, 2 ------------------------------------------------------------------------------------
def test_fixture_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fixture"
    assert run(capsys, "fixture", "create", "--measurement", OTHER, "-o", str(out))[0] == 0
    code, _, err = run(capsys, "fixture", "create", "--measurement", OTHER, "-o", str(out))
    assert code == 2 and err.startswith("blindbox fixture create: -o ")
    code, _, err = run(capsys, "fixture", "serve", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("blindbox fixture serve: FixtureError: fixture ")
    meta = json.loads((out / "fixture.json").read_text())
    (out / "fixture.json").write_text(json.dumps({**meta, "measurement": "cd" * 48}))
    code, _, err = run(capsys, "fixture", "serve", str(out))
    assert code == 2 and "fixture.json measurement: expected the recorded report's" in err


def test_an_unknown_error_is_a_bug_not_a_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(offline: bool) -> KdsClient:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_kds_client", broken)
    with pytest.raises(ZeroDivisionError):
        main(["verify", str(GENOA.report_path), "--at", datetime.date(2026, 1, 1).isoformat()])
