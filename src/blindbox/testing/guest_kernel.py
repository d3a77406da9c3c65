"""Emulations of the SEV-SNP guest kernel interfaces, for testing the report backends.

:class:`EmulatedConfigfs` runs configfs-tsm's report directory on a temporary
directory with the kernel's rules (Documentation/ABI/testing/configfs-tsm-report,
drivers/virt/coco/guest/report.c, sev-guest.c ``sev_report_new``): entries made
by ``mkdir`` get ``provider``, ``generation``, ``privlevel_floor``; every
accepted ``inblob``/``privlevel`` write adds one to ``generation``; the first
blob read after a write makes one guest request, later reads are served from
the cache; ``inblob`` must be 64 bytes, ``privlevel`` ASCII decimal within
floor..3; errors are the kernel's errnos.

:class:`EmulatedSevGuest` is an ``ioctl`` function for
:class:`~blindbox.server.backends.SevGuestBackend` that reads the request from
process memory at the addresses in the 32-byte header and writes the response,
certificates, ``certs_len`` and ``exitinfo2`` back as ``sev-guest.c`` does. It
decodes by the offsets of ``include/uapi/linux/sev-guest.h``, not with the
backend's ctypes structures, so a layout mistake there shows.

The "firmware" behind both is a :class:`~blindbox.testing.backend.SimulatedBackend`:
reports verify under its test roots only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from blindbox.server.backends.configfs_tsm import ConfigfsIo
from blindbox.server.backends.errors import ReportRequestError
from blindbox.testing.backend import SimulatedBackend

_ATTRIBUTES = ("inblob", "outblob", "auxblob", "provider", "generation", "privlevel", "privlevel_floor")
_READ_ONLY = ("outblob", "auxblob", "provider", "generation", "privlevel_floor")
_STATUS_INVALID_PARAM = 0x16


def _oserror(code: int, path: str = "") -> OSError:
    return OSError(code, os.strerror(code), path) if path else OSError(code, os.strerror(code))


@dataclass
class _Entry:
    generation: int = 0
    inblob: bytes | None = None
    privlevel: int = 0
    cached_at: int | None = None


@dataclass
class EmulatedConfigfs(ConfigfsIo):
    """``/sys/kernel/config/tsm/report`` emulated under ``root``.

    ``provider`` None means no TSM provider is registered (``mkdir`` fails with
    ENXIO). Tests queue errnos in ``read_errors``/``write_errors`` (per
    attribute), ``mkdir_errors`` and ``rmdir_errors``; writes the handler
    drops at close (configfs ignores that error) in ``dropped``; races in
    ``races``: "write" makes a foreign ``inblob`` write right after the
    backend's, "read" right before the read that makes the guest request.
    ``outblob_override``/``auxblob_override`` replace what the provider
    produced (a broken kernel or host). ``requests`` records each guest
    request made (inblob, privlevel); ``removed`` each entry removed.
    """

    root: Path
    firmware: SimulatedBackend | None
    provider: str | None = "sev_guest"
    privlevel_floor: int | None = 0
    read_errors: dict[str, deque[int]] = field(default_factory=dict)
    write_errors: dict[str, deque[int]] = field(default_factory=dict)
    mkdir_errors: deque[int] = field(default_factory=deque)
    rmdir_errors: deque[int] = field(default_factory=deque)
    dropped: set[str] = field(default_factory=set)
    outblob_override: bytes | None = None
    auxblob_override: bytes | None = None
    races: deque[str] = field(default_factory=deque)
    requests: list[tuple[bytes, int]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    entries: dict[str, _Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def fail(self, attribute: str, *codes: int, on: str = "read") -> None:
        """Make the next reads (or writes) of ``attribute`` fail with ``codes``, one each."""
        table = self.read_errors if on == "read" else self.write_errors
        table.setdefault(attribute, deque()).extend(codes)

    def foreign_write(self, entry: str, data: bytes = b"\xee" * 64) -> None:
        """Another process writes ``inblob`` of ``entry``."""
        state = self.entries[entry]
        state.inblob = data
        state.generation += 1
        self._sync(entry)

    # -- ConfigfsIo ----------------------------------------------------------------------------

    def mkdir(self, path: str) -> None:
        if Path(path).parent != self.root:
            raise _oserror(errno.EPERM, path)
        if self.mkdir_errors:
            raise _oserror(self.mkdir_errors.popleft(), path)
        if self.provider is None:
            raise _oserror(errno.ENXIO, path)
        super().mkdir(path)
        for name in _ATTRIBUTES:
            if name != "privlevel_floor" or self.privlevel_floor is not None:
                Path(path, name).touch()
        self.entries[path] = _Entry()
        self._sync(path)

    def rmdir(self, path: str) -> None:
        if self.rmdir_errors:
            raise _oserror(self.rmdir_errors.popleft(), path)
        if path not in self.entries:
            raise _oserror(errno.ENOENT, path)
        for child in Path(path).iterdir():
            child.unlink()
        super().rmdir(path)
        del self.entries[path]
        self.removed.append(path)

    def write(self, path: str, data: bytes) -> None:
        entry, name = os.path.dirname(path), os.path.basename(path)
        state = self.entries.get(entry)
        if state is None or name not in _ATTRIBUTES:
            raise _oserror(errno.ENOENT, path)
        queued = self.write_errors.get(name)
        if queued:
            raise _oserror(queued.popleft(), path)
        if name in _READ_ONLY:
            raise _oserror(errno.EACCES, path)
        if name in self.dropped:
            self.dropped.discard(name)
            return
        if name == "inblob":
            if len(data) > 64:
                raise _oserror(errno.EFBIG, path)
            state.inblob = bytes(data)
        else:
            state.privlevel = self._privlevel(data, path)
        state.generation += 1
        self._sync(entry)
        if name == "inblob" and self.races and self.races[0] == "write":
            self.races.popleft()
            self.foreign_write(entry)

    def read(self, path: str, limit: int) -> bytes:
        entry, name = os.path.dirname(path), os.path.basename(path)
        state = self.entries.get(entry)
        if state is None or name not in _ATTRIBUTES or not Path(path).exists():
            raise _oserror(errno.ENOENT, path)
        queued = self.read_errors.get(name)
        if queued:
            raise _oserror(queued.popleft(), path)
        if name in ("inblob", "privlevel"):
            raise _oserror(errno.EACCES, path)
        if name in ("outblob", "auxblob"):
            if self.races and self.races[0] == "read" and state.cached_at != state.generation:
                self.races.popleft()
                self.foreign_write(entry)
            self._request(entry, state, path)
        return super().read(path, limit)

    # -- the kernel's rules ----------------------------------------------------------------------

    def _privlevel(self, data: bytes, path: str) -> int:
        text = data.decode("ascii", "replace")
        text = text[:-1] if text.endswith("\n") else text
        try:
            value = int(text, 0)  # kstrtouint(buf, 0, ...)
        except ValueError:
            raise _oserror(errno.EINVAL, path) from None
        if not (self.privlevel_floor or 0) <= value <= 3:
            raise _oserror(errno.EINVAL, path)
        return value

    def _request(self, entry: str, state: _Entry, path: str) -> None:
        if state.inblob is None:
            raise _oserror(errno.EINVAL, path)
        if state.cached_at == state.generation:
            return
        if len(state.inblob) != 64 or self.firmware is None:
            raise _oserror(errno.EINVAL, path)
        self.requests.append((state.inblob, state.privlevel))
        try:
            evidence = self.firmware.get_report(state.inblob, state.privlevel)
        except ReportRequestError:
            raise _oserror(errno.EINVAL, path) from None  # status INVALID_PARAM
        outblob = evidence.report if self.outblob_override is None else self.outblob_override
        auxblob = evidence.cert_table if self.auxblob_override is None else self.auxblob_override
        Path(entry, "outblob").write_bytes(outblob)
        Path(entry, "auxblob").write_bytes(auxblob)
        state.cached_at = state.generation

    def _sync(self, entry: str) -> None:
        state = self.entries[entry]
        Path(entry, "generation").write_text(f"{state.generation}\n")
        Path(entry, "provider").write_text(f"{self.provider}\n")
        if self.privlevel_floor is not None:
            Path(entry, "privlevel_floor").write_text(f"{self.privlevel_floor}\n")


# -- /dev/sev-guest ---------------------------------------------------------------------------

SNP_GET_REPORT = 0xC0205300
SNP_GET_EXT_REPORT = 0xC0205302
_MAX_CERTS_LEN = 0x4000
_FCNTL_COPY_LIMIT = 1024
_PAGE = 4096


@dataclass(frozen=True)
class IoctlCall:
    """One request as the emulated kernel read it from memory."""

    request: int
    msg_version: int
    user_data: bytes
    vmpl: int
    reserved: bytes
    certs_len: int | None
    certs_address: int | None


@dataclass
class EmulatedSevGuest:
    """An ``ioctl`` for :class:`~blindbox.server.backends.SevGuestBackend` that acts as sev-guest.c.

    It also acts as ``fcntl.ioctl(..., True)`` does with the argument: one of at
    most 1024 bytes is handed to the kernel as a copy that is written back only
    when the call succeeds (so exitinfo2 and the like written on failure are
    lost); a larger one is handed over in place.

    ``running_vmpl`` is the guest's VMPL (a request below it gets status
    INVALID_PARAM). ``faults`` is a queue, one per ioctl call, of:
    ``("errno", n)`` the ioctl fails with errno n; ``("busy", 0)`` EIO with
    vmm_error BUSY; ``("fw", code)`` EIO with that fw_error, after which the
    VMPCK is wiped (ENOTTY ever after, as the driver does); ``("timeout", 0)``
    ETIMEDOUT and wipe; ``("status", s)`` a response with status s;
    ``("report_size", n)`` a response claiming n bytes; ``("reserved", b)``
    a response whose reserved byte 8 is b; ``("certs_pages", n)`` the host
    asks for n pages however many it needs; ``None`` behave normally.
    """

    firmware: SimulatedBackend
    running_vmpl: int = 0
    faults: deque[tuple[str, int] | None] = field(default_factory=deque)
    calls: list[IoctlCall] = field(default_factory=list)
    wiped: bool = False

    def __call__(self, fd: int, request: int, arg: object) -> int:
        view = memoryview(arg).cast("B")  # type: ignore[arg-type]
        if len(view) < 32 or view.readonly:
            raise _oserror(errno.EFAULT)
        if len(view) > _FCNTL_COPY_LIMIT:
            return self._kernel(request, ctypes.addressof(ctypes.c_char.from_buffer(view)))
        # fcntl.ioctl runs the kernel on a copy of a small argument and copies it back only on success.
        copy = ctypes.create_string_buffer(bytes(view), len(view))
        result = self._kernel(request, ctypes.addressof(copy))
        view[:] = copy.raw
        return result

    def _kernel(self, request: int, header_address: int) -> int:
        if request not in (SNP_GET_REPORT, SNP_GET_EXT_REPORT):
            raise _oserror(errno.ENOTTY)
        header = ctypes.string_at(header_address, 32)
        msg_version, req, resp = struct.unpack_from("<B7xQQ", header)
        # The ioctl presets exitinfo2 to 0xff and copies the header back only when it is non-zero.
        if not msg_version or not req or not resp:
            raise _oserror(errno.EINVAL)
        if self.wiped:
            raise _oserror(errno.ENOTTY)
        ext = request == SNP_GET_EXT_REPORT
        raw = ctypes.string_at(req, 112 if ext else 96)
        user_data, vmpl, reserved = raw[:64], int.from_bytes(raw[64:68], "little"), raw[68:96]
        certs_address = certs_len = None
        npages = 0
        if ext:
            certs_address, certs_len = struct.unpack_from("<QI", raw, 96)
            if certs_len and certs_address:
                if certs_len % _PAGE or certs_len > _MAX_CERTS_LEN:
                    raise _oserror(errno.EINVAL)
                npages = certs_len // _PAGE
        self.calls.append(
            IoctlCall(request, msg_version, user_data, vmpl, reserved, certs_len, certs_address)
        )
        fault = self.faults.popleft() if self.faults else None
        kind, value = fault if fault is not None else ("", 0)
        if kind == "errno":
            raise _oserror(value)
        if kind == "busy":
            self._exitinfo2(header_address, 2 << 32)
            raise _oserror(errno.EIO)
        if kind == "fw":
            self.wiped = True
            self._exitinfo2(header_address, value)
            raise _oserror(errno.EIO)
        if kind == "timeout":
            self.wiped = True
            raise _oserror(errno.ETIMEDOUT)

        status, report, table = 0, b"", b""
        if any(reserved) or not self.running_vmpl <= vmpl <= 3:
            status = _STATUS_INVALID_PARAM
        else:
            evidence = self.firmware.get_report(user_data, vmpl)
            report, table = evidence.report, evidence.cert_table
        if ext and table:
            needed = -(-len(table) // _PAGE) if kind != "certs_pages" else value
            if npages < needed:
                # The host answers INVALID_LEN; the kernel re-issues a plain request for IV safety,
                # fails with EIO, and tells the caller the size in certs_len.
                ctypes.memmove(req + 104, (needed * _PAGE).to_bytes(4, "little"), 4)
                self._exitinfo2(header_address, 1 << 32)
                raise _oserror(errno.EIO)
        if kind == "status":
            status, report = value, b""
        size = len(report) if kind != "report_size" else value
        body = struct.pack("<II", status, size) + bytes([value if kind == "reserved" else 0]) + bytes(23)
        response = (body + report).ljust(4000, b"\x00")[:4000]
        ctypes.memmove(resp, response, 4000)
        if ext and npages:
            assert certs_address is not None and certs_len is not None
            ctypes.memmove(certs_address, table.ljust(certs_len, b"\x00"), certs_len)
        return 0

    @staticmethod
    def _exitinfo2(header_address: int, value: int) -> None:
        ctypes.memmove(header_address + 24, value.to_bytes(8, "little"), 8)
