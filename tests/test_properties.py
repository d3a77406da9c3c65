"""Property tests: whatever bytes arrive, the only exception that escapes is NotAnEnclaveError.

A verifier that raises ValueError, IndexError or struct.error on hostile input
is a verifier whose callers will catch the wrong thing (or nothing). Mutated
real reports go further: any change to a genuine report must be refused. (The
one exception, the ECDSA twin (r, n - s), needs an exact 48-byte rewrite that
no random mutation produces; see test_vectors.test_ecdsa_twin_signature_...)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindbox.cli import main
from blindbox.errors import NotAnEnclaveError
from blindbox.snp import AttestationReport, verify_report
from blindbox.snp.report import REPORT_SIZE
from blindbox.snp.verify import CERTIFICATE_NAMES

from .conftest import ReportVector, report_vectors

VECTORS_E2E = report_vectors()
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
vector_st = st.sampled_from(VECTORS_E2E)


def _refused(report: Any, certificates: Any, vector: ReportVector) -> NotAnEnclaveError:
    """Verification must fail with exactly NotAnEnclaveError; return it."""
    with pytest.raises(NotAnEnclaveError) as info:
        verify_report(report, certificates=certificates, at=vector.at)
    return info.value


def _parse_or_refuse(data: bytes) -> None:
    try:
        AttestationReport.from_bytes(data)
    except NotAnEnclaveError:
        pass


# --- Arbitrary reports -----------------------------------------------------------------------------


@SETTINGS
@given(data=st.binary(max_size=3 * REPORT_SIZE), vector=vector_st)
def test_arbitrary_bytes_of_any_length(data: bytes, vector: ReportVector) -> None:
    _parse_or_refuse(data)
    _refused(data, vector.cert, vector)


@SETTINGS
@given(data=st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE), vector=vector_st)
def test_arbitrary_bytes_of_report_size(data: bytes, vector: ReportVector) -> None:
    _parse_or_refuse(data)
    _refused(data, vector.cert, vector)


@st.composite
def plausible_reports(draw: st.DrawFn) -> bytes:
    """Random 1184-byte reports whose header passes (version, algorithm, key selector), to reach
    the deeper field checks that purely random bytes never get past."""
    body = bytearray(draw(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE)))
    body[0x000:0x004] = draw(st.sampled_from([2, 3, 4, 5])).to_bytes(4, "little")
    body[0x034:0x038] = (1).to_bytes(4, "little")
    body[0x048:0x04C] = draw(st.integers(0, 7)).to_bytes(4, "little")
    if draw(st.booleans()):
        body[0x04C:0x050] = bytes(4)
        body[0x008:0x010] = (1 << 17 | draw(st.integers(0, 0x3FF_FFFF))).to_bytes(8, "little")
    if draw(st.booleans()):
        body[0x18B:0x1A0] = bytes(0x15)
        body[0x188:0x18A] = draw(st.sampled_from([b"\x19\x01", b"\x19\x11", b"\x1a\x02", b"\x17\x31"]))
    if draw(st.booleans()):
        body[0x1F8:0x2A0] = bytes(0xA8)
        body[0x330:] = bytes(REPORT_SIZE - 0x330)
    return bytes(body)


@SETTINGS
@given(data=plausible_reports(), vector=vector_st)
def test_plausible_but_forged_reports(data: bytes, vector: ReportVector) -> None:
    _parse_or_refuse(data)
    _refused(data, vector.cert, vector)


# --- Mutated real reports: any change is refused ---------------------------------------------------

mutation_st = st.one_of(
    st.tuples(st.just("set"), st.integers(0, REPORT_SIZE - 1), st.integers(0, 255)),
    st.tuples(st.just("flip"), st.integers(0, REPORT_SIZE - 1), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, REPORT_SIZE - 1), st.just(0)),
    st.tuples(st.just("extend"), st.integers(1, 64), st.integers(0, 255)),
)


def _mutate(report: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(report)
    for kind, a, b in mutations:
        if kind == "set" and a < len(data):
            data[a] = b
        elif kind == "flip" and a < len(data):
            data[a] ^= 1 << b
        elif kind == "truncate":
            del data[a:]
        elif kind == "extend":
            data += bytes([b]) * a
    return bytes(data)


@SETTINGS
@given(vector=vector_st, mutations=st.lists(mutation_st, min_size=1, max_size=6))
def test_mutated_real_reports(vector: ReportVector, mutations: list[tuple[str, int, int]]) -> None:
    mutated = _mutate(vector.report, mutations)
    _parse_or_refuse(mutated)
    if mutated == vector.report:  # e.g. a byte set to the value it already had
        verify_report(mutated, certificates=vector.cert, at=vector.at)
    else:
        _refused(mutated, vector.cert, vector)


@SETTINGS
@given(vector=vector_st, other=vector_st, start=st.integers(0, REPORT_SIZE - 1), size=st.integers(1, 96))
def test_reports_spliced_from_two_genuine_reports(
    vector: ReportVector, other: ReportVector, start: int, size: int
) -> None:
    """Pasting a range of another genuine report in (a measurement, a TCB, a signature...) is refused."""
    spliced = vector.report[:start] + other.report[start : start + size] + vector.report[start + size :]
    spliced = spliced[:REPORT_SIZE]
    if spliced == vector.report:
        return
    _refused(spliced, vector.cert, vector)


# --- Arbitrary and mutated certificates ------------------------------------------------------------


@SETTINGS
@given(vector=vector_st, cert=st.one_of(st.binary(max_size=4096), st.text(max_size=2048)))
def test_arbitrary_certificate_argument(vector: ReportVector, cert: bytes | str) -> None:
    _refused(vector.report, cert, vector)


@SETTINGS
@given(
    vector=vector_st,
    ops=st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 255), st.sampled_from(["set", "insert", "delete"])),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_real_certificates(vector: ReportVector, ops: list[tuple[int, int, str]]) -> None:
    cert = bytearray(vector.cert)
    for pos, value, kind in ops:
        pos %= len(cert) + 1
        if kind == "insert":
            cert.insert(pos, value)
        elif kind == "delete" and pos < len(cert):
            del cert[pos]
        elif kind == "set" and pos < len(cert):
            cert[pos] = value
    if bytes(cert) == vector.cert:
        return
    _refused(vector.report, bytes(cert), vector)


@SETTINGS
@given(
    vector=vector_st,
    mapping=st.dictionaries(
        st.one_of(st.sampled_from(CERTIFICATE_NAMES), st.text(max_size=8)),
        st.one_of(st.binary(max_size=512), st.sampled_from([v.cert for v in VECTORS_E2E])),
        max_size=5,
    ),
)
def test_arbitrary_certificate_mappings(vector: ReportVector, mapping: dict[str, bytes]) -> None:
    try:
        verified = verify_report(vector.report, certificates=mapping, at=vector.at)
    except NotAnEnclaveError:
        return
    # Only possible when the mapping happens to carry this report's own signing certificate.
    assert verified.certificate.der == vector.cert


# --- The command line ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2 * REPORT_SIZE), vector=vector_st)
def test_cli_exits_1_for_arbitrary_report_files(
    data: bytes, vector: ReportVector, capsys: pytest.CaptureFixture[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.bin"
        path.write_bytes(data)
        argv = [
            "verify",
            os.fspath(path),
            "--cert",
            os.fspath(vector.cert_path),
            "--at",
            vector.at.isoformat(),
        ]
        assert main([*argv, "--json"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("blindbox verify: NotAnEnclaveError: ")
    assert '"verified": false' in out
