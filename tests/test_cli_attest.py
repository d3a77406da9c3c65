"""``blindbox attest`` against the fixture server, and assess_evidence == verify_evidence.

The CLI prints what :func:`assess_evidence` finds; a session enforces what
:func:`verify_evidence` raises. The consistency tests hold the two to the same
verdict, the same first failure (type, and message where the check keeps the
error's own text) and the same order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import blindbox.requests as br
from blindbox.attest.evidence import Evidence
from blindbox.attest.owner_policy import EgressRule, OwnerPolicy, PolicyRequirements
from blindbox.attest.policy import AttestationPolicy, Rule
from blindbox.attest.verifier import NOT_EVALUATED, assess_evidence, verify_evidence
from blindbox.cli import main
from blindbox.errors import (
    AttestationError,
    BindingMismatchError,
    InsecureGuestPolicyError,
    InvalidEnclaveCode,
    NotAnEnclaveError,
    PolicyMismatchError,
    PolicyViolationError,
)
from blindbox.testing.evidence import LiveEvidence
from blindbox.testing.server import EnclaveServer, Fault

from .conftest import manifest_validity

OWNER = OwnerPolicy(authentication_required=False, egress_allow=[EgressRule("api.example.com", [443])])
OTHER = hashlib.sha384(b"some other enclave image").hexdigest()


@pytest.fixture(autouse=True)
def no_manifest_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No manifest, proxy or CA bundle from the environment (attest honours them as a session does)."""
    for name in ("BLINDBOX_MANIFEST", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                 "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def honest() -> Iterator[EnclaveServer]:
    with EnclaveServer(evidence=LiveEvidence.create(policy=OWNER.to_bytes())) as server:
        yield server


def roots_file(server: EnclaveServer, tmp_path: Path) -> str:
    path = tmp_path / "roots.pem"
    path.write_text(server.roots_pem)
    return str(path)


def attest(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["attest", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def attest_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = attest(capsys, *argv, "--json")
    return code, json.loads(out)


def rows(out: str) -> dict[str, str]:
    """{check name: verdict label} from the table (first line of each row)."""
    table = out.split("VERDICT", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    found: dict[str, str] = {}
    for line in table:
        if line.startswith(" "):
            continue
        label, _, rest = line.partition("  ")
        if label == "not":  # "not evaluated" has a space in it
            label, rest = NOT_EVALUATED, line[len(NOT_EVALUATED):]
        found[rest.split()[0]] = label.strip()
    return found


# -- the table ---------------------------------------------------------------------------------------
def test_every_check_passes(
    honest: EnclaveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = attest(capsys, honest.url, "--measurement", honest.measurement,
                            "--roots", roots_file(honest, tmp_path), "--expected-policy", OWNER.digest())
    assert code == 0, err
    table = rows(out)
    names = list(table)
    assert names[:3] == ["genuine", "binding", "measurement"] and names[-1] == "owner_policy.sha256"
    assert "guest_policy.debug" in table and "reported_tcb.minimum" in table
    assert set(table.values()) == {"pass"}
    assert "NOT AMD's" in out and "SIMULATED" in out  # the roots are not AMD's, and it says so
    assert f"found     {honest.measurement}" in out
    assert f"measurement               {honest.measurement}" in out  # the attestation summary
    assert ("data-owner policy         authentication not required; "
            "egress allowlist [api.example.com:443]") in out
    assert out.rstrip().endswith(f"result: PASS: all {len(table)} checks passed")
    request = honest.evidence_requests[-1]
    assert "nonce=" in request.path and request.path.split("nonce=")[1] in out  # a fresh nonce, printed
    assert honest.received == []  # attest sends nothing but the evidence request


def test_other_measurement_fails_that_check_and_lists_the_rest(
    honest: EnclaveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = attest(capsys, honest.url, "--measurement", OTHER, "--measurement", "ab" * 48,
                          "--roots", roots_file(honest, tmp_path))
    assert code == 1
    table = rows(out)
    assert table["measurement"] == "FAIL"
    assert table["genuine"] == table["binding"] == table["guest_policy.debug"] == "pass"
    assert [name for name, label in table.items() if label != "pass"] == ["measurement"]
    assert f"one of [{OTHER}, {'ab' * 48}]" in out and f"found     {honest.measurement}" in out
    assert "result: FAIL: 1 of" in out and "(measurement)" in out


def test_corrupt_signature_fails_genuine_and_evaluates_nothing_else(
    blindbox_enclave_factory: Callable[..., EnclaveServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = blindbox_enclave_factory(faults=[Fault.CORRUPT_SIGNATURE], policy=OWNER.to_bytes())
    roots = roots_file(server, tmp_path)
    code, out, _ = attest(capsys, server.url, "--measurement", server.measurement, "--roots", roots,
                          "--expected-policy", OWNER.digest())
    assert code == 1
    table = rows(out)
    assert table == {"genuine": "FAIL", "binding": NOT_EVALUATED, "appraisal": NOT_EVALUATED,
                     "owner_policy.sha256": NOT_EVALUATED}
    assert "found     report signature: expected an ECDSA P-384 signature" in out
    assert "attestation:" not in out  # nothing of a non-genuine report is shown as attested
    assert "result: FAIL: 1 of 4 checks failed (genuine), 3 not evaluated" in out
    # The JSON says the same, and "genuine" found the exact error a session raises.
    code, doc = attest_json(capsys, server.url, "--measurement", server.measurement, "--roots", roots)
    with pytest.raises(NotAnEnclaveError) as info:
        br.SecureSession(server.address, measurements=[server.measurement], roots=server.roots_pem)
    assert code == 1 and doc["passed"] is False and doc["attestation"] is None
    assert doc["checks"][0] == {
        "name": "genuine", "verdict": "fail", "found": str(info.value), "error": "NotAnEnclaveError",
        "expected": doc["checks"][0]["expected"], "setting": None, "reason": None, "warning": None,
    }
    assert [c["verdict"] for c in doc["checks"][1:]] == [NOT_EVALUATED, NOT_EVALUATED]


def test_json_shape(honest: EnclaveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = attest_json(capsys, honest.url, "--measurement", honest.measurement,
                            "--roots", roots_file(honest, tmp_path))
    assert code == 0
    assert set(doc) == {"url", "checks", "passed", "attestation", "roots", "manifest", "nonce"}
    assert doc["url"] == honest.url and doc["passed"] is True and doc["manifest"] is None
    assert doc["roots"]["amd"] is False and doc["roots"]["source"].endswith("roots.pem")
    assert len(doc["nonce"]) == 64
    for check in doc["checks"]:  # a passing check names no error
        assert set(check) == {"name", "verdict", "expected", "found", "setting", "reason", "warning"}
        assert check["verdict"] in ("pass", "warn")
    measurement = next(c for c in doc["checks"] if c["name"] == "measurement")
    assert measurement["found"] == honest.measurement
    summary = doc["attestation"]
    assert summary["measurement"] == honest.measurement and summary["nonce"] == doc["nonce"]
    assert summary["roots"] == "caller-supplied (NOT AMD)"
    assert summary["data-owner policy sha256"] == OWNER.digest()
    # A failing check: the summary of the genuine report is still given, passed is false.
    code, doc = attest_json(capsys, honest.url, "--measurement", OTHER,
                            "--roots", roots_file(honest, tmp_path), "--no-nonce")
    assert code == 1 and doc["passed"] is False and doc["nonce"] is None
    assert doc["attestation"]["nonce"] == "none (recorded evidence)"
    assert [c["name"] for c in doc["checks"] if c["verdict"] == "fail"] == ["measurement"]
    assert [c["error"] for c in doc["checks"] if "error" in c] == ["InvalidEnclaveCode"]  # only the failure


def test_expected_policy_mismatch_is_a_failed_check(
    honest: EnclaveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wanted = hashlib.sha256(b"another policy").hexdigest()
    code, out, _ = attest(capsys, honest.url, "--measurement", honest.measurement,
                          "--roots", roots_file(honest, tmp_path), "--expected-policy", wanted)
    assert code == 1
    assert rows(out)["owner_policy.sha256"] == "FAIL"
    assert f"expected  {wanted}" in out and f"found     {OWNER.digest()}" in out


def test_manifest_file_and_its_owner_policy(
    honest: EnclaveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = {"ovmf_sha256": "ab" * 32, "vcpus": 4, "vcpu_type": "EPYC-Milan", "vmm": "qemu",
              "guest_features": "0x1"}
    doc = {"schema": "blindbox-manifest-v2", "name": "fixture enclave", "version": "2.0",
           **manifest_validity(), "measurements": [{"digest": honest.measurement, "inputs": inputs}],
           "owner_policy": {"authentication_required": True, "egress_subset_of": []}}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc))
    roots = roots_file(honest, tmp_path)
    code, out, _ = attest(capsys, honest.url, "--manifest", str(path), "--roots", roots)
    assert code == 1
    table = rows(out)
    assert table["measurement"] == "pass"
    assert table["owner_policy.authentication"] == table["owner_policy.egress"] == "FAIL"
    assert "manifest: fixture enclave 2.0" in out and "unsigned" in out
    assert "found     allowlist [api.example.com:443]" in out
    # The same manifest through BLINDBOX_MANIFEST, without the failing requirement.
    doc["owner_policy"] = {"egress_subset_of": [{"host": "api.example.com", "ports": [443]}]}
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("BLINDBOX_MANIFEST", str(path))
    code, parsed = attest_json(capsys, honest.url, "--roots", roots)
    assert code == 0 and parsed["manifest"]["name"] == "fixture enclave"
    assert parsed["manifest"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert parsed["checks"][-1]["name"] == "owner_policy.egress"


def test_signed_manifest(honest: EnclaveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from blindbox.attest.manifest import sign_manifest

    inputs = {"ovmf_sha256": "ab" * 32, "vcpus": 4, "vcpu_type": "EPYC-Milan", "vmm": "qemu",
              "guest_features": "0x1"}
    data = json.dumps({"schema": "blindbox-manifest-v2", "name": "signed enclave", "version": "1",
                       **manifest_validity(3),
                       "measurements": [{"digest": honest.measurement, "inputs": inputs}]}).encode()
    key = ed25519.Ed25519PrivateKey.generate()
    paths = {name: tmp_path / name for name in ("manifest.json", "manifest.sig", "publisher.pem", "bad.sig")}
    paths["manifest.json"].write_bytes(data)
    paths["manifest.sig"].write_bytes(sign_manifest(data, key))
    paths["bad.sig"].write_bytes(sign_manifest(data, ed25519.Ed25519PrivateKey.generate()))
    paths["publisher.pem"].write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    common = [honest.url, "--manifest", str(paths["manifest.json"]), "--roots", roots_file(honest, tmp_path),
              "--publisher-key", str(paths["publisher.pem"])]
    code, _, err = attest(capsys, *common, "--manifest-signature", str(paths["manifest.sig"]))
    assert code == 2 and "--manifest-name" in err  # a pinned key needs the product's name
    common += ["--manifest-name", "signed enclave"]
    code, out, _ = attest(capsys, *common, "--manifest-signature", str(paths["manifest.sig"]))
    assert code == 0 and "manifest: signed enclave 1" in out and "signature verified" in out
    evidence_requests = len(honest.evidence_requests)
    code, _, err = attest(capsys, *common, "--manifest-signature", str(paths["manifest.sig"]),
                          "--min-sequence", "4")
    assert code != 0 and "expected at least 4 (min_sequence), found 3" in err
    code, _, err = attest(capsys, *[a if a != "signed enclave" else "other enclave" for a in common],
                          "--manifest-signature", str(paths["manifest.sig"]))
    assert code != 0 and "expected 'other enclave' (the product you asked for), found 'signed enclave'" in err
    code, out, err = attest(capsys, *common, "--manifest-signature", str(paths["bad.sig"]))
    assert code == 3 and out == ""  # a trust input failed verification: not a usage error, not a refusal
    assert err.startswith("blindbox attest: ManifestTrustError: signature: ") and "invalid one" in err
    code, _, err = attest(capsys, *common)
    assert code == 2 and "expected a detached signature" in err
    assert len(honest.evidence_requests) == evidence_requests  # refused before connecting


def test_simulated_evidence_fails_under_amd_roots(
    honest: EnclaveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = attest(capsys, honest.url, "--measurement", honest.measurement)
    assert code == 1
    assert "roots: AMD's pinned roots" in out
    assert rows(out)["genuine"] == "FAIL"


def test_server_without_evidence(blindbox_enclave_factory: Callable[..., EnclaveServer], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    server = blindbox_enclave_factory(faults=[Fault.NO_EVIDENCE])
    code, doc = attest_json(capsys, server.url, "--measurement", server.measurement,
                            "--roots", roots_file(server, tmp_path))
    assert code == 1
    assert doc["checks"][0]["verdict"] == "fail" and "found 404" in doc["checks"][0]["found"]
    assert [c["verdict"] for c in doc["checks"][1:]] == [NOT_EVALUATED, NOT_EVALUATED]


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    code, out, err = attest(capsys, f"127.0.0.1:{port}", "--measurement", OTHER, "--timeout", "2")
    assert code == 4 and out == ""  # could not complete: neither verified nor refused
    assert err == (f"blindbox attest: VerificationIncompleteError: cannot attest https://127.0.0.1:{port}: "
                   "ConnectionError: Connection refused\n")
    code, doc = attest_json(capsys, f"127.0.0.1:{port}", "--measurement", OTHER, "--timeout", "2")
    assert code == 4 and doc["passed"] is False and doc["checks"] == [] and "cannot attest" in doc["error"]


@pytest.mark.parametrize(("argv", "message"), [
    (["127.0.0.1:1"], "pass --measurement HEX"),
    (["127.0.0.1:1", "--measurement", "abc"], "96 hex characters"),
    (["http://127.0.0.1:1", "--measurement", OTHER], "plain HTTP"),
    (["127.0.0.1:1", "--measurement", OTHER, "--expected-policy", "xyz"], "64 hex"),
    (["127.0.0.1:1", "--measurement", OTHER, "--roots", "/nonexistent/roots.pem"], "cannot read roots"),
    (["127.0.0.1:1", "--manifest", "/nonexistent/manifest.json"], "cannot read"),
    (["127.0.0.1:1", "--measurement", OTHER, "--publisher-key", "/nonexistent/key.pem"], "cannot read"),
    (["127.0.0.1:1", "--measurement", OTHER, "--timeout", "0"], "timeout"),
])
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = attest(capsys, *argv)
    assert code == 2 and out == "" and message in err


def test_measurement_and_manifest_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = attest(capsys, "127.0.0.1:1", "--measurement", OTHER, "--manifest", "m.json")
    assert code == 2 and "not allowed with argument" in err


# -- one verdict for the CLI and the session ----------------------------------------------------------
SPKI = hashlib.sha256(b"stand-in for an SPKI").digest() * 2
NONCE = bytes(range(32))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    expected: type[AttestationError] | None
    evidence: Callable[[LiveEvidence], Evidence]
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)
    requirements: PolicyRequirements | None = None
    spki: bytes = SPKI
    nonce: bytes | None = NONCE


def _honest(source: LiveEvidence) -> Evidence:
    return source.evidence(spki_der=SPKI, nonce=NONCE, faults=frozenset())


def _fault(fault: Fault) -> Callable[[LiveEvidence], Evidence]:
    return lambda source: source.evidence(spki_der=SPKI, nonce=NONCE, faults=frozenset({fault}))


def _corrupt(source: LiveEvidence) -> Evidence:
    evidence = _honest(source)
    report = bytearray(evidence.report)
    report[0x2A0] ^= 1
    return dataclasses.replace(evidence, report=bytes(report))


CANONICAL = OWNER.to_bytes()
LOOSE = json.dumps(OWNER.to_dict(), indent=1).encode()
CASES = [
    Case("honest", None, _honest, {"policy": CANONICAL}, requirements=PolicyRequirements(
        exact_digest=OWNER.digest(), authentication_required=False, egress_subset_of=["api.example.com"])),
    Case("honest without policy", None, _honest),
    Case("corrupt signature", NotAnEnclaveError, _corrupt,
         requirements=PolicyRequirements(authentication_required=True)),
    Case("other TLS key", BindingMismatchError, _honest, spki=SPKI[::-1]),
    Case("other nonce", BindingMismatchError, _honest, nonce=bytes(32)),
    Case("no nonce asked", BindingMismatchError, _honest, nonce=None),
    # The binding fails first, but the appraisal is still evaluated (and fails too).
    Case("binding and measurement", BindingMismatchError, _fault(Fault.OTHER_MEASUREMENT), spki=SPKI[::-1]),
    Case("debug", InsecureGuestPolicyError, _fault(Fault.DEBUG_POLICY)),
    Case("debug allowed", None, _fault(Fault.DEBUG_POLICY), policy={"debug": Rule.ANY}),
    Case("other measurement", InvalidEnclaveCode, _fault(Fault.OTHER_MEASUREMENT),
         {"policy": CANONICAL}, requirements=PolicyRequirements(exact_digest="00" * 32)),
    Case("vmpl", PolicyViolationError, _honest, policy={"vmpls": [2]}),
    Case("digest", PolicyMismatchError, _honest, {"policy": CANONICAL},
         requirements=PolicyRequirements(exact_digest="00" * 32)),
    Case("no policy served", PolicyMismatchError, _honest,
         requirements=PolicyRequirements(egress_subset_of=[])),
    Case("egress", PolicyMismatchError, _honest, {"policy": CANONICAL},
         requirements=PolicyRequirements(egress_subset_of=[("api.example.com", 8443)])),
    Case("authentication", PolicyMismatchError, _honest, {"policy": CANONICAL},
         requirements=PolicyRequirements(authentication_required=True, egress_subset_of=["api.example.com"])),
    Case("non-canonical, digest matches", PolicyMismatchError, _honest, {"policy": LOOSE},
         requirements=PolicyRequirements(exact_digest=hashlib.sha256(LOOSE).hexdigest())),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_assessment_agrees_with_verify_evidence(case: Case) -> None:
    source = LiveEvidence.create(**case.source)
    evidence = case.evidence(source)
    policy = AttestationPolicy.for_measurements([source.measurement], **case.policy)
    kwargs: dict[str, Any] = {"spki_der": case.spki, "nonce": case.nonce, "policy": policy,
                              "requirements": case.requirements, "roots": source.roots_pem}
    assessment = assess_evidence(evidence, **kwargs)
    raised: AttestationError | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            attestation = verify_evidence(evidence, **kwargs)
        except AttestationError as exc:
            raised = exc
    assert type(raised) is case.expected if case.expected else raised is None
    assert assessment.passed is (raised is None)
    if raised is None:
        assert assessment.attestation is not None
        assert assessment.attestation.measurement == attestation.measurement
        assert assessment.attestation.policy_document == evidence.policy
        assert assessment.failures == ()
        return
    first = assessment.failures[0]
    assert first.error is type(raised)
    if first.name == "genuine":
        assert first.found == str(raised)
    elif first.error is not BindingMismatchError and not first.name.startswith("owner_policy."):
        assert first.message == str(raised)  # the appraisal raises its check's own message
    assert assessment.attestation is None
    names = [check.name for check in assessment.checks]
    assert names[0] == "genuine"
    if case.requirements is not None:
        assert names[-1].startswith("owner_policy.")
    if case.name == "binding and measurement":
        assert [check.name for check in assessment.failures] == ["binding", "measurement"]


def test_not_evaluated_checks_never_count_as_passed() -> None:
    source = LiveEvidence.create(policy=CANONICAL)
    requirements = PolicyRequirements(exact_digest=OWNER.digest(), authentication_required=False,
                                      egress_subset_of=["api.example.com"])
    policy = AttestationPolicy.for_measurements([source.measurement])
    assessment = assess_evidence(_corrupt(source), spki_der=SPKI, nonce=NONCE, policy=policy,
                                 requirements=requirements, roots=source.roots_pem)
    assert assessment.evaluated == 1 and not assessment.passed
    assert [c.name for c in assessment.checks] == [
        "genuine", "binding", "appraisal", "owner_policy.sha256", "owner_policy.authentication",
        "owner_policy.egress"]
    skipped = assessment.checks[1:]
    assert all(not check.passed and check.found == NOT_EVALUATED for check in skipped)
    assert [verdict for _, verdict in assessment.verdicts()] == ["fail"] + [NOT_EVALUATED] * 5
    assert [check.name for check in assessment.failures] == ["genuine"]
    assert assessment.summary() is None and assessment.attestation is None
    assert source.measurement in assessment.checks[2].expected  # what would have been required is shown
    # Evidence that could not even be obtained is assessed the same way.
    missing = assess_evidence(NotAnEnclaveError("evidence: expected HTTP 200, found 404"), spki_der=None,
                              nonce=NONCE, policy=policy)
    assert [(c.name, v) for c, v in missing.verdicts()] == [
        ("genuine", "fail"), ("binding", NOT_EVALUATED), ("appraisal", NOT_EVALUATED)]
    assert missing.checks[0].found == "evidence: expected HTTP 200, found 404"
    with pytest.raises(ValueError, match="spki_der"):
        assess_evidence(_honest(source), spki_der=None, nonce=NONCE, policy=policy)
