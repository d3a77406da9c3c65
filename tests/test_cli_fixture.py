"""`blindbox fixture create | serve`: recorded fixtures a user can commit and serve in CI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from blindbox.attest.evidence import Evidence
from blindbox.cli import main
from blindbox.errors import NotAnEnclaveError
from blindbox.snp import AttestationReport, Product, verify_report
from blindbox.testing import LiveEvidence, SoftwarePlatform
from blindbox.testing.fixture import RecordedEvidence

from .test_fixture_server import _attest

MEASUREMENT = "0123456789abcdef" * 6


def test_fixture_create_writes_a_verifiable_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_bytes(b'{"version":1}')
    out = tmp_path / "fixture"
    assert main(["fixture", "create", "--measurement", MEASUREMENT.upper(), "--product", "turin",
                 "--policy", str(policy), "-o", str(out)]) == 0
    assert "SIMULATED" in capsys.readouterr().out
    recorded = RecordedEvidence.load(out)
    assert recorded.measurement == MEASUREMENT
    assert recorded.policy == b'{"version":1}'
    evidence = Evidence.from_json((out / "evidence.json").read_bytes())
    report = AttestationReport.from_bytes(evidence.report)
    assert report.product is Product.TURIN
    # Verifiable only with the fixture's own test roots, never with AMD's.
    verify_report(evidence.report, certificates=dict(evidence.certificates), roots=recorded.roots_pem)
    with pytest.raises(NotAnEnclaveError, match="pinned roots"):
        verify_report(evidence.report, certificates=dict(evidence.certificates))
    meta = json.loads((out / "fixture.json").read_text())
    assert meta["simulated"] is True and "not by AMD" in meta["note"]


def test_each_fixture_gets_fresh_keys_unless_asked_for_the_shared_test_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {}
    for name, extra in (("a", []), ("b", []), ("shared", ["--shared-test-keys"])):
        args = ["fixture", "create", "--measurement", MEASUREMENT, "-o", str(tmp_path / name), *extra]
        assert main(args) == 0
        runs[name] = (capsys.readouterr().out, (tmp_path / name / "roots.pem").read_text())
    (out_a, roots_a), (_, roots_b), (out_shared, roots_shared) = runs["a"], runs["b"], runs["shared"]
    assert "fresh random test keys" in out_a and "shared PUBLIC test keys" in out_shared
    assert roots_a != roots_b  # fresh keys per fixture: two runs, two hierarchies
    assert roots_a.startswith("# BlindBox TEST ROOTS - NOT AMD.")
    assert roots_shared == SoftwarePlatform().roots_pem(Product.MILAN)
    assert roots_shared.startswith("# BlindBox PUBLIC TEST KEYS - NOT SECRET, NOT AMD.")
    for name in ("a", "b"):
        recorded = RecordedEvidence.load(tmp_path / name).recorded
        verify_report(recorded.report, certificates=dict(recorded.certificates), roots=runs[name][1])
    # Evidence anyone can mint with the shared test keys is refused under a fresh fixture's roots.
    source = LiveEvidence.create(MEASUREMENT)
    minted = source.evidence(spki_der=source.identity.spki_der, nonce=None, faults=frozenset())
    verify_report(minted.report, certificates=dict(minted.certificates), roots=roots_shared)
    for roots in (roots_a, roots_b):
        with pytest.raises(NotAnEnclaveError, match="caller-supplied roots"):
            verify_report(minted.report, certificates=dict(minted.certificates), roots=roots)


def test_fixture_create_refuses_a_bad_measurement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fixture", "create", "--measurement", "abc", "-o", str(tmp_path / "x")]) == 2
    assert "measurement" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # a plain client, on purpose
def test_fixture_serve_serves_the_recording(tmp_path: Path) -> None:
    out = tmp_path / "fixture"
    assert main(["fixture", "create", "--measurement", MEASUREMENT, "-o", str(out)]) == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "blindbox", "fixture", "serve", str(out), "--app",
         "tests.test_cli_fixture:hello_app"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"at https://127\.0\.0\.1:(\d+)", line)
        assert match, line + (proc.stderr.read() if proc.stderr else "")

        class _Server:
            port = int(match.group(1))
            measurement = MEASUREMENT
            roots_pem = (out / "roots.pem").read_text()

        _attest(_Server, nonce=None)  # type: ignore[arg-type]
        import requests

        response = requests.get(f"https://127.0.0.1:{_Server.port}/hi", verify=False, timeout=10)
        assert response.text == "hello from the fixture"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_fixture_serve_refuses_a_bad_app(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fixture"
    assert main(["fixture", "create", "--measurement", MEASUREMENT, "-o", str(out)]) == 0
    assert main(["fixture", "serve", str(out), "--app", "no_such_module:app"]) == 2
    assert main(["fixture", "serve", str(out), "--app", "nocolon"]) == 2
    assert main(["fixture", "serve", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def hello_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    body = b"hello from the fixture"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])  # type: ignore[operator]
    return [body]


# --- -o refuses to overwrite --------------------------------------------------------------------------
def test_fixture_create_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert main(["fixture", "create", "--measurement", MEASUREMENT, "-o", str(a_file)]) == 2
    assert "expected a directory to create, found an existing file" in capsys.readouterr().err
    assert main(["fixture", "create", "--measurement", MEASUREMENT, "-o", str(a_file), "--force"]) == 2
    assert a_file.read_text() == "mine"  # --force never replaces a file with a directory
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["fixture", "create", "--measurement", MEASUREMENT, "-o", str(busy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blindbox fixture create: -o ") and "not empty; pass --force" in err
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert main(["fixture", "create", "--measurement", MEASUREMENT, "-o", str(busy), "--force"]) == 0
    assert (busy / "keep.txt").read_text() == "mine"
    assert RecordedEvidence.load(busy).measurement == MEASUREMENT
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fixture", "create", "--measurement", MEASUREMENT, "-o", str(empty)]) == 0
    capsys.readouterr()


# --- a recorded fixture needs nonce=False, and the refusal says so --------------------------------------
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_recorded_fixture_without_no_nonce_says_what_to_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from blindbox.errors import BindingMismatchError
    from blindbox.requests import SecureSession
    from blindbox.testing.server import EnclaveServer

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "BLINDBOX_MANIFEST"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "fixture"
    assert main(["fixture", "create", "--measurement", MEASUREMENT, "-o", str(out)]) == 0
    roots = str(out / "roots.pem")
    hint = "accept it with nonce=False (blindbox attest --no-nonce)"
    with EnclaveServer(evidence=RecordedEvidence.load(out)) as server:
        capsys.readouterr()
        assert main(["attest", server.url, "--measurement", MEASUREMENT, "--roots", roots]) == 1
        text = capsys.readouterr().out
        assert "binding" in text and "the evidence was recorded, not made for this connection" in text
        assert hint in text
        with pytest.raises(BindingMismatchError, match=re.escape(hint)):
            SecureSession(server.address, measurements=[MEASUREMENT], roots=roots)
        assert main(["attest", server.url, "--measurement", MEASUREMENT, "--roots", roots, "--no-nonce"]) == 0
        with SecureSession(server.address, measurements=[MEASUREMENT], roots=roots, nonce=False) as session:
            assert session.attestation is not None
