"""Client-side attestation: genuine hardware, bound to this connection, acceptable to the caller."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from dataclasses import dataclass

from blindbox.attest.binding import check_binding
from blindbox.attest.evidence import Evidence
from blindbox.attest.policy import AttestationPolicy
from blindbox.snp.roots import TrustRoots
from blindbox.snp.verify import KdsSource, VerifiedReport, verify_report

log = logging.getLogger("blindbox.attest")


@dataclass(frozen=True)
class Attestation:
    """What was verified about one enclave TLS identity, for display and audit."""

    verified: VerifiedReport
    tls_spki_sha256: str
    policy_document: bytes | None
    nonce: bytes | None
    attested_at: _dt.datetime

    @property
    def measurement(self) -> str:
        return self.verified.report.measurement.hex()

    @property
    def policy_sha256(self) -> str | None:
        if self.policy_document is None:
            return None
        return hashlib.sha256(self.policy_document).hexdigest()

    def summary(self) -> dict[str, str]:
        """A flat, human-readable view (all values strings), in display order."""
        report = self.verified.report
        chip = "masked" if report.chip_id_masked else report.chip_id.hex()
        return {
            "product": self.verified.product.value,
            "report version": str(report.version),
            "signing key": report.signing_key.name,
            "roots": "AMD (pinned)" if self.verified.roots_are_amd else "caller-supplied (NOT AMD)",
            "measurement": report.measurement.hex(),
            "chip id": chip,
            "reported TCB": str(report.reported_tcb),
            "current TCB": str(report.current_tcb),
            "committed TCB": str(report.committed_tcb),
            "launch TCB": str(report.launch_tcb),
            "firmware": str(report.current_version),
            "guest policy": f"0x{report.policy.raw:x} (debug {'on' if report.policy.debug else 'off'}, "
            f"migration agent {'on' if report.policy.migrate_ma else 'off'})",
            "vmpl": str(report.vmpl),
            "data-owner policy sha256": self.policy_sha256 or "none",
            "TLS SPKI sha256": self.tls_spki_sha256,
            "nonce": self.nonce.hex() if self.nonce is not None else "none (recorded evidence)",
            "attested at": self.attested_at.isoformat(timespec="seconds"),
        }


def verify_evidence(
    evidence: Evidence,
    *,
    spki_der: bytes,
    nonce: bytes | None,
    policy: AttestationPolicy,
    roots: TrustRoots | str | bytes | None = None,
    at: _dt.datetime | None = None,
    kds: KdsSource | None = None,
) -> Attestation:
    """Run every check, in order: genuine SEV-SNP evidence, binding, then appraisal.

    Raises :class:`~blindbox.errors.NotAnEnclaveError` when the evidence is not
    genuine, :class:`~blindbox.errors.BindingMismatchError` when it does not
    bind this TLS key/policy/nonce, and the policy's typed errors (such as
    :class:`~blindbox.errors.InvalidEnclaveCode`) when the enclave is not one the
    caller accepts.
    """
    when = at if at is not None else _dt.datetime.now(_dt.timezone.utc)
    verified = verify_report(
        evidence.report,
        certificates=dict(evidence.certificates) or None,
        roots=roots,
        at=when,
        kds=kds,
    )
    log.debug("evidence is genuine SEV-SNP (%s, %s)", verified.product.value, verified.signing_key.name)
    check_binding(verified.report.report_data, spki_der, evidence.policy, nonce)
    log.debug("report_data binds the TLS key%s", " and nonce" if nonce is not None else "")
    policy.appraise(verified)
    return Attestation(
        verified=verified,
        tls_spki_sha256=hashlib.sha256(spki_der).hexdigest(),
        policy_document=evidence.policy,
        nonce=nonce,
        attested_at=when,
    )
