"""The ``/dev/sev-guest`` report backend (SNP_GET_EXT_REPORT / SNP_GET_REPORT ioctls).

Security property: the report returned answers exactly this request, and
nothing the host or firmware says is trusted past what the ABI allows. The
response's ``status`` must be 0, ``report_size`` exactly 1184 and the reserved
header bytes zero; the report is parsed strictly and its REPORT_DATA and VMPL
compared with the request; the certificate table parses strictly. Buffers are
bounded: the certificate buffer grows only to the length the host asks for,
page-aligned and at most the kernel's 16 KiB.

ABI (include/uapi/linux/sev-guest.h, drivers/virt/coco/sev-guest/sev-guest.c):
the ioctl argument is the 32-byte ``snp_guest_request_ioctl`` header whose
``req_data``/``resp_data`` hold the addresses of ``snp_ext_report_req``
(112 bytes) or ``snp_report_req`` (96 bytes) and ``snp_report_resp`` (4000
bytes); on EIO, ``exitinfo2`` carries ``fw_error`` (low 32 bits) and
``vmm_error`` (high 32 bits); INVALID_LEN (vmm_error 1) writes the needed
length into ``certs_len``; BUSY (vmm_error 2) means "retry later".
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import time
from collections.abc import Callable
from typing import Any

from blindbox._text import shown
from blindbox.server.backends.base import MAX_VMPL, RawEvidence, check_report, check_request
from blindbox.server.backends.errors import (
    BackendPermissionError,
    BackendUnavailableError,
    FirmwareError,
    MalformedEvidenceError,
    ReportBackendError,
    ReportBusyError,
    ReportRequestError,
    VmpckDisabledError,
)
from blindbox.snp.report import REPORT_SIZE

DEFAULT_DEVICE = "/dev/sev-guest"
#: _IOWR('S', n, struct snp_guest_request_ioctl) with a 32-byte argument.
SNP_GET_REPORT = 0xC0205300
SNP_GET_EXT_REPORT = 0xC0205302
MSG_VERSION = 1
PAGE_SIZE = 4096
#: SEV_FW_BLOB_MAX_SIZE: the kernel refuses a larger certificate buffer (EINVAL).
MAX_CERTS_LEN = 0x4000
RESPONSE_SIZE = 4000
_RESPONSE_HEADER = 0x20
#: vmm_error values (SNP_GUEST_VMM_ERR_*).
VMM_ERR_INVALID_LEN = 1
VMM_ERR_BUSY = 2
#: MSG_REPORT_RSP status values the kernel maps to EINVAL through configfs.
STATUS_INVALID_PARAM = 0x16
STATUS_INVALID_KEY = 0x27
#: exitinfo2 values meaning "no firmware call was made".
_NO_FW_CALL = (0, 0xFF, 0xFFFFFFFF)


class _GuestRequest(ctypes.Structure):
    """struct snp_guest_request_ioctl."""

    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("fw_error", ctypes.c_uint32),
        ("vmm_error", ctypes.c_uint32),
    ]


#: fcntl.ioctl copies an argument of at most 1024 bytes to a stack buffer and, in current CPython,
#: copies it back only when the ioctl succeeds: exitinfo2 written on EIO would be lost. A larger
#: argument is passed to the kernel in place, so the header is padded past that size.
_FCNTL_COPY_LIMIT = 1024


class _IoctlArgument(ctypes.Structure):
    """The header, padded so that fcntl.ioctl hands the kernel this very memory."""

    _fields_ = [
        ("header", _GuestRequest),
        ("_unused", ctypes.c_uint8 * _FCNTL_COPY_LIMIT),
    ]


class _ReportReq(ctypes.Structure):
    """struct snp_report_req."""

    _fields_ = [
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    ]


class _ExtReportReq(ctypes.Structure):
    """struct snp_ext_report_req."""

    _fields_ = [
        ("data", _ReportReq),
        ("certs_address", ctypes.c_uint64),
        ("certs_len", ctypes.c_uint32),
    ]


class _ReportResp(ctypes.Structure):
    """struct snp_report_resp."""

    _fields_ = [("data", ctypes.c_uint8 * RESPONSE_SIZE)]


for _struct, _size in ((_GuestRequest, 32), (_ReportReq, 96), (_ExtReportReq, 112), (_ReportResp, 4000)):
    if ctypes.sizeof(_struct) != _size:  # pragma: no cover - an ABI this module does not know
        raise ImportError(f"{_struct.__doc__}: {ctypes.sizeof(_struct)} bytes, the kernel ABI has {_size}")

#: ``ioctl(fd, request, argument)``: must behave as ``fcntl.ioctl(fd, request, argument, True)``;
#: ``argument`` is a writable buffer whose first 32 bytes are ``snp_guest_request_ioctl``.
IoctlFunction = Callable[[int, int, Any], object]


def _default_ioctl(fd: int, request: int, header: Any) -> object:
    return fcntl.ioctl(fd, request, header, True)


def _errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


class SevGuestBackend:
    """Reports through the ``/dev/sev-guest`` ioctls.

    ``certificates`` selects SNP_GET_EXT_REPORT (the host's certificate table
    with the report) over SNP_GET_REPORT; ``certs_len`` is the first
    certificate buffer offered (a multiple of 4096, at most 16 KiB; the host's
    INVALID_LEN answer gives the size to retry with). BUSY answers are retried
    ``busy_retries`` times after ``busy_delay`` seconds, doubling. ``ioctl``
    and ``device`` are injectable for tests.
    """

    name = "sev-guest"

    def __init__(
        self,
        device: str | os.PathLike[str] = DEFAULT_DEVICE,
        *,
        certificates: bool = True,
        certs_len: int = MAX_CERTS_LEN,
        ioctl: IoctlFunction = _default_ioctl,
        busy_retries: int = 3,
        busy_delay: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if certificates and (certs_len % PAGE_SIZE or not 0 <= certs_len <= MAX_CERTS_LEN):
            raise ValueError(
                f"certs_len: expected a multiple of {PAGE_SIZE} in 0..{MAX_CERTS_LEN}, got {certs_len}"
            )
        if busy_retries < 0 or busy_delay < 0:
            raise ValueError("busy_retries and busy_delay must be >= 0")
        self.device = os.fspath(device)
        self._certificates = certificates
        self._certs_len = certs_len
        self._ioctl = ioctl
        self._busy_retries = busy_retries
        self._busy_delay = busy_delay
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"SevGuestBackend(device={self.device!r}, certificates={self._certificates})"

    def probe(self) -> str:
        """Check that the device opens; say so. Raises the typed error otherwise."""
        os.close(self._open())
        return f"sev-guest ioctls on {shown(self.device)}"

    def get_report(self, report_data: bytes, vmpl: int | None = None) -> RawEvidence:
        """A fresh report over ``report_data`` at ``vmpl`` (0 when None)."""
        data = check_request(self.name, report_data, vmpl)
        level = 0 if vmpl is None else vmpl
        fd = self._open()
        try:
            report, table = self._request(fd, data, level)
        finally:
            os.close(fd)
        check_report(self.name, report, data, level)
        return RawEvidence(report=report, cert_table=table, backend=self.name)

    # -- the ioctl ------------------------------------------------------------------------------

    def _open(self) -> int:
        try:
            return os.open(self.device, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            where = f"sev-guest: cannot open {shown(self.device)} ({_errno_name(exc.errno)})"
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise BackendPermissionError(
                    f"{where}: the device is root-only; run the agent as root"
                ) from None
            if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
                raise BackendUnavailableError(
                    f"{where}: load the sev-guest module (modprobe sev-guest) in an SEV-SNP guest; "
                    "on Azure confidential VMs the report comes from the vTPM instead"
                ) from None
            raise ReportBackendError(f"{where}: {shown(exc.strerror or str(exc))}") from None

    def _request(self, fd: int, data: bytes, vmpl: int) -> tuple[bytes, bytes]:
        certs_len = self._certs_len if self._certificates else 0
        busy = 0
        delay = self._busy_delay
        grown = False
        while True:
            outcome = self._call(fd, data, vmpl, certs_len)
            if not isinstance(outcome, _Retry):
                return outcome
            kind, value = outcome.kind, outcome.value
            if kind == "invalid_len":
                if grown or value <= certs_len or value % PAGE_SIZE or value > MAX_CERTS_LEN:
                    raise FirmwareError(
                        f"sev-guest: the host asked for a {value}-byte certificate buffer after "
                        f"{certs_len} bytes were offered; the kernel accepts multiples of {PAGE_SIZE} "
                        f"up to {MAX_CERTS_LEN}: the host's certificate table is too large or inconsistent; "
                        "use SNP_GET_REPORT (certificates=False) and AMD KDS",
                        vmm_error=VMM_ERR_INVALID_LEN,
                    )
                certs_len, grown = value, True
                continue
            busy += 1
            if busy > self._busy_retries:
                raise ReportBusyError(
                    f"sev-guest: the host answered BUSY (throttling) {busy} times in a row; try again later"
                )
            self._sleep(delay)
            delay *= 2

    def _call(self, fd: int, data: bytes, vmpl: int, certs_len: int) -> tuple[bytes, bytes] | _Retry:
        response = _ReportResp()
        certs = (ctypes.c_uint8 * certs_len)() if certs_len else None
        request: _ReportReq | _ExtReportReq
        if self._certificates:
            request = _ExtReportReq()
            body = request.data
            request.certs_address = ctypes.addressof(certs) if certs is not None else 0
            request.certs_len = certs_len
            code = SNP_GET_EXT_REPORT
        else:
            request = body = _ReportReq()
            code = SNP_GET_REPORT
        ctypes.memmove(body.user_data, data, len(data))
        body.vmpl = vmpl
        argument = _IoctlArgument()
        header = argument.header
        header.msg_version = MSG_VERSION
        header.req_data = ctypes.addressof(request)
        header.resp_data = ctypes.addressof(response)
        header.fw_error = header.vmm_error = 0  # the kernel writes exitinfo2 back only when non-zero
        try:
            self._ioctl(fd, code, argument)
        except OSError as exc:
            return self._ioctl_error(exc, header, request)
        raw = bytes(response.data)
        status = int.from_bytes(raw[0:4], "little")
        size = int.from_bytes(raw[4:8], "little")
        if status:
            raise self._status_error(status, vmpl)
        if any(raw[8:_RESPONSE_HEADER]):
            raise MalformedEvidenceError(
                "sev-guest: MSG_REPORT_RSP reserved bytes 0x08..0x1f must be zero, found "
                f"{raw[8:_RESPONSE_HEADER].hex()}"
            )
        if size != REPORT_SIZE:
            raise MalformedEvidenceError(
                f"sev-guest: MSG_REPORT_RSP report_size: expected {REPORT_SIZE}, found {size}"
            )
        report = raw[_RESPONSE_HEADER : _RESPONSE_HEADER + REPORT_SIZE]
        return report, bytes(certs) if certs is not None else b""

    def _ioctl_error(
        self, exc: OSError, header: _GuestRequest, request: _ReportReq | _ExtReportReq
    ) -> _Retry:
        code = exc.errno
        fw_error, vmm_error = int(header.fw_error), int(header.vmm_error)
        where = f"sev-guest: ioctl failed ({_errno_name(code)})"
        if code == errno.EIO:
            if vmm_error == VMM_ERR_INVALID_LEN and isinstance(request, _ExtReportReq):
                return _Retry("invalid_len", int(request.certs_len))
            if vmm_error == VMM_ERR_BUSY:
                return _Retry("busy", 0)
            exitinfo2 = vmm_error << 32 | fw_error
            if exitinfo2 in _NO_FW_CALL:
                raise FirmwareError(
                    f"{where} before any firmware call (exitinfo2 0x{exitinfo2:x}); check dmesg for "
                    "sev-guest messages", fw_error=fw_error, vmm_error=vmm_error)
            raise FirmwareError(
                f"{where}: the host or firmware returned fw_error 0x{fw_error:x}, vmm_error 0x{vmm_error:x}; "
                "the sev-guest driver disables its VMPCK after such an error: reboot the VM, and check the "
                "host's SNP firmware", fw_error=fw_error, vmm_error=vmm_error)
        if code in (errno.EACCES, errno.EPERM):
            raise BackendPermissionError(f"{where}: run the agent as root")
        if code == errno.ENOTTY:
            raise VmpckDisabledError(
                f"{where}: the sev-guest driver has disabled its VMPCK after an earlier host error (or the "
                "kernel does not know this ioctl): reboot the VM (or load sev-guest with another vmpck_id)")
        if code in (errno.ETIMEDOUT, errno.EBADMSG):
            what = ("kept answering busy for 60 s" if code == errno.ETIMEDOUT
                    else "sent a response that failed authentication")
            raise VmpckDisabledError(
                f"{where}: the host {what}; the sev-guest driver has disabled its VMPCK: reboot the VM")
        if code == errno.EINVAL:
            raise ReportRequestError(
                f"{where}: the kernel refused the request (message version, buffers, or a certificate "
                f"buffer that is not a multiple of {PAGE_SIZE} up to {MAX_CERTS_LEN} bytes)")
        if code in (errno.ENODEV, errno.ENXIO):
            raise BackendUnavailableError(f"{where}: load the sev-guest module (modprobe sev-guest)")
        if code == errno.EFAULT:
            raise ReportBackendError(f"{where}: the kernel could not access the request buffers")
        raise ReportBackendError(f"{where}: {shown(exc.strerror or str(exc))}")

    @staticmethod
    def _status_error(status: int, vmpl: int) -> ReportBackendError:
        if status == STATUS_INVALID_PARAM:
            return ReportRequestError(
                f"sev-guest: the firmware refused the request (status 0x{status:x} INVALID_PARAM): "
                f"VMPL {vmpl} must be at least the VMPL this guest runs at and at most {MAX_VMPL}; "
                "request the guest's own VMPL")
        if status == STATUS_INVALID_KEY:
            return FirmwareError(
                f"sev-guest: the firmware refused the request (status 0x{status:x} INVALID_KEY): the "
                "signing key is not available; check the host's VLEK/VCEK provisioning", fw_error=status)
        return FirmwareError(
            f"sev-guest: the firmware refused the request (status 0x{status:x})", fw_error=status
        )


class _Retry:
    """An ioctl answer worth another request: INVALID_LEN (with the needed length) or BUSY."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: int) -> None:
        self.kind = kind
        self.value = value
