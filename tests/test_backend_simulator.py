"""The simulator backend and RawEvidence: same protocol as the kernel backends, test roots only."""

from __future__ import annotations

import subprocess
import sys

import pytest

from blindbox.errors import NotAnEnclaveError
from blindbox.server.backends import MalformedEvidenceError, RawEvidence, ReportBackend, ReportRequestError
from blindbox.snp import verify_report
from blindbox.testing.backend import SimulatedBackend
from tests.backend_support import bound_request, verified


def test_simulator_implements_the_protocol_and_verifies_under_test_roots_only() -> None:
    simulator = SimulatedBackend.create(running_vmpl=1)
    assert isinstance(simulator, ReportBackend) and simulator.name == "simulator"
    nonce, report_data = bound_request()
    evidence = simulator.get_report(report_data)
    assert verified(evidence, simulator, nonce).report.vmpl == 1
    with pytest.raises(NotAnEnclaveError):
        verify_report(evidence.report, certificates=dict(evidence.certificates))  # AMD's roots
    assert simulator.get_report(report_data, vmpl=3).report != evidence.report


def test_simulator_refuses_a_vmpl_below_the_running_one() -> None:
    with pytest.raises(ReportRequestError, match="VMPL 0 is below the VMPL 1 the guest runs at"):
        SimulatedBackend.create(running_vmpl=1).get_report(bytes(64), vmpl=0)


def test_raw_evidence_is_checked() -> None:
    report = SimulatedBackend.create().get_report(bytes(64)).report
    with pytest.raises(MalformedEvidenceError, match="expected a 1184-byte report, found 1183"):
        RawEvidence(report=report[:-1], backend="x")
    with pytest.raises(MalformedEvidenceError, match="certificate table is malformed"):
        RawEvidence(report=report, cert_table=b"\x01" * 48, backend="x")
    assert dict(RawEvidence(report=report, cert_table=bytes(4096)).certificates) == {}
    assert "1184 bytes" in repr(RawEvidence(report=report)) and report.hex()[:32] not in repr(
        RawEvidence(report=report))


def test_the_server_layer_never_imports_the_test_kit() -> None:
    code = ("import sys, blindbox.server.backends, blindbox.server.backends.probe; "
            "print(sorted(m for m in sys.modules if m.startswith('blindbox.testing')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
