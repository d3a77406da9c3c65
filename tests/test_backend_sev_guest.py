"""The /dev/sev-guest backend against an emulated sev-guest driver (blindbox.testing.guest_kernel).

The emulated ioctl reads the request from process memory at the addresses in the 32-byte header, by
the offsets of include/uapi/linux/sev-guest.h, and writes the response, certificates, certs_len and
exitinfo2 back as sev-guest.c does, including every error row of the interface: INVALID_LEN with the
needed length, BUSY, firmware errors (after which the VMPCK is wiped), bad status and report_size.
"""

from __future__ import annotations

import errno
from collections import deque
from pathlib import Path

import pytest

from blindbox.server.backends import (
    BackendPermissionError,
    BackendUnavailableError,
    FirmwareError,
    MalformedEvidenceError,
    ReportBackendError,
    ReportBusyError,
    ReportRequestError,
    SevGuestBackend,
    VmpckDisabledError,
)
from blindbox.snp import verify_report
from blindbox.testing.backend import SimulatedBackend
from blindbox.testing.guest_kernel import SNP_GET_EXT_REPORT, SNP_GET_REPORT, EmulatedSevGuest
from tests.backend_support import bound_request, verified

FIRMWARE = SimulatedBackend.create()
TABLE_PAGES = -(-len(FIRMWARE.get_report(bytes(64)).cert_table) // 4096)


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    return path


def backend(device: Path, kernel: EmulatedSevGuest, sleeps: list[float] | None = None,
            **kwargs: object) -> SevGuestBackend:
    slept = sleeps if sleeps is not None else []
    return SevGuestBackend(device, ioctl=kernel, sleep=slept.append, **kwargs)  # type: ignore[arg-type]


def test_extended_report_verifies_and_carries_exactly_the_request(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE)
    nonce, report_data = bound_request()
    evidence = backend(device, kernel).get_report(report_data)
    [call] = kernel.calls
    assert call.request == SNP_GET_EXT_REPORT == 0xC0205302
    assert call.msg_version == 1
    assert call.user_data == report_data and call.vmpl == 0 and call.reserved == bytes(28)
    assert call.certs_len == 0x4000 and call.certs_address
    assert len(evidence.cert_table) == 0x4000  # the whole buffer, zero after the table
    assert set(evidence.certificates) == {"vcek", "ask", "ark"}
    assert verified(evidence, FIRMWARE, nonce).report.vmpl == 0


def test_vmpl_is_passed_through(device: Path) -> None:
    firmware = SimulatedBackend.create(running_vmpl=1)
    kernel = EmulatedSevGuest(firmware, running_vmpl=1)
    nonce, report_data = bound_request()
    evidence = backend(device, kernel).get_report(report_data, vmpl=3)
    assert kernel.calls[0].vmpl == 3
    assert verified(evidence, firmware, nonce).report.vmpl == 3


def test_plain_report_without_certificates(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE)
    report_data = bound_request()[1]
    evidence = backend(device, kernel, certificates=False).get_report(report_data, vmpl=0)
    [call] = kernel.calls
    assert call.request == SNP_GET_REPORT == 0xC0205300 and call.certs_len is None
    assert call.user_data == report_data
    assert evidence.cert_table == b"" and dict(evidence.certificates) == {}
    vcek = FIRMWARE.get_report(bytes(64)).certificates  # same chip and TCB: what KDS would serve
    result = verify_report(evidence.report, certificates=dict(vcek), roots=FIRMWARE.roots_pem)
    assert result.report.report_data == report_data


def test_invalid_len_is_retried_with_the_length_the_host_asked_for(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE)
    nonce, report_data = bound_request()
    evidence = backend(device, kernel, certs_len=0).get_report(report_data)
    assert TABLE_PAGES >= 2
    assert [c.certs_len for c in kernel.calls] == [0, TABLE_PAGES * 4096]
    assert all(c.user_data == report_data for c in kernel.calls)
    assert len(evidence.cert_table) == TABLE_PAGES * 4096
    verified(evidence, FIRMWARE, nonce)


def test_invalid_len_beyond_the_kernel_maximum_is_an_error(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("certs_pages", 5)]))
    with pytest.raises(FirmwareError, match=r"asked for a 20480-byte certificate buffer .* up to 16384") as i:
        backend(device, kernel, certs_len=4096).get_report(bytes(64))
    assert i.value.vmm_error == 1 and len(kernel.calls) == 1


def test_invalid_len_twice_is_an_error(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([None, ("certs_pages", 4)]))
    with pytest.raises(FirmwareError, match="too large or inconsistent"):
        backend(device, kernel, certs_len=0).get_report(bytes(64))
    assert [c.certs_len for c in kernel.calls] == [0, TABLE_PAGES * 4096]


def test_busy_is_retried_with_bounded_backoff(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("busy", 0), ("busy", 0)]))
    sleeps: list[float] = []
    nonce, report_data = bound_request()
    verified(backend(device, kernel, sleeps).get_report(report_data), FIRMWARE, nonce)
    assert sleeps == [2.0, 4.0] and len(kernel.calls) == 3


def test_busy_is_bounded(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("busy", 0)] * 4))
    sleeps: list[float] = []
    with pytest.raises(ReportBusyError, match=r"BUSY .*4 times in a row; try again later"):
        backend(device, kernel, sleeps).get_report(bytes(64))
    assert sleeps == [2.0, 4.0, 8.0]


