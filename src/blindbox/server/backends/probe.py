"""Choosing a report backend: configfs-tsm first, then ``/dev/sev-guest``, never a simulator.

Security property: :func:`probe_backend` only ever returns a backend that talks
to the kernel's SEV-SNP guest driver; when neither interface works it raises,
naming why each was skipped. It never falls back to simulated evidence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from blindbox.server.backends.base import ReportBackend
from blindbox.server.backends.configfs_tsm import DEFAULT_ROOT, ConfigfsIo, ConfigfsTsmBackend
from blindbox.server.backends.errors import (
    BackendPermissionError,
    BackendUnavailableError,
    ReportBackendError,
)
from blindbox.server.backends.sev_guest import DEFAULT_DEVICE, IoctlFunction, SevGuestBackend


@dataclass(frozen=True)
class ProbeResult:
    """The backend chosen, why, and why each interface tried before it was skipped."""

    backend: ReportBackend
    reason: str
    skipped: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the agent's start-up log."""
        text = f"report backend: {self.backend.name} ({self.reason})"
        if self.skipped:
            text += "; skipped: " + "; ".join(self.skipped)
        return text


def probe_backend(
    *,
    configfs_root: str | os.PathLike[str] = DEFAULT_ROOT,
    device: str | os.PathLike[str] = DEFAULT_DEVICE,
    configfs_io: ConfigfsIo | None = None,
    ioctl: IoctlFunction | None = None,
) -> ProbeResult:
    """Try configfs-tsm, then ``/dev/sev-guest``; return the first that works.

    Raises :class:`BackendPermissionError` when an interface exists but needs
    root, else :class:`BackendUnavailableError`, each listing every reason.
    """
    configfs = ConfigfsTsmBackend(configfs_root, io=configfs_io)
    sev_guest = SevGuestBackend(device) if ioctl is None else SevGuestBackend(device, ioctl=ioctl)
    candidates: tuple[ConfigfsTsmBackend | SevGuestBackend, ...] = (configfs, sev_guest)
    skipped: list[str] = []
    denied = False
    for backend in candidates:
        try:
            reason = backend.probe()
        except BackendPermissionError as exc:
            denied = True
            skipped.append(str(exc))
        except ReportBackendError as exc:
            skipped.append(str(exc))
        else:
            return ProbeResult(backend=backend, reason=reason, skipped=tuple(skipped))
    message = "no SEV-SNP report interface is usable: " + "; ".join(skipped)
    if denied:
        raise BackendPermissionError(message)
    raise BackendUnavailableError(message)
