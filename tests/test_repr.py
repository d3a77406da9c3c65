"""repr() of what verification returns is one short line, never certificate or report bytes.

A notebook cell that shows ``session.attestation`` used to print ~40 KB of DER.
"""

from __future__ import annotations

import datetime as dt

import pytest

import blindbox.requests as br
from blindbox.attest.policy import AttestationPolicy
from blindbox.attest.verifier import assess_evidence
from blindbox.snp import AmdCertificate, Product, amd_roots, verify_report
from blindbox.snp.crl import RevocationList
from blindbox.snp.report import AttestationReport
from blindbox.testing.platform import SoftwarePlatform

from .conftest import ReportVector, report_vectors
from .requests_support import enclave, session_kwargs

#: Generous for one line; the DER of one AMD chain alone is about 4 KB.
MAX_REPR = 600


def assert_one_line(value: object, *must_show: str) -> str:
    text = repr(value)
    assert "\n" not in text and len(text) <= MAX_REPR, f"{len(text)} chars: {text[:200]}..."
    assert "b'" not in text and 'b"' not in text and "\\x" not in text, text  # no raw bytes
    for shown in must_show:
        assert shown in text, f"{shown!r} not in {text}"
    return text


@pytest.fixture(scope="module")
def genoa() -> ReportVector:
    return next(v for v in report_vectors() if v.entry["product"].lower() == "genoa")


def test_a_verified_real_report_and_its_parts(genoa: ReportVector) -> None:
    verified = verify_report(genoa.report, certificates=genoa.cert, at=genoa.at)
    measurement = verified.report.measurement.hex()
    assert_one_line(verified, "Genoa", "VCEK", measurement, "'ARK-Genoa'")
    assert_one_line(verified.report, measurement, f"v{verified.report.version}")
    assert_one_line(verified.certificate, "'SEV-VCEK'", "'SEV-Genoa'", "serial=0x0",
                    verified.certificate.fingerprint_sha256[:16])
    assert_one_line(verified.chain, "'SEV-VCEK' <- 'SEV-Genoa' <- 'ARK-Genoa'", "roots_are_amd=True")
    assert_one_line(AttestationReport.from_bytes(genoa.report), measurement)
    for anchor in amd_roots().anchors:
        assert_one_line(anchor.certificate, anchor.certificate.common_name)


def test_session_attestation_and_assessment() -> None:
    with enclave() as server:
        with br.SecureSession(server.url, **session_kwargs(server)) as session:
            attestation = session.attestation
            spki = server.identity.spki_der
            evidence = server.source.evidence(spki_der=spki, nonce=None, faults=frozenset())
    assert_one_line(attestation, server.measurement, "roots=caller-supplied", "nonce=yes")
    assert_one_line(evidence, "report=1184 bytes")
    policy = AttestationPolicy(measurements=(bytes.fromhex(server.measurement),))
    passed = assess_evidence(evidence, spki_der=spki, nonce=None, policy=policy, roots=server.roots_pem)
    assert_one_line(passed, "passed=True", "failures=[]")
    refused = assess_evidence(evidence, spki_der=b"other key", nonce=None, policy=policy,
                              roots=server.roots_pem)
    assert_one_line(refused, "passed=False", "'binding'")


def test_a_revocation_list() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    der = SoftwarePlatform().crl(Product.MILAN, revoked=(0x10001, 0x10002), this_update=now,
                                 next_update=now + dt.timedelta(days=7))
    assert_one_line(RevocationList.from_der(der), "'ARK-Milan'", "0x10001", "0x10002")


def test_the_check_sees_bytes(genoa: ReportVector) -> None:
    """Control: what the generated dataclass repr showed (the DER) fails the check."""
    certificate = AmdCertificate.from_der(genoa.cert)
    with pytest.raises(AssertionError):
        assert_one_line((certificate.common_name, certificate.der))
    with pytest.raises(AssertionError):
        assert_one_line(certificate.der[:40])


def test_session_attestation_is_never_none() -> None:
    """``session.attestation`` is typed ``Attestation``: attested at construction, or on access."""
    with enclave() as server:
        with br.SecureSession(server.url, **session_kwargs(server)) as session:
            first = session.attestation
            assert first.measurement == server.measurement
            assert len(server.evidence_requests) == 1
            # A session whose pins are gone (white-box: nothing public drops them) attests again.
            session._adapter.attestor._pins.clear()
            session.get_adapter(session.base_url).close()
            again = session.attestation
            assert again.measurement == server.measurement and again is not first
            assert len(server.evidence_requests) == 2
