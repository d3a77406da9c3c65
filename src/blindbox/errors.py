"""BlindBox's exception hierarchy.

Every attestation failure is an :class:`AttestationError`, which is also a
``requests.exceptions.ConnectionError`` so that code written for ``requests``
keeps working: a refused enclave is a connection that could not be trusted.
"""

from __future__ import annotations

from requests.exceptions import ConnectionError as _RequestsConnectionError


class AttestationError(_RequestsConnectionError):
    """The server could not be shown to be a trusted SEV-SNP enclave."""


class NotAnEnclaveError(AttestationError):
    """The evidence is missing, malformed, or not genuine AMD SEV-SNP evidence."""


class InvalidEnclaveCode(AttestationError):
    """Genuine SEV-SNP evidence, but the launch measurement is not an accepted one."""


class BindingMismatchError(AttestationError):
    """Genuine evidence that does not bind this TLS key, policy or nonce."""


class InsecureGuestPolicyError(AttestationError):
    """The guest policy allows something the appraisal forbids (debug, migration agent...)."""


class PolicyViolationError(AttestationError):
    """A platform or report field fails the appraisal policy (TCB, VMPL, platform info...)."""


class TcbTooLowError(PolicyViolationError):
    """The platform's TCB or firmware is below a minimum the appraisal policy requires."""


class PolicyMismatchError(AttestationError):
    """The enclave's data-owner policy document does not meet the caller's requirements."""


class OriginRefusedError(AttestationError):
    """A request would have left the attested origin (other host, plain HTTP, redirect)."""


class VerificationIncompleteError(AttestationError):
    """Verification could not be completed (network, AMD KDS, an offline cache miss).

    Neither verified nor refused: the enclave may be genuine, but nothing was shown. No data is sent.
    """


class ConfigurationError(ValueError):
    """The caller's configuration cannot give a secure result (e.g. no expected measurement)."""


class OutdatedTcbWarning(UserWarning):
    """An accepted enclave runs below the TCB that AMD's security bulletins name as fixed."""


class ManifestStateWarning(UserWarning):
    """The manifest rollback state (highest sequence seen) could not be read or recorded.

    The manifest was still checked against every other rule and any mark already recorded; only
    the protection that the mark would give to later sessions is missing.
    """


class MeasurementError(ConfigurationError):
    """Measurement inputs that cannot give a trustworthy SEV-SNP digest (e.g. OVMF without SNP metadata)."""


class ManifestError(ConfigurationError):
    """An enclave manifest is malformed, unsigned when a publisher key is pinned, or badly signed."""


class ManifestTrustError(ManifestError):
    """A signed manifest failed a trust check: signature, identity (name), freshness or rollback."""


__all__ = [
    "AttestationError",
    "BindingMismatchError",
    "ConfigurationError",
    "InsecureGuestPolicyError",
    "InvalidEnclaveCode",
    "ManifestError",
    "ManifestStateWarning",
    "ManifestTrustError",
    "MeasurementError",
    "NotAnEnclaveError",
    "OriginRefusedError",
    "OutdatedTcbWarning",
    "PolicyMismatchError",
    "PolicyViolationError",
    "TcbTooLowError",
    "VerificationIncompleteError",
]
