"""Shared helpers for the report-backend tests: a simulated firmware and an end-to-end check."""

from __future__ import annotations

import os

from blindbox.attest.binding import check_binding, expected_report_data
from blindbox.server.backends import RawEvidence
from blindbox.server.tls import TlsIdentity
from blindbox.snp import verify_report
from blindbox.snp.verify import VerifiedReport
from blindbox.testing.backend import SimulatedBackend

IDENTITY = TlsIdentity.generate()
POLICY = b'{"authentication": {"required": false}}'


def bound_request() -> tuple[bytes, bytes]:
    """A fresh nonce and the report_data that binds IDENTITY, POLICY and it (protocol v1)."""
    nonce = os.urandom(32)
    return nonce, expected_report_data(IDENTITY.spki_der, POLICY, nonce)


def verified(evidence: RawEvidence, firmware: SimulatedBackend, nonce: bytes) -> VerifiedReport:
    """Verify the report under the firmware's test roots with the table's certificates, and its binding."""
    result = verify_report(evidence.report, certificates=dict(evidence.certificates),
                           roots=firmware.roots_pem)
    check_binding(result.report.report_data, IDENTITY.spki_der, POLICY, nonce)
    return result