def test_firmware_error_then_the_vmpck_is_gone(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("fw", 0x27)]))
    b = backend(device, kernel)
    with pytest.raises(FirmwareError, match=r"fw_error 0x27, vmm_error 0x0.*reboot the VM") as info:
        b.get_report(bytes(64))
    assert (info.value.fw_error, info.value.vmm_error) == (0x27, 0)
    with pytest.raises(VmpckDisabledError, match=r"\(ENOTTY\).*disabled its VMPCK.*reboot the VM"):
        b.get_report(bytes(64))


def test_busy_timeout_wipes_the_vmpck(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("timeout", 0)]))
    with pytest.raises(VmpckDisabledError, match=r"\(ETIMEDOUT\).*busy for 60 s.*reboot the VM"):
        backend(device, kernel).get_report(bytes(64))
    assert kernel.wiped


def test_eio_without_a_firmware_call(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("errno", errno.EIO)]))
    with pytest.raises(FirmwareError, match=r"before any firmware call \(exitinfo2 0x0\)"):
        backend(device, kernel).get_report(bytes(64))


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (0x16, ReportRequestError, "INVALID_PARAM.*request the guest's own VMPL"),
        (0x27, FirmwareError, "INVALID_KEY"),
        (0x05, FirmwareError, r"status 0x5\)"),
    ],
)
def test_firmware_status_is_checked(device: Path, status: int, error: type[Exception], message: str) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("status", status)]))
    with pytest.raises(error, match=message):
        backend(device, kernel).get_report(bytes(64))


def test_vmpl_below_the_running_one_is_refused_by_the_firmware(device: Path) -> None:
    kernel = EmulatedSevGuest(SimulatedBackend.create(running_vmpl=2), running_vmpl=2)
    with pytest.raises(ReportRequestError, match="VMPL 0 must be at least the VMPL this guest runs at"):
        backend(device, kernel).get_report(bytes(64))


@pytest.mark.parametrize("size", [0, 1183, 1185, 4000 - 32])
def test_report_size_is_checked(device: Path, size: int) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("report_size", size)]))
    with pytest.raises(MalformedEvidenceError, match=f"report_size: expected 1184, found {size}"):
        backend(device, kernel).get_report(bytes(64))


def test_response_reserved_bytes_must_be_zero(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("reserved", 1)]))
    with pytest.raises(MalformedEvidenceError, match=r"reserved bytes 0x08\.\.0x1f must be zero"):
        backend(device, kernel).get_report(bytes(64))


@pytest.mark.parametrize(
    ("code", "error", "advice"),
    [
        (errno.ENOTTY, VmpckDisabledError, "reboot the VM"),
        (errno.EBADMSG, VmpckDisabledError, "failed authentication.*reboot the VM"),
        (errno.EINVAL, ReportRequestError, "refused the request"),
        (errno.EACCES, BackendPermissionError, "run the agent as root"),
        (errno.EPERM, BackendPermissionError, "run the agent as root"),
        (errno.ENODEV, BackendUnavailableError, "modprobe sev-guest"),
        (errno.ENXIO, BackendUnavailableError, "modprobe sev-guest"),
        (errno.EFAULT, ReportBackendError, "could not access the request buffers"),
        (errno.E2BIG, ReportBackendError, "Argument list too long"),
    ],
)
def test_errnos_say_what_to_do(device: Path, code: int, error: type[Exception], advice: str) -> None:
    kernel = EmulatedSevGuest(FIRMWARE, faults=deque([("errno", code)]))
    with pytest.raises(error, match=f"ioctl failed \\({errno.errorcode[code]}\\).*{advice}"):
        backend(device, kernel).get_report(bytes(64))


def test_missing_device(tmp_path: Path) -> None:
    b = SevGuestBackend(tmp_path / "sev-guest", ioctl=EmulatedSevGuest(FIRMWARE))
    with pytest.raises(BackendUnavailableError, match=r"cannot open .*\(ENOENT\).*modprobe sev-guest"):
        b.get_report(bytes(64))
    with pytest.raises(BackendUnavailableError):
        b.probe()


def test_the_real_ioctl_on_a_file_is_refused_by_the_kernel(device: Path) -> None:
    # fcntl.ioctl with the real header reaches this kernel, which knows no such ioctl on a regular file.
    with pytest.raises(VmpckDisabledError, match=r"\(ENOTTY\).*does not know this ioctl"):
        SevGuestBackend(device).get_report(bytes(64))


@pytest.mark.parametrize("certs_len", [-4096, 100, 0x5000])
def test_certs_len_must_be_pages_within_the_kernel_limit(device: Path, certs_len: int) -> None:
    with pytest.raises(ValueError, match=r"certs_len: expected a multiple of 4096 in 0\.\.16384"):
        SevGuestBackend(device, certs_len=certs_len)


def test_report_data_and_vmpl_are_checked_before_the_ioctl(device: Path) -> None:
    kernel = EmulatedSevGuest(FIRMWARE)
    with pytest.raises(ReportRequestError, match="exactly 64 bytes, got 32"):
        backend(device, kernel).get_report(bytes(32))
    with pytest.raises(ReportRequestError, match=r"vmpl must be an integer 0\.\.3"):
        backend(device, kernel).get_report(bytes(64), vmpl=4)
    assert kernel.calls == []


def test_a_host_without_certificates_costs_one_request(device: Path) -> None:
    kernel = EmulatedSevGuest(SimulatedBackend.create(certificates=False))
    evidence = backend(device, kernel).get_report(bytes(64))
    assert len(kernel.calls) == 1
    assert evidence.cert_table == bytes(0x4000) and dict(evidence.certificates) == {}
