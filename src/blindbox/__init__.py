"""BlindBox: send data only to genuine, attested AMD SEV-SNP confidential VMs."""

from blindbox.errors import (
    AttestationError,
    ConfigurationError,
    InvalidEnclaveCode,
    NotAnEnclaveError,
)

__version__ = "0.3.0"

__all__ = [
    "AttestationError",
    "ConfigurationError",
    "InvalidEnclaveCode",
    "NotAnEnclaveError",
    "__version__",
]
