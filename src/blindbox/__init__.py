"""BlindBox: send data only to genuine, attested AMD SEV-SNP confidential VMs."""

import logging

from blindbox.errors import (
    AttestationError,
    ConfigurationError,
    InvalidEnclaveCode,
    NotAnEnclaveError,
)

__version__ = "0.3.0"

# A library configures no logging output of its own: applications do (logger "blindbox").
logging.getLogger("blindbox").addHandler(logging.NullHandler())

__all__ = [
    "AttestationError",
    "ConfigurationError",
    "InvalidEnclaveCode",
    "NotAnEnclaveError",
    "__version__",
]
