"""Typed failures of the report backends: each says what happened and what to do.

They are not :class:`~blindbox.errors.AttestationError`\\ s: they happen inside
the enclave, before any evidence exists, and tell its operator how to fix the
guest (load a module, run as root, reboot). No message carries key material
or report bytes; text that came from the kernel or a file goes through
:func:`blindbox._text.shown`.
"""

from __future__ import annotations


class ReportBackendError(Exception):
    """A report backend could not produce evidence."""


class BackendUnavailableError(ReportBackendError):
    """The interface is absent here (no module, configfs not mounted, another TEE's provider)."""


class BackendPermissionError(ReportBackendError):
    """The interface exists but this process may not use it (it needs root)."""


class ReportRequestError(ReportBackendError):
    """The request was refused as invalid (VMPL out of range or below the guest's floor, bad size)."""


class ReportBusyError(ReportBackendError):
    """The host stayed busy (throttling) through every bounded retry; try again later."""


class ReportRaceError(ReportBackendError):
    """Another writer changed the configfs-tsm entry while the report was read (bounded retries spent)."""


class FirmwareError(ReportBackendError):
    """The AMD secure processor or the host refused the request.

    ``fw_error`` and ``vmm_error`` hold the halves of SW_EXITINFO2 when known.
    """

    def __init__(self, message: str, *, fw_error: int | None = None, vmm_error: int | None = None) -> None:
        super().__init__(message)
        self.fw_error = fw_error
        self.vmm_error = vmm_error


class VmpckDisabledError(ReportBackendError):
    """The guest driver has wiped its VMPCK: no report can be had until the VM reboots."""


class MalformedEvidenceError(ReportBackendError):
    """The kernel returned evidence of the wrong size or shape, or for other report_data."""


__all__ = [
    "BackendPermissionError",
    "BackendUnavailableError",
    "FirmwareError",
    "MalformedEvidenceError",
    "ReportBackendError",
    "ReportBusyError",
    "ReportRaceError",
    "ReportRequestError",
    "VmpckDisabledError",
]
