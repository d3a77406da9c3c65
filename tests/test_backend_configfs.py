"""The configfs-tsm backend against an emulated configfs-tsm tree (blindbox.testing.guest_kernel).

Each test drives the real backend through the emulated kernel rules (generation, privlevel range,
64-byte inblob, errnos) and, where a report comes back, verifies it end to end: AMD-style chain to
the simulator's test roots, signature, and the protocol v1 report_data binding.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from blindbox.server.backends import (
    BackendPermissionError,
    BackendUnavailableError,
    ConfigfsIo,
    ConfigfsTsmBackend,
    FirmwareError,
    MalformedEvidenceError,
    ReportBackendError,
    ReportBusyError,
    ReportRaceError,
    ReportRequestError,
    VmpckDisabledError,
)
from blindbox.testing.backend import SimulatedBackend
from blindbox.testing.guest_kernel import EmulatedConfigfs
from tests.backend_support import bound_request, verified

FIRMWARE = SimulatedBackend.create()


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[EmulatedConfigfs]:
    emulated = EmulatedConfigfs(tmp_path / "tsm" / "report", FIRMWARE)
    yield emulated
    # Whatever happened, no entry of the backend is left behind.
    assert [p.name for p in emulated.root.iterdir() if p.name.startswith("blindbox-")] == []


def backend(tree: EmulatedConfigfs, sleeps: list[float] | None = None,
            **kwargs: object) -> ConfigfsTsmBackend:
    slept = sleeps if sleeps is not None else []
    return ConfigfsTsmBackend(tree.root, io=tree, sleep=slept.append, **kwargs)  # type: ignore[arg-type]


def test_report_verifies_and_binds_the_request(tree: EmulatedConfigfs) -> None:
    nonce, report_data = bound_request()
    evidence = backend(tree).get_report(report_data)
    assert evidence.backend == "configfs-tsm"
    assert tree.requests == [(report_data, 0)]  # one guest request, exactly our 64 bytes, privlevel untouched
    assert len(tree.removed) == 1 and Path(tree.removed[0]).parent == tree.root
    assert Path(tree.removed[0]).name.startswith(f"blindbox-{os.getpid()}-")
    result = verified(evidence, FIRMWARE, nonce)
    assert result.report.vmpl == 0
    assert set(evidence.certificates) == {"vcek", "ask", "ark"}
    assert evidence.certificates["vcek"] == result.certificate.der


def test_each_request_uses_a_new_entry(tree: EmulatedConfigfs) -> None:
    first, second = bound_request()[1], bound_request()[1]
    b = backend(tree)
    assert b.get_report(first).report != b.get_report(second).report
    assert tree.requests == [(first, 0), (second, 0)]
    assert len(set(tree.removed)) == 2


def test_privlevel_is_written_in_ascii_when_asked(tmp_path: Path) -> None:
    firmware = SimulatedBackend.create(running_vmpl=1)
    tree = EmulatedConfigfs(tmp_path, firmware, privlevel_floor=1)
    nonce, report_data = bound_request()
    evidence = backend(tree).get_report(report_data, vmpl=2)
    assert tree.requests == [(report_data, 2)]
    assert verified(evidence, firmware, nonce).report.vmpl == 2


def test_privlevel_below_the_floor_is_refused_before_any_request(tree: EmulatedConfigfs) -> None:
    tree.privlevel_floor = 2
    with pytest.raises(ReportRequestError, match=r"privlevel_floor is 2.*request a VMPL in 2\.\.3"):
        backend(tree).get_report(bound_request()[1], vmpl=1)
    assert tree.requests == [] and len(tree.removed) == 1


def test_vmpl_below_the_running_one_is_explained(tmp_path: Path) -> None:
    # A 6.7 kernel under an SVSM: privlevel_floor reads 0, privlevel left at 0, the firmware refuses.
    tree = EmulatedConfigfs(tmp_path, SimulatedBackend.create(running_vmpl=2), privlevel_floor=0)
    with pytest.raises(ReportRequestError, match=r"\(EINVAL\).*request the VMPL given by privlevel_floor"):
        backend(tree).get_report(bound_request()[1])
    assert len(tree.requests) == 1 and len(tree.removed) == 1


def test_kernel_refusing_privlevel_is_a_request_error(tree: EmulatedConfigfs) -> None:
    tree.fail("privlevel", errno.EINVAL, on="write")
    with pytest.raises(ReportRequestError, match=r"write .*privlevel failed \(EINVAL\)"):
        backend(tree).get_report(bound_request()[1], vmpl=3)
    assert tree.requests == []


@pytest.mark.parametrize("bad", [b"\x00" * 63, b"\x00" * 65, b""])
def test_report_data_must_be_64_bytes(tree: EmulatedConfigfs, bad: bytes) -> None:
    with pytest.raises(ReportRequestError, match=f"exactly 64 bytes, got {len(bad)}"):
        backend(tree).get_report(bad)
    assert tree.removed == []  # refused before touching configfs


@pytest.mark.parametrize("vmpl", [-1, 4, True])
def test_vmpl_must_be_0_to_3(tree: EmulatedConfigfs, vmpl: int) -> None:
    with pytest.raises(ReportRequestError, match=r"vmpl must be an integer 0\.\.3"):
        backend(tree).get_report(bytes(64), vmpl=vmpl)
    assert tree.removed == []


@pytest.mark.parametrize("when", ["write", "read"])
def test_a_concurrent_writer_is_detected_and_the_request_retried(tree: EmulatedConfigfs, when: str) -> None:
    tree.races.append(when)
    nonce, report_data = bound_request()
    evidence = backend(tree).get_report(report_data)
    verified(evidence, FIRMWARE, nonce)
    assert len(tree.removed) == 2  # the raced entry was dropped and removed
    if when == "read":
        # The kernel did make a request over the foreign inblob; its report was discarded.
        assert tree.requests == [(b"\xee" * 64, 0), (report_data, 0)]
    else:
        assert tree.requests == [(report_data, 0)]


def test_a_persistent_race_is_an_error_after_bounded_retries(tree: EmulatedConfigfs) -> None:
    tree.races.extend(["read"] * 3)
    with pytest.raises(ReportRaceError, match=r"generation moved from 1 to 2 .* on 3 fresh entries"):
        backend(tree).get_report(bound_request()[1])
    assert len(tree.removed) == 3


def test_a_write_the_kernel_dropped_is_detected(tree: EmulatedConfigfs) -> None:
    # configfs reports a binary attribute's error only at close, where it is ignored.
    tree.dropped.add("inblob")
    with pytest.raises(ReportRequestError, match="did not accept the write to inblob"):
        backend(tree).get_report(bound_request()[1])
    assert tree.requests == []


def test_no_provider_registered(tree: EmulatedConfigfs) -> None:
    tree.provider = None
    with pytest.raises(BackendUnavailableError, match=r"ENXIO.*modprobe sev-guest"):
        backend(tree).get_report(bytes(64))


def test_provider_unregistered_after_mkdir(tree: EmulatedConfigfs) -> None:
    tree.fail("provider", errno.ENXIO)
    with pytest.raises(BackendUnavailableError, match=r"provider failed \(ENXIO\).*modprobe sev-guest"):
        backend(tree).get_report(bytes(64))
    assert len(tree.removed) == 1


def test_another_tees_provider_is_refused(tree: EmulatedConfigfs) -> None:
    tree.provider = "tdx_guest"
    with pytest.raises(BackendUnavailableError, match="provider is 'tdx_guest', expected 'sev_guest'"):
        backend(tree).get_report(bytes(64))
    assert tree.requests == [] and len(tree.removed) == 1


def test_configfs_not_mounted(tmp_path: Path) -> None:
    b = ConfigfsTsmBackend(tmp_path / "missing", io=ConfigfsIo())
    with pytest.raises(BackendUnavailableError, match=r"ENOENT.*mount -t configfs"):
        b.get_report(bytes(64))
    with pytest.raises(BackendUnavailableError, match="is not a directory; mount configfs"):
        b.probe()


def test_not_root(tree: EmulatedConfigfs) -> None:
    tree.mkdir_errors.append(errno.EACCES)
    with pytest.raises(BackendPermissionError, match=r"mkdir .*\(EACCES\).*run the agent as root"):
        backend(tree).get_report(bytes(64))


def test_a_leftover_entry_is_left_alone(tree: EmulatedConfigfs) -> None:
    stale = str(tree.root / "someone-else")
    tree.mkdir(stale)
    tree.foreign_write(stale)
    nonce, report_data = bound_request()
    verified(backend(tree).get_report(report_data), FIRMWARE, nonce)
    assert tree.entries[stale].generation == 1 and Path(stale, "generation").read_text() == "1\n"
    assert stale not in tree.removed


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EAGAIN])
@pytest.mark.parametrize(("attribute", "on"), [("outblob", "read"), ("inblob", "write")])
def test_busy_is_retried_with_backoff(tree: EmulatedConfigfs, code: int, attribute: str, on: str) -> None:
    tree.fail(attribute, code, code, on=on)
    sleeps: list[float] = []
    nonce, report_data = bound_request()
    verified(backend(tree, sleeps).get_report(report_data), FIRMWARE, nonce)
    assert sleeps == [0.5, 1.0]
    assert len(tree.removed) == 3


def test_busy_is_bounded(tree: EmulatedConfigfs) -> None:
    tree.fail("outblob", *[errno.EBUSY] * 4)
    sleeps: list[float] = []
    with pytest.raises(ReportBusyError, match=r"EBUSY, still after 3 retries.*try again later"):
        backend(tree, sleeps).get_report(bytes(64))
    assert sleeps == [0.5, 1.0, 2.0] and tree.requests == []


@pytest.mark.parametrize(
    ("code", "error", "advice"),
    [
        (errno.EINVAL, ReportRequestError, "privlevel_floor"),
        (errno.ENXIO, FirmwareError, "check dmesg"),
        (errno.ENOMEM, MalformedEvidenceError, "larger than the kernel's buffer"),
        (errno.EFBIG, MalformedEvidenceError, "size limit"),
        (errno.ENOTTY, VmpckDisabledError, "until the VM reboots"),
        (errno.ETIMEDOUT, VmpckDisabledError, "reboot the VM"),
        (errno.EBADMSG, VmpckDisabledError, "reboot the VM"),
        (errno.EIO, VmpckDisabledError, "reboot the VM"),
        (errno.EACCES, BackendPermissionError, "run the agent as root"),
        (errno.EFAULT, ReportBackendError, "Bad address"),
    ],
)
def test_outblob_errnos_say_what_to_do(
    tree: EmulatedConfigfs, code: int, error: type[Exception], advice: str
) -> None:
    tree.fail("outblob", code)
    with pytest.raises(error, match=f"read .*outblob failed \\({errno.errorcode[code]}\\).*{advice}"):
        backend(tree).get_report(bytes(64))
    assert len(tree.removed) == 1


def test_a_report_of_the_wrong_size_is_refused(tree: EmulatedConfigfs) -> None:
    tree.outblob_override = bytes(1183)
    with pytest.raises(MalformedEvidenceError, match="expected a 1184-byte report, found 1183 bytes"):
        backend(tree).get_report(bytes(64))


def test_a_report_for_other_report_data_is_refused(tree: EmulatedConfigfs) -> None:
    tree.outblob_override = FIRMWARE.get_report(b"\x01" * 64).report  # a stale report from the cache
    with pytest.raises(MalformedEvidenceError, match=r"carries report_data 0101010101010101\.\.\., not the"):
        backend(tree).get_report(bytes(64))


def test_a_malformed_certificate_table_is_refused(tree: EmulatedConfigfs) -> None:
    tree.auxblob_override = b"\x01" * 24  # one entry, no terminator
    with pytest.raises(MalformedEvidenceError, match=r"certificate table is malformed.*terminator"):
        backend(tree).get_report(bytes(64))


def test_no_certificates_from_the_host(tmp_path: Path) -> None:
    firmware = SimulatedBackend.create(certificates=False)
    tree = EmulatedConfigfs(tmp_path, firmware)
    evidence = backend(tree).get_report(bytes(64))
    assert evidence.cert_table == b"" and dict(evidence.certificates) == {}


def test_rmdir_failure_after_success_is_reported(tree: EmulatedConfigfs) -> None:
    tree.rmdir_errors.append(errno.EBUSY)
    with pytest.raises(ReportBackendError, match=r"could not remove the report entry .*\(EBUSY\); remove it"):
        backend(tree).get_report(bytes(64))
    for entry in list(tree.entries):  # clean up what the failed rmdir left
        tree.rmdir(entry)


def test_rmdir_failure_does_not_hide_the_first_error(tree: EmulatedConfigfs) -> None:
    tree.provider = "tdx_guest"
    tree.rmdir_errors.append(errno.EBUSY)
    with pytest.raises(BackendUnavailableError) as info:
        backend(tree).get_report(bytes(64))
    if sys.version_info >= (3, 11):
        assert any("could not remove the report entry" in note for note in info.value.__notes__)
    for entry in list(tree.entries):
        tree.rmdir(entry)


def test_probe_removes_its_entry(tree: EmulatedConfigfs) -> None:
    assert "provider sev_guest" in backend(tree).probe()
    assert len(tree.removed) == 1 and tree.requests == []


def test_an_entry_name_collision_takes_another_name(
    tree: EmulatedConfigfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = iter(["taken", "taken", "free"])
    monkeypatch.setattr("blindbox.server.backends.configfs_tsm.secrets.token_hex", lambda n: next(names))
    taken = str(tree.root / f"blindbox-{os.getpid()}-taken")
    tree.mkdir(taken)
    nonce, report_data = bound_request()
    verified(backend(tree).get_report(report_data), FIRMWARE, nonce)
    assert [Path(p).name for p in tree.removed] == [f"blindbox-{os.getpid()}-free"]
    assert tree.entries[taken].generation == 0  # the other entry was not touched
    tree.rmdir(taken)


def test_concurrent_requests_each_get_their_own_entry_and_report(tree: EmulatedConfigfs) -> None:
    b = backend(tree)
    requests = [bound_request() for _ in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda r: b.get_report(r[1]), requests))
    for (nonce, _), evidence in zip(requests, results, strict=True):
        verified(evidence, FIRMWARE, nonce)
    assert sorted(data for data, _ in tree.requests) == sorted(data for _, data in requests)
    assert len(set(tree.removed)) == 8


def test_a_kernel_without_privlevel_floor_takes_floor_zero(tmp_path: Path) -> None:
    tree = EmulatedConfigfs(tmp_path, FIRMWARE, privlevel_floor=None)
    nonce, report_data = bound_request()
    verified(backend(tree).get_report(report_data, vmpl=1), FIRMWARE, nonce)
    assert tree.requests == [(report_data, 1)]
