"""probe_backend: configfs-tsm first, then /dev/sev-guest, reasons for each skip, never a simulator."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from blindbox.server.backends import (
    BackendPermissionError,
    BackendUnavailableError,
    ConfigfsTsmBackend,
    SevGuestBackend,
    probe_backend,
)
from blindbox.testing.backend import SimulatedBackend
from blindbox.testing.guest_kernel import EmulatedConfigfs, EmulatedSevGuest
from tests.backend_support import bound_request, verified

FIRMWARE = SimulatedBackend.create()


def test_configfs_tsm_is_preferred(tmp_path: Path) -> None:
    tree = EmulatedConfigfs(tmp_path / "report", FIRMWARE)
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    result = probe_backend(configfs_root=tree.root, configfs_io=tree, device=device,
                           ioctl=EmulatedSevGuest(FIRMWARE))
    assert isinstance(result.backend, ConfigfsTsmBackend) and result.skipped == ()
    assert result.describe().startswith("report backend: configfs-tsm (configfs-tsm at ")
    assert len(tree.removed) == 1 and list(tree.root.iterdir()) == []  # the probe entry is gone
    nonce, report_data = bound_request()
    verified(result.backend.get_report(report_data), FIRMWARE, nonce)


def test_sev_guest_when_configfs_is_absent(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    kernel = EmulatedSevGuest(FIRMWARE)
    result = probe_backend(configfs_root=tmp_path / "no-configfs", device=device, ioctl=kernel)
    assert isinstance(result.backend, SevGuestBackend)
    [skip] = result.skipped
    assert skip.startswith("configfs-tsm: ") and "mount configfs" in skip
    assert "skipped: configfs-tsm:" in result.describe()
    assert kernel.calls == []  # probing makes no guest request
    nonce, report_data = bound_request()
    verified(result.backend.get_report(report_data), FIRMWARE, nonce)


def test_sev_guest_when_configfs_has_another_provider(tmp_path: Path) -> None:
    tree = EmulatedConfigfs(tmp_path / "report", FIRMWARE, provider="tdx_guest")
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    result = probe_backend(configfs_root=tree.root, configfs_io=tree, device=device,
                           ioctl=EmulatedSevGuest(FIRMWARE))
    assert result.backend.name == "sev-guest"
    assert "provider is 'tdx_guest'" in result.skipped[0]
    assert list(tree.root.iterdir()) == []


def test_nothing_usable_names_every_reason_and_never_simulates(tmp_path: Path) -> None:
    tree = EmulatedConfigfs(tmp_path / "report", FIRMWARE, provider=None)
    with pytest.raises(BackendUnavailableError) as info:
        probe_backend(configfs_root=tree.root, configfs_io=tree, device=tmp_path / "sev-guest")
    message = str(info.value)
    assert message.startswith("no SEV-SNP report interface is usable: configfs-tsm: ")
    assert "ENXIO" in message and "; sev-guest: cannot open" in message
    assert "simulat" not in message


def test_permission_problems_are_reported_as_such(tmp_path: Path) -> None:
    tree = EmulatedConfigfs(tmp_path / "report", FIRMWARE)
    tree.mkdir_errors.append(errno.EACCES)
    with pytest.raises(BackendPermissionError, match="run the agent as root"):
        probe_backend(configfs_root=tree.root, configfs_io=tree, device=tmp_path / "sev-guest")
