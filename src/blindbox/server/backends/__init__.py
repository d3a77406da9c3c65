"""Report backends: where the enclave agent gets SEV-SNP evidence from the kernel.

Security property: every backend returns a report for exactly the
report_data (and VMPL) asked for, byte for byte as the kernel produced it,
with the host's certificate table parsed strictly; :func:`probe_backend`
never chooses simulated evidence. The test kit's simulator
(``blindbox.testing.backend``) implements the same protocol and is imported
only when asked for; nothing here imports ``blindbox.testing``.
"""

from blindbox.server.backends.base import MAX_VMPL, REPORT_DATA_SIZE, RawEvidence, ReportBackend
from blindbox.server.backends.configfs_tsm import ConfigfsIo, ConfigfsTsmBackend
from blindbox.server.backends.errors import (
    BackendPermissionError,
    BackendUnavailableError,
    FirmwareError,
    MalformedEvidenceError,
    ReportBackendError,
    ReportBusyError,
    ReportRaceError,
    ReportRequestError,
    VmpckDisabledError,
)
from blindbox.server.backends.probe import ProbeResult, probe_backend
from blindbox.server.backends.sev_guest import SevGuestBackend

__all__ = [
    "MAX_VMPL",
    "REPORT_DATA_SIZE",
    "BackendPermissionError",
    "BackendUnavailableError",
    "ConfigfsIo",
    "ConfigfsTsmBackend",
    "FirmwareError",
    "MalformedEvidenceError",
    "ProbeResult",
    "RawEvidence",
    "ReportBackend",
    "ReportBackendError",
    "ReportBusyError",
    "ReportRaceError",
    "ReportRequestError",
    "SevGuestBackend",
    "VmpckDisabledError",
    "probe_backend",
]
