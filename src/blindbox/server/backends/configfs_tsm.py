"""The configfs-tsm report backend (``/sys/kernel/config/tsm/report``, Linux 6.7+).

Security property: the report returned answers exactly this request. Each
request gets its own entry (a fresh, unguessable directory name), the entry's
``provider`` must be ``sev_guest``, and ``generation`` is read before the
writes, after them and after the blobs are read: any write the backend did not
make (a concurrent writer, or an ``inblob`` the kernel silently dropped) is
detected and the blobs are discarded (bounded retries with a new entry). The
report is then parsed strictly and its REPORT_DATA and VMPL compared with the
request. The entry is always removed, on success and on failure.

Kernel facts (Documentation/ABI/testing/configfs-tsm-report, drivers/virt/coco/guest/report.c,
drivers/virt/coco/sev-guest/sev-guest.c): ``inblob`` takes exactly 64 bytes for
``sev_guest`` and reports its errors only at close (ignored), hence the
generation checks; ``privlevel`` takes ASCII decimal within
``privlevel_floor``..3; every accepted write adds one to ``generation``;
``outblob`` is the 1184-byte report, ``auxblob`` the GHCB certificate table.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import sys
import time
from collections.abc import Callable

from blindbox._text import shown
from blindbox.server.backends.base import MAX_VMPL, RawEvidence, check_report, check_request
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
from blindbox.snp.certtable import MAX_TABLE_SIZE
from blindbox.snp.report import REPORT_SIZE

DEFAULT_ROOT = "/sys/kernel/config/tsm/report"
PROVIDER = "sev_guest"
#: Largest outblob the kernel serves (TSM_REPORT_OUTBLOB_MAX, SZ_32K); an SNP report is 1184 bytes.
OUTBLOB_MAX = 32 * 1024
_TEXT_MAX = 64
_GENERATION = re.compile(rb"(0|[1-9][0-9]{0,19})\n?")
_BUSY = (errno.EBUSY, errno.EAGAIN)
_NO_ROOT = (errno.EACCES, errno.EPERM, errno.EROFS)


class ConfigfsIo:
    """The four file operations the backend performs, on real paths.

    Each write is one ``open``/``write``/``close`` (configfs buffers binary
    attributes per open file); each read reads to EOF, at most ``limit + 1``
    bytes so the caller can see an oversized blob. Tests subclass this to
    emulate configfs's rules on a temporary directory.
    """

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def read(self, path: str, limit: int) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            total = 0
            while total <= limit:
                chunk = os.read(fd, min(65536, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes")


class _Race(Exception):
    """generation moved by a write this backend did not make."""


class _Busy(Exception):
    """EBUSY/EAGAIN: worth a bounded retry."""


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _error(op: str, path: str, exc: OSError) -> ReportBackendError:
    """The typed error, with what to do, for an OSError of one configfs operation."""
    code = exc.errno
    where = f"configfs-tsm: {op} {shown(path)} failed ({_errno_name(exc)})"
    if code in _NO_ROOT:
        return BackendPermissionError(f"{where}: report entries are root-only; run the agent as root")
    if code == errno.ENXIO and not path.endswith("blob"):
        return BackendUnavailableError(
            f"{where}: no TSM provider is registered; load the sev-guest module (modprobe sev-guest) "
            "in an SEV-SNP guest"
        )
    if code == errno.ENOENT:
        return BackendUnavailableError(
            f"{where}: no such entry or attribute; mount configfs (mount -t configfs none "
            "/sys/kernel/config) on a kernel >= 6.7 built with CONFIG_TSM_REPORTS"
        )
    if code == errno.EINVAL:
        return ReportRequestError(
            f"{where}: the provider refused the request (inblob must be 64 bytes; privlevel must lie "
            f"within privlevel_floor..{MAX_VMPL}; under an SVSM the VMPL must be at least the one the "
            "guest runs at): request the VMPL given by privlevel_floor"
        )
    if code == errno.EFBIG:
        return MalformedEvidenceError(f"{where}: the blob exceeds the kernel's size limit")
    if code == errno.ENOMEM:
        return MalformedEvidenceError(f"{where}: the firmware's report is larger than the kernel's buffer")
    if code == errno.ENOTTY:
        return VmpckDisabledError(
            f"{where}: the sev-guest driver disabled its VMPCK after a host error (or the provider was "
            "unloaded); no report can be had until the VM reboots"
        )
    if code in (errno.ETIMEDOUT, errno.EBADMSG, errno.EIO):
        return VmpckDisabledError(
            f"{where}: the host did not answer the guest request correctly; the sev-guest driver has "
            "now disabled its VMPCK: reboot the VM, and check the host's SNP firmware"
        )
    if code == errno.ENXIO:
        return FirmwareError(
            f"{where}: the AMD secure processor refused the request or the provider went away; "
            "check dmesg for sev-guest messages"
        )
    return ReportBackendError(f"{where}: {shown(exc.strerror or str(exc))}")


class ConfigfsTsmBackend:
    """Reports through configfs-tsm, one fresh entry per request.

    ``root`` is the ``report`` directory; ``io`` the file operations (tests
    emulate configfs with it). A race is retried with a new entry up to
    ``attempts`` times in all; EBUSY/EAGAIN up to ``busy_retries`` times after
    ``busy_delay`` seconds, doubling.
    """

    name = "configfs-tsm"

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        *,
        io: ConfigfsIo | None = None,
        attempts: int = 3,
        busy_retries: int = 3,
        busy_delay: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1 or busy_retries < 0 or busy_delay < 0:
            raise ValueError("attempts must be >= 1, busy_retries and busy_delay >= 0")
        self.root = os.fspath(root)
        self._io = io if io is not None else ConfigfsIo()
        self._attempts = attempts
        self._busy_retries = busy_retries
        self._busy_delay = busy_delay
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"ConfigfsTsmBackend(root={self.root!r})"

    def probe(self) -> str:
        """Check that an entry can be made here and its provider is ``sev_guest``; say so.

        Raises :class:`BackendUnavailableError` or :class:`BackendPermissionError`.
        The probe entry is removed.
        """
        if not os.path.isdir(self.root):
            raise BackendUnavailableError(
                f"configfs-tsm: {shown(self.root)} is not a directory; mount configfs (mount -t configfs "
                "none /sys/kernel/config) on a kernel >= 6.7 built with CONFIG_TSM_REPORTS"
            )
        entry = self._make_entry()
        try:
            self._check_provider(entry)
        finally:
            self._remove(entry, None)
        return f"configfs-tsm at {shown(self.root)} with provider {PROVIDER}"

    def get_report(self, report_data: bytes, vmpl: int | None = None) -> RawEvidence:
        """A fresh report over ``report_data``; ``vmpl`` is written to ``privlevel`` when given."""
        data = check_request(self.name, report_data, vmpl)
        races = busy = 0
        delay = self._busy_delay
        while True:
            try:
                return self._once(data, vmpl)
            except _Race as race:
                races += 1
                if races >= self._attempts:
                    raise ReportRaceError(
                        f"configfs-tsm: {race} on {races} fresh entries in a row; another process is "
                        "writing to this process's report entries: find and stop it"
                    ) from None
            except _Busy as why:
                busy += 1
                if busy > self._busy_retries:
                    raise ReportBusyError(
                        f"configfs-tsm: {why}, still after {self._busy_retries} retries; the host is "
                        "throttling guest requests: try again later"
                    ) from None
                self._sleep(delay)
                delay *= 2

    # -- one request ----------------------------------------------------------------------------

    def _once(self, data: bytes, vmpl: int | None) -> RawEvidence:
        entry = self._make_entry()
        failure: BaseException | None = None
        try:
            self._check_provider(entry)
            expected = self._generation(entry)
            if expected != 0:
                raise _Race(f"the new entry's generation is {expected}, expected 0")
            if vmpl is not None:
                floor = self._privlevel_floor(entry)
                if vmpl < floor:
                    raise ReportRequestError(
                        f"configfs-tsm: VMPL {vmpl} asked, but privlevel_floor is {floor} (the guest "
                        f"runs at VMPL {floor}): request a VMPL in {floor}..{MAX_VMPL}"
                    )
                self._write(entry, "privlevel", f"{vmpl}\n".encode("ascii"))
                expected = self._advanced(entry, expected, "privlevel")
            self._write(entry, "inblob", data)
            expected = self._advanced(entry, expected, "inblob")
            outblob = self._read(entry, "outblob", OUTBLOB_MAX)
            auxblob = self._read(entry, "auxblob", MAX_TABLE_SIZE, missing_ok=True)
            final = self._generation(entry)
            if final != expected:
                raise _Race(f"generation moved from {expected} to {final} while the blobs were read")
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._remove(entry, failure)
        if len(outblob) != REPORT_SIZE:
            raise MalformedEvidenceError(
                f"configfs-tsm: outblob: expected a {REPORT_SIZE}-byte report, found "
                f"{len(outblob) if len(outblob) <= OUTBLOB_MAX else f'more than {OUTBLOB_MAX}'} bytes"
            )
        if len(auxblob) > MAX_TABLE_SIZE:
            raise MalformedEvidenceError(
                f"configfs-tsm: auxblob: expected at most {MAX_TABLE_SIZE} bytes, found more"
            )
        check_report(self.name, outblob, data, vmpl)
        return RawEvidence(report=outblob, cert_table=auxblob, backend=self.name)

    def _make_entry(self) -> str:
        for _ in range(8):
            path = os.path.join(self.root, f"blindbox-{os.getpid()}-{secrets.token_hex(8)}")
            try:
                self._io.mkdir(path)
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                raise _error("mkdir", path, exc) from None
        raise ReportBackendError(f"configfs-tsm: could not create a unique entry under {shown(self.root)}")

    def _remove(self, entry: str, failure: BaseException | None) -> None:
        try:
            self._io.rmdir(entry)
        except FileNotFoundError:
            return
        except OSError as exc:
            message = (f"configfs-tsm: could not remove the report entry {shown(entry)} "
                       f"({_errno_name(exc)}); remove it with rmdir")
            if failure is not None:
                if sys.version_info >= (3, 11):
                    failure.add_note(message)
                return
            raise ReportBackendError(message) from None

    def _check_provider(self, entry: str) -> None:
        raw = self._read(entry, "provider", _TEXT_MAX)
        provider = raw.decode("ascii", "replace").rstrip("\n")
        if provider != PROVIDER:
            raise BackendUnavailableError(
                f"configfs-tsm: provider is {shown(provider)!r}, expected {PROVIDER!r}: this is not an "
                "AMD SEV-SNP guest (or another TEE's driver is loaded); use the backend for this TEE"
            )

    def _generation(self, entry: str) -> int:
        raw = self._read(entry, "generation", _TEXT_MAX)
        if not _GENERATION.fullmatch(raw):
            found = shown(raw.decode("ascii", "replace"))
            raise MalformedEvidenceError(f"configfs-tsm: generation: expected a count, found {found!r}")
        return int(raw)

    def _advanced(self, entry: str, before: int, attribute: str) -> int:
        now = self._generation(entry)
        if now == before:
            raise ReportRequestError(
                f"configfs-tsm: the kernel did not accept the write to {attribute} (generation stayed at "
                f"{before}); check dmesg, and that {attribute} takes this value"
            )
        if now != before + 1:
            raise _Race(f"generation moved from {before} to {now} after one write to {attribute}")
        return now

    def _privlevel_floor(self, entry: str) -> int:
        path = os.path.join(entry, "privlevel_floor")
        try:
            raw = self._io.read(path, _TEXT_MAX)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise _error("read", path, exc) from None
        if not _GENERATION.fullmatch(raw) or int(raw) > MAX_VMPL:
            raise MalformedEvidenceError(
                f"configfs-tsm: privlevel_floor: expected 0..{MAX_VMPL}, found "
                f"{shown(raw.decode('ascii', 'replace'))!r}"
            )
        return int(raw)

    def _write(self, entry: str, attribute: str, data: bytes) -> None:
        path = os.path.join(entry, attribute)
        try:
            self._io.write(path, data)
        except OSError as exc:
            if exc.errno in _BUSY:
                raise _Busy(f"writing {attribute} failed with {_errno_name(exc)}") from None
            raise _error("write", path, exc) from None

    def _read(self, entry: str, attribute: str, limit: int, *, missing_ok: bool = False) -> bytes:
        path = os.path.join(entry, attribute)
        try:
            return self._io.read(path, limit)
        except FileNotFoundError:
            if missing_ok:
                return b""
            raise _error("read", path, FileNotFoundError(errno.ENOENT, "No such file")) from None
        except OSError as exc:
            if exc.errno in _BUSY:
                raise _Busy(f"reading {attribute} failed with {_errno_name(exc)}") from None
            raise _error("read", path, exc) from None
