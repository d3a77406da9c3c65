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


class PolicyMismatchError(AttestationError):
    """The enclave's data-owner policy document does not meet the caller's requirements."""


class OriginRefusedError(AttestationError):
    """A request would have left the attested origin (other host, plain HTTP, redirect)."""


class ConfigurationError(ValueError):
    """The caller's configuration cannot give a secure result (e.g. no expected measurement)."""


__all__ = [
    "AttestationError",
    "BindingMismatchError",
    "ConfigurationError",
    "InsecureGuestPolicyError",
    "InvalidEnclaveCode",
    "NotAnEnclaveError",
    "OriginRefusedError",
    "PolicyMismatchError",
    "PolicyViolationError",
]
