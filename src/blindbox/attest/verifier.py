"""Client-side attestation: genuine hardware, bound to this connection, acceptable to the caller.

Two entry points run the same checks in the same order -- genuine SEV-SNP
evidence, the report_data binding, the appraisal policy, then the caller's
requirements on the data-owner policy:

- :func:`verify_evidence` stops at the first failure and raises its typed
  :class:`~blindbox.errors.AttestationError` (what a session enforces);
- :func:`assess_evidence` evaluates every check and returns them all (what
  ``blindbox attest`` prints). Its first failing check has the type
  :func:`verify_evidence` raises.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from blindbox.attest.binding import RECORDED, check_binding, expected_report_data, recorded_without_nonce
from blindbox.attest.evidence import Evidence
from blindbox.attest.owner_policy import OwnerPolicy, PolicyRequirements
from blindbox.attest.policy import AttestationPolicy, Check
from blindbox.errors import (
    AttestationError,
    BindingMismatchError,
    ConfigurationError,
    InvalidEnclaveCode,
    NotAnEnclaveError,
    PolicyMismatchError,
)
from blindbox.snp.roots import TrustRoots
from blindbox.snp.verify import KdsSource, VerifiedReport, verify_report

log = logging.getLogger("blindbox.attest")

#: The verdict of a check that could not run because the evidence is not genuine.
NOT_EVALUATED: Final = "not evaluated"
_NO_POLICY = "none (the enclave serves no data-owner policy)"


@dataclass(frozen=True)
class Attestation:
    """What was verified about one enclave TLS identity, for display and audit."""

    verified: VerifiedReport
    tls_spki_sha256: str
    policy_document: bytes | None
    nonce: bytes | None
    attested_at: _dt.datetime

    def __repr__(self) -> str:
        """One line (the full record is :meth:`summary`), never certificate or report bytes."""
        return (f"Attestation({self.verified.product.value}, measurement={self.measurement}, "
                f"roots={'AMD' if self.verified.roots_are_amd else 'caller-supplied'}, "
                f"tls_spki_sha256={self.tls_spki_sha256[:16]}..., policy_sha256="
                f"{'None' if self.policy_sha256 is None else self.policy_sha256[:16] + '...'}, "
                f"nonce={'yes' if self.nonce is not None else 'no'}, "
                f"attested_at={self.attested_at.isoformat(timespec='seconds')})")

    @property
    def measurement(self) -> str:
        return self.verified.report.measurement.hex()

    @property
    def policy_sha256(self) -> str | None:
        if self.policy_document is None:
            return None
        return hashlib.sha256(self.policy_document).hexdigest()

    @property
    def owner_policy(self) -> OwnerPolicy | None:
        """The served data-owner policy, parsed; None when none is served or it is not canonical v1.

        ``policy_document`` holds the exact bytes the report binds.
        """
        if self.policy_document is None:
            return None
        try:
            return OwnerPolicy.from_bytes(self.policy_document)
        except ConfigurationError:
            return None

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
            "data-owner policy": self._describe_owner_policy(),
            "TLS SPKI sha256": self.tls_spki_sha256,
            "nonce": self.nonce.hex() if self.nonce is not None else "none (recorded evidence)",
            "attested at": self.attested_at.isoformat(timespec="seconds"),
        }

    def _describe_owner_policy(self) -> str:
        if self.policy_document is None:
            return "none"
        parsed = self.owner_policy
        if parsed is None:
            return "not a canonical v1 document"
        return f"authentication {_describe_authentication(parsed)}; egress {_describe_egress(parsed)}"


@dataclass(frozen=True)
class Assessment:
    """Every check of one evidence document, in order, with its verdict.

    ``checks`` are genuineness ("genuine"), the binding ("binding"), every
    :meth:`AttestationPolicy.checks <blindbox.attest.policy.AttestationPolicy.checks>`
    entry, then one check per data-owner policy requirement. Only the first
    ``evaluated`` were run: when the evidence is not genuine nothing else can
    be checked, and the rest are listed with ``passed=False`` and the verdict
    ``"not evaluated"``, never as passed.
    """

    checks: tuple[Check, ...]
    evaluated: int
    _attestation: Attestation | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        """One line: the verdict and the failing checks' names."""
        failed = [check.name for check in self.failures]
        return (f"Assessment(passed={self.passed}, evaluated={self.evaluated}/{len(self.checks)}, "
                f"failures={failed})")

    @property
    def passed(self) -> bool:
        """True only when every check ran and passed (warnings allowed)."""
        return self.evaluated == len(self.checks) and all(check.passed for check in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        """The evaluated checks that failed, in order (the first is what :func:`verify_evidence` raises)."""
        return tuple(check for check in self.checks[: self.evaluated] if not check.passed)

    @property
    def attestation(self) -> Attestation | None:
        """The attestation, only when every check passed (what a session would pin)."""
        return self._attestation if self.passed else None

    def summary(self) -> dict[str, str] | None:
        """The genuine report's :meth:`Attestation.summary`, even when a later check failed; else None."""
        return self._attestation.summary() if self._attestation is not None else None

    def verdicts(self) -> list[tuple[Check, str]]:
        """Each check with its verdict: "pass", "warn", "fail" or "not evaluated"."""
        return [(check, check.verdict if index < self.evaluated else NOT_EVALUATED)
                for index, check in enumerate(self.checks)]

    def to_dict(self) -> list[dict[str, object]]:
        """The checks in JSON-friendly form (``Check.to_dict`` with the verdict above)."""
        return [{**check.to_dict(), "verdict": verdict} for check, verdict in self.verdicts()]


def verify_evidence(
    evidence: Evidence,
    *,
    spki_der: bytes,
    nonce: bytes | None,
    policy: AttestationPolicy,
    requirements: PolicyRequirements | None = None,
    roots: TrustRoots | str | bytes | None = None,
    at: _dt.datetime | None = None,
    kds: KdsSource | None = None,
) -> Attestation:
    """Run every check, in order: genuine SEV-SNP evidence, binding, appraisal, data-owner policy.

    Raises :class:`~blindbox.errors.NotAnEnclaveError` when the evidence is not
    genuine, :class:`~blindbox.errors.BindingMismatchError` when it does not
    bind this TLS key/policy/nonce, the policy's typed errors (such as
    :class:`~blindbox.errors.InvalidEnclaveCode`) when the enclave is not one the
    caller accepts, and :class:`~blindbox.errors.PolicyMismatchError` when the
    served data-owner policy does not meet ``requirements``. The policy
    document is checked only after the binding proved that the enclave
    committed to these exact bytes.
    """
    when = _when(at)
    verified = _verify_genuine(evidence, roots, when, kds)
    log.debug("evidence is genuine SEV-SNP (%s, %s)", verified.product.value, verified.signing_key.name)
    check_binding(verified.report.report_data, spki_der, evidence.policy, nonce)
    log.debug("report_data binds the TLS key%s", " and nonce" if nonce is not None else "")
    policy.appraise(verified)
    if requirements is not None:
        requirements.check(evidence.policy)
        log.debug("the data-owner policy meets the caller's requirements")
    return _attestation(verified, spki_der, evidence.policy, nonce, when)


def assess_evidence(
    evidence: Evidence | NotAnEnclaveError,
    *,
    spki_der: bytes | None,
    nonce: bytes | None,
    policy: AttestationPolicy,
    requirements: PolicyRequirements | None = None,
    roots: TrustRoots | str | bytes | None = None,
    at: _dt.datetime | None = None,
    kds: KdsSource | None = None,
) -> Assessment:
    """Evaluate every check :func:`verify_evidence` runs, in the same order, without stopping.

    ``evidence`` may instead be the :class:`~blindbox.errors.NotAnEnclaveError`
    met while obtaining it (no or malformed evidence document, or an
    unreadable TLS certificate, in which case ``spki_der`` is None): the
    "genuine" check then fails with its message. Raises only on the caller's
    own errors (a ``spki_der`` missing for evidence, unusable ``roots``).
    """
    if not isinstance(evidence, Evidence):
        return _not_genuine(evidence, spki_der, None, nonce, policy, requirements, roots,
                            evidence_known=False)
    if spki_der is None:
        raise ValueError("spki_der: required to assess evidence (it is what the report must bind)")
    when = _when(at)
    try:
        verified = _verify_genuine(evidence, roots, when, kds)
    except AttestationError as exc:
        return _not_genuine(exc, spki_der, evidence.policy, nonce, policy, requirements, roots,
                            evidence_known=True)
    served = evidence.policy
    found = (f"{verified.product.value} v{verified.report.version} report signed by a "
             f"{verified.signing_key.name}, chain to "
             f"{'AMD pinned roots' if verified.roots_are_amd else 'caller-supplied roots (NOT AMD)'}"
             f"{', revocation checked' if verified.revocation_checked else ''}")
    checks = (
        Check("genuine", True, _genuine_expectation(roots), found, NotAnEnclaveError, None),
        _binding_check(verified, spki_der, served, nonce),
        *policy.checks(verified),
        *_requirement_checks(requirements, served, evaluate=True),
    )
    return Assessment(checks=checks, evaluated=len(checks),
                      _attestation=_attestation(verified, spki_der, served, nonce, when))


# ------------------------------------------------------------------------------------- the checks


def _when(at: _dt.datetime | None) -> _dt.datetime:
    return at if at is not None else _dt.datetime.now(_dt.timezone.utc)


def _genuine_expectation(roots: object) -> str:
    amd = roots is None or (isinstance(roots, TrustRoots) and roots.is_amd)
    anchors = "AMD's pinned roots" if amd else "the caller-supplied roots (NOT AMD)"
    return f"genuine SEV-SNP evidence: a well-formed report signed by a VCEK or VLEK chaining to {anchors}"


def _not_genuine(error: AttestationError, spki_der: bytes | None, served: bytes | None,
                 nonce: bytes | None, policy: AttestationPolicy, requirements: PolicyRequirements | None,
                 roots: object, *, evidence_known: bool) -> Assessment:
    """"genuine" failed with ``error``; every later check is listed as not evaluated."""
    genuine = Check("genuine", False, _genuine_expectation(roots), str(error), type(error), None)
    later = (_binding_expectation(spki_der, served, nonce, evidence_known),
             _appraisal_expectation(policy), *_requirement_checks(requirements, served, evaluate=False))
    return Assessment(checks=(genuine, *later), evaluated=1)


def _verify_genuine(evidence: Evidence, roots: TrustRoots | str | bytes | None, when: _dt.datetime,
                    kds: KdsSource | None) -> VerifiedReport:
    return verify_report(
        evidence.report,
        certificates=dict(evidence.certificates) or None,
        roots=roots,
        at=when,
        kds=kds,
    )


def _attestation(verified: VerifiedReport, spki_der: bytes, policy: bytes | None, nonce: bytes | None,
                 when: _dt.datetime) -> Attestation:
    return Attestation(
        verified=verified,
        tls_spki_sha256=hashlib.sha256(spki_der).hexdigest(),
        policy_document=policy,
        nonce=nonce,
        attested_at=when,
    )


def _binding_terms(spki_der: bytes | None, served: bytes | None, nonce: bytes | None,
                   evidence_known: bool) -> str:
    key = ("an unreadable TLS certificate" if spki_der is None
           else f"TLS SPKI sha256 {hashlib.sha256(spki_der).hexdigest()}")
    if not evidence_known:
        document = "the served data-owner policy"
    elif served is None:
        document = "no data-owner policy"
    else:
        document = f"data-owner policy sha256 {hashlib.sha256(served).hexdigest()}"
    return f"{key}, {document}, {f'nonce {nonce.hex()}' if nonce is not None else 'no nonce'}"


def _binding_check(verified: VerifiedReport, spki_der: bytes, served: bytes | None,
                   nonce: bytes | None) -> Check:
    report_data = verified.report.report_data
    try:
        check_binding(report_data, spki_der, served, nonce)
        passed = True
    except BindingMismatchError:
        passed = False
    expected = (f"{expected_report_data(spki_der, served, nonce).hex()} (SHA-512 binding of "
                f"{_binding_terms(spki_der, served, nonce, evidence_known=True)})")
    if passed:
        reason = ""
    elif recorded_without_nonce(report_data, spki_der, served, nonce):
        reason = f"found {RECORDED}"
    else:
        reason = "the report was made for another TLS key, data-owner policy or nonce"
    return Check("binding", passed, expected, report_data.hex(), BindingMismatchError, None, reason)


def _binding_expectation(spki_der: bytes | None, served: bytes | None, nonce: bytes | None,
                         evidence_known: bool) -> Check:
    expected = f"report_data binding {_binding_terms(spki_der, served, nonce, evidence_known)}"
    return _not_evaluated("binding", expected, BindingMismatchError, None)


def _appraisal_expectation(policy: AttestationPolicy) -> Check:
    accepted = ", ".join(m.hex() for m in policy.measurements)
    expected = f"measurement one of [{accepted}], and every other appraisal-policy check"
    return _not_evaluated("appraisal", expected, InvalidEnclaveCode, "measurements")


def _not_evaluated(name: str, expected: str, error: type[AttestationError], setting: str | None) -> Check:
    return Check(name, False, expected, NOT_EVALUATED, error, setting,
                 "not evaluated: the evidence is not genuine, so nothing it says can be checked")


# ------------------------------------------------------------------------ data-owner policy checks


def _requirement_checks(requirements: PolicyRequirements | None, served: bytes | None, *,
                        evaluate: bool) -> list[Check]:
    """One check per requirement, each decided by :meth:`PolicyRequirements.check` on its own.

    A requirement that is met passes only when the document is also present
    and canonical v1, exactly as the combined ``check`` demands, so all rows
    pass if and only if ``requirements.check(served)`` does.
    """
    if requirements is None:
        return []
    parsed: OwnerPolicy | None = None
    invalid = ""
    if served is not None:
        try:
            parsed = OwnerPolicy.from_bytes(served)
        except ConfigurationError as exc:
            invalid = f"not a canonical v1 document ({exc})"

    def found(describe: Callable[[OwnerPolicy], str]) -> str:
        if served is None:
            return _NO_POLICY
        return describe(parsed) if parsed is not None else invalid

    rows: list[tuple[str, str, str, PolicyRequirements]] = []
    if requirements.exact_digest is not None:
        digest = _NO_POLICY if served is None else hashlib.sha256(served).hexdigest()
        if served is not None and parsed is None:
            digest += f", {invalid}"
        rows.append(("owner_policy.sha256", requirements.exact_digest, digest,
                     PolicyRequirements(exact_digest=requirements.exact_digest)))
    if requirements.authentication_required is not None:
        wanted = requirements.authentication_required
        rows.append(("owner_policy.authentication", "required" if wanted else "not required",
                     found(_describe_authentication), PolicyRequirements(authentication_required=wanted)))
    if requirements.egress_subset_of is not None:
        within = ", ".join(_destination(host, port) for host, port in requirements.egress_destinations())
        rows.append(("owner_policy.egress", f"deny-all or destinations within [{within or 'nothing'}]",
                     found(_describe_egress),
                     PolicyRequirements(egress_subset_of=requirements.egress_subset_of)))
    checks = []
    for name, expected, shown, single in rows:
        if not evaluate:
            checks.append(_not_evaluated(name, expected, PolicyMismatchError, "expected_policy"))
            continue
        try:
            single.check(served)
            passed = True
        except PolicyMismatchError:
            passed = False
        checks.append(Check(name, passed, expected, shown, PolicyMismatchError, "expected_policy"))
    return checks


def _describe_authentication(policy: OwnerPolicy) -> str:
    if not policy.authentication_required:
        return "not required"
    return (f"required ({len(policy.bearer_token_sha256)} bearer-token and "
            f"{len(policy.client_certificate_spki_sha256)} client-certificate digests accepted)")


def _describe_egress(policy: OwnerPolicy) -> str:
    if policy.deny_all_egress:
        return "deny-all"
    allowed = ", ".join(_destination(rule.host, port) for rule in policy.egress_allow for port in rule.ports)
    return f"allowlist [{allowed}]"


def _destination(host: str, port: int | None) -> str:
    return f"{f'[{host}]' if ':' in host else host}:{'*' if port is None else port}"


__all__ = ["NOT_EVALUATED", "Assessment", "Attestation", "assess_evidence", "verify_evidence"]
