"""Every parser of untrusted input fed its worst case: a typed refusal, in linear time.

Issue 16 §1 and issue 18 §9: each case is the input the audit (docs/threat-model.md, "Parsers of
untrusted input") names for a parser — long runs of the characters a pattern repeats, attacker-
sized integers and OID arcs, deep nesting, maximal sizes, one byte per read — and each asserts a
typed error within a generous bound (seconds where milliseconds are expected), so a super-linear
regression fails instead of hanging. Several of these hung or took seconds to minutes, or raised an
untyped ``ValueError``, before the fixes; the notes say which.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from fuzz import der_tree

import blindbox.requests as br
from blindbox.attest.evidence import MAX_EVIDENCE_BYTES, Evidence
from blindbox.attest.manifest import Manifest
from blindbox.attest.measure import MAX_METADATA_BYTES, MAX_METADATA_SECTIONS, measure
from blindbox.attest.owner_policy import OwnerPolicy, PolicyRequirements
from blindbox.attest.policy import AttestationPolicy
from blindbox.attest.verifier import verify_evidence
from blindbox.errors import (
    ConfigurationError,
    ManifestError,
    MeasurementError,
    NotAnEnclaveError,
    PolicyMismatchError,
)
from blindbox.requests.attestor import Attestor
from blindbox.requests.exchange import Deadline, ExchangeTimeout, fetch_evidence
from blindbox.snp import AmdCertificate, Product, verify_report
from blindbox.snp.certificate import MAX_PEM_SIZE, load_all
from blindbox.snp.certtable import decode_cert_table, encode_cert_table
from blindbox.snp.crl import MAX_CRL_SIZE, RevocationList
from blindbox.snp.extensions import OID_BL_SPL, OID_SPL_4, OID_STRUCT_VERSION, OID_UCODE_SPL
from blindbox.snp.kds import KdsClient, crl_url
from blindbox.testing import EnclaveServer, SoftwarePlatform

from .conftest import VECTORS, report_vectors
from .test_manifest import valid_doc
from .test_measure import AMDSEV_SECTIONS, SEC_MEM, synthetic_ovmf
from .test_requests_exchange import FakeSocket, _response

#: Generous: every case below takes milliseconds when linear.
BOUND = 5.0
VECTOR = report_vectors()[0]
BEGIN, END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


@contextmanager
def within(seconds: float = BOUND) -> Iterator[None]:
    """CPU time, so the bound measures the parser, not how busy the machine is."""
    start = time.process_time()
    yield
    elapsed = time.process_time() - start
    assert elapsed < seconds, f"took {elapsed:.2f} s of CPU, expected well under {seconds} s (super-linear?)"


def _pem(der: bytes) -> str:
    body = base64.b64encode(der).decode()
    return BEGIN + "\n" + "\n".join(body[i:i + 64] for i in range(0, len(body), 64)) + "\n" + END + "\n"


# -- PEM (snp/certificate.py): found by markers, linear; each block capped ---------------------------
@pytest.mark.parametrize("text", [
    BEGIN + " " * 60_000,  # a BEGIN line, spaces and no END: 4 000 spaces took 61 s, 60 000 did not return
    BEGIN + "\n" + "QUJD" * 16 + " " * 60_000 + "QUJD\n" + END,  # a run inside a block that has its END: 17 s
    BEGIN + "\n" + " " * 60_000 + "\n" + END,
    BEGIN + "\n" + "A" * 60_000 + "\n" + END,  # base64 characters beyond the size of any certificate
    (BEGIN + "\n") * 5_000,  # BEGIN lines and nothing else
    BEGIN + "\n" + "\t\r\n " * 15_000 + END,
], ids=["no-end", "spaces-inside", "only-spaces", "long-body", "many-begins", "mixed-whitespace"])
def test_pem_worst_cases_are_refused_in_linear_time(text: str) -> None:
    with within(), pytest.raises(NotAnEnclaveError, match="certificate"):
        load_all(text)
    with within(), pytest.raises(NotAnEnclaveError, match="certificate"):
        load_all(text.encode())


def test_pem_with_whitespace_anywhere_still_parses() -> None:
    der = VECTOR.cert
    body = base64.b64encode(der).decode()
    lines = " \n".join(body[i:i + 10] for i in range(0, len(body), 10))
    text = "junk\n" + BEGIN + "\r\n\t" + lines + "\n\n" + END
    assert [c.der for c in load_all(text)] == [der]


def test_a_whitespace_run_inside_a_real_certificate_is_read_in_linear_time() -> None:
    """Before: 20 000 spaces between two base64 lines of a block took 2 s (quadratic backtracking)."""
    text = _pem(VECTOR.cert)
    cut = text.index("\n", len(BEGIN) + 1) + 1
    with within(1.0):
        assert [c.der for c in load_all(text[:cut] + " " * 20_000 + text[cut:])] == [VECTOR.cert]


def test_pem_block_size_cap_admits_the_largest_certificate() -> None:
    """MAX_PEM_SIZE is computed, not guessed: 16 KiB of DER in 64-column CRLF PEM fits."""
    body = base64.b64encode(bytes(16 * 1024)).decode()
    pem_body = "\r\n" + "\r\n".join(body[i:i + 64] for i in range(0, len(body), 64)) + "\r\n"
    assert len(pem_body) <= MAX_PEM_SIZE
    with pytest.raises(NotAnEnclaveError, match="malformed DER"):  # read and decoded, not refused by size
        load_all(BEGIN + pem_body + END)


def _evidence_json(certificates: dict[str, str]) -> bytes:
    doc = {"version": 1, "tee": "sev-snp", "report": base64.b64encode(VECTOR.report).decode(),
           "certificates": certificates, "policy": None}
    return json.dumps(doc).encode()


def test_evidence_caps_each_certificate_before_decoding() -> None:
    body = _evidence_json({"vcek": BEGIN + " " * (MAX_EVIDENCE_BYTES - 3_000)})
    assert len(body) <= MAX_EVIDENCE_BYTES
    with within(), pytest.raises(NotAnEnclaveError, match=r"certificates\.vcek: expected at most"):
        Evidence.from_json(body)


@pytest.mark.parametrize("filler", [" ", "\n", "A"])
def test_evidence_at_the_size_cap_is_verified_or_refused_quickly(filler: str) -> None:
    """The whole client path: a maximal evidence document whose PEM is one long run."""
    room = MAX_PEM_SIZE - len(BEGIN) - len(END) - 10
    evidence = Evidence.from_json(_evidence_json({"vcek": BEGIN + filler * room + END}))
    with within(), pytest.raises(NotAnEnclaveError):
        verify_evidence(evidence, spki_der=b"\x30\x00", nonce=None,
                        policy=AttestationPolicy(measurements=[bytes(48)]), at=VECTOR.at)


# -- attacker-sized integers and OID arcs (snp/der.py, extensions.py, certificate.py, crl.py) ------
def _certificate(cert_der: bytes, change: Callable[[list[der_tree.Node]], None]) -> bytes:
    """The certificate with its extension list changed (lengths re-encoded; the signature breaks)."""
    [cert] = der_tree.parse(cert_der) or []
    assert cert.children is not None
    tbs = cert.children[0]
    assert tbs.children is not None
    [wrapper] = [n for n in tbs.children if n.tag == 0xA3]
    assert wrapper.children is not None and wrapper.children[0].children is not None
    change(wrapper.children[0].children)
    return der_tree.encode(cert)


def _set_extension(oid: str, value: bytes) -> Callable[[list[der_tree.Node]], None]:
    def change(extensions: list[der_tree.Node]) -> None:
        for ext in extensions:
            assert ext.children is not None
            if ext.children[0].content == der_tree.oid(oid):
                ext.children[-1] = der_tree.Node(0x04, value)
                return
        extensions.append(der_tree.Node(0x30, children=[der_tree.Node(0x06, der_tree.oid(oid)),
                                                         der_tree.Node(0x04, value)]))
    return change


HUGE_INT = der_tree.tlv(0x02, b"\x7f" + b"\xff" * 2_500)  # about 6 000 decimal digits


@pytest.mark.parametrize("oid", [OID_STRUCT_VERSION, OID_BL_SPL, OID_UCODE_SPL, OID_SPL_4],
                         ids=["structVersion", "blSPL", "ucodeSPL", "spl_4"])
def test_huge_integer_extension_is_a_typed_refusal(oid: str) -> None:
    """Before: Python's int-to-str digit limit raised a bare ValueError while the message was built."""
    cert = _certificate(VECTOR.cert, _set_extension(oid, HUGE_INT))
    expected = r"malformed \(INTEGER of 2501 bytes; expected at most 64"
    with within(), pytest.raises(NotAnEnclaveError, match=expected):
        verify_report(VECTOR.report, certificates=cert, at=VECTOR.at)


def test_integer_just_over_64_bits_is_refused_and_64_bits_accepted() -> None:
    over = _certificate(VECTOR.cert, _set_extension(OID_SPL_4, der_tree.tlv(0x02, b"\x01" + bytes(8))))
    with pytest.raises(NotAnEnclaveError, match="INTEGER of 65 bits; expected at most 64"):
        verify_report(VECTOR.report, certificates=over, at=VECTOR.at)
    widest = _certificate(VECTOR.cert, _set_extension(OID_SPL_4, der_tree.tlv(0x02, b"\x00" + b"\xff" * 8)))
    with pytest.raises(NotAnEnclaveError, match="spl_4: expected 0, found 18446744073709551615"):
        verify_report(VECTOR.report, certificates=widest, at=VECTOR.at)


@pytest.mark.parametrize("arc_bytes", [20, 2_000])
def test_huge_oid_arc_is_a_typed_refusal(arc_bytes: int) -> None:
    """Before: a 2 000-byte arc made as_oid's str() raise a bare ValueError out of the parser."""
    huge = "1.3.6.1.4.1." + str(1 << (7 * arc_bytes - 1))
    change = _set_extension("1.3.6.1.4.1.3704.1.1", der_tree.tlv(0x02, b"\x00"))

    def add(extensions: list[der_tree.Node]) -> None:
        change(extensions)
        extensions[-1].children[0].content = der_tree.oid(huge)  # type: ignore[index]

    cert = _certificate(VECTOR.cert, add)
    with within(), pytest.raises(NotAnEnclaveError, match="OBJECT IDENTIFIER"):
        AmdCertificate.from_der(cert)


def test_serial_numbers_are_bounded_to_20_octets() -> None:
    def serial(content: bytes) -> bytes:
        [cert] = der_tree.parse(VECTOR.cert) or []
        cert.children[0].children[1] = der_tree.Node(0x02, content)  # type: ignore[index]
        return der_tree.encode(cert)

    assert AmdCertificate.from_der(serial(b"\x7f" + b"\xff" * 19)).serial_number == (1 << 159) - 1
    with within(), pytest.raises(NotAnEnclaveError, match="expected at most 160 bits"):
        AmdCertificate.from_der(serial(b"\x7f" + b"\xff" * 3_000))


def test_crl_with_a_huge_revoked_serial_is_a_typed_refusal() -> None:
    now = dt.datetime(2025, 5, 1, tzinfo=dt.timezone.utc)
    crl = SoftwarePlatform().crl(Product.MILAN, revoked=[0x1234], this_update=now,
                                 next_update=now + dt.timedelta(days=7))
    tree = der_tree.parse(crl) or []
    revoked = [n for n in der_tree.walk(tree) if n.tag == 0x02 and n.content == b"\x12\x34"]
    assert len(revoked) == 1
    revoked[0].content = b"\x7f" + b"\xff" * 3_000
    with within(), pytest.raises(NotAnEnclaveError, match=r"CRL: malformed DER.*at most 160 bits"):
        RevocationList.from_der(der_tree.encode(tree[0]))


def _test_crl(change: Callable[[list[der_tree.Node]], None]) -> bytes:
    now = dt.datetime(2025, 5, 1, tzinfo=dt.timezone.utc)
    crl = SoftwarePlatform().crl(Product.MILAN, this_update=now, next_update=now + dt.timedelta(days=7))
    [root] = der_tree.parse(crl) or []
    change(root.children[0].children)  # type: ignore[index,arg-type]
    return der_tree.encode(root)


def test_crl_entry_extensions_are_checked_for_duplicates_in_linear_time() -> None:
    """Before: the duplicate check scanned a list, 15 000 extensions took seconds (4 MiB: an hour)."""
    extensions = [der_tree.Node(0x30, children=[der_tree.Node(0x06, der_tree.oid(f"1.2.{i + 1}")),
                                                 der_tree.Node(0x04, b"\x05\x00")]) for i in range(15_000)]
    entry = der_tree.Node(0x30, children=[der_tree.Node(0x02, b"\x01"), der_tree.Node(0x17, b"250501000000Z"),
                                          der_tree.Node(0x30, children=extensions)])
    data = _test_crl(lambda fields: fields.insert(5, der_tree.Node(0x30, children=[entry])))
    assert len(data) < MAX_CRL_SIZE
    with within(2.0):
        assert RevocationList.from_der(data).revoked_serials == {1}


def test_crl_size_is_capped_before_parsing() -> None:
    entries = [der_tree.Node(0x30, children=[der_tree.Node(0x02, (i + 1).to_bytes(3, "big")),
                                              der_tree.Node(0x17, b"250501000000Z")])
               for i in range(0x10000, 0x10000 + 20_000)]
    data = _test_crl(lambda fields: fields.insert(5, der_tree.Node(0x30, children=entries)))
    with within(0.5), pytest.raises(NotAnEnclaveError, match=f"CRL: expected at most {MAX_CRL_SIZE} bytes"):
        RevocationList.from_der(data)


def test_deep_der_nesting_is_refused_without_recursion() -> None:
    nested = b""
    for _ in range(5_000):
        nested = der_tree.tlv(0x30, nested)
    with within(), pytest.raises(NotAnEnclaveError):
        AmdCertificate.from_der(nested[: 16 * 1024])
    table = encode_cert_table({"vcek": nested[:16 * 1024]})
    parsed = decode_cert_table(table).certificates["vcek"]
    with within(), pytest.raises(NotAnEnclaveError):
        load_all(parsed)


# -- JSON documents (evidence, manifests, owner policies: attest/strict_json.py) ----------------------
@pytest.mark.parametrize("doc", [
    b"[" * 60_000 + b"]" * 60_000,
    b'{"version": ' + b"9" * 4_299 + b"}",
    b'{"version": ' + b"1" * 30_000 + b"}",
    b'{"version": 1, "version": 1}',
    b'{"a": "' + b" " * 60_000 + b'"}',
], ids=["deep", "4299-digits", "30000-digits", "duplicate", "long-string"])
def test_json_worst_cases_are_typed_refusals(doc: bytes) -> None:
    with within(), pytest.raises(NotAnEnclaveError, match="evidence"):
        Evidence.from_json(doc[:MAX_EVIDENCE_BYTES])
    with within(), pytest.raises(ConfigurationError, match="policy"):
        OwnerPolicy.from_json(doc[:16 * 1024])
    with within(), pytest.raises(ManifestError):
        Manifest.load(doc)


def test_manifest_duplicate_port_check_is_linear() -> None:
    """Before: 57 000 distinct ports took 28 s (each compared with every port listed before it)."""
    doc: dict[str, Any] = valid_doc()
    ports = [*range(1, 65536), 1]
    doc["owner_policy"]["egress_subset_of"] = [{"host": "api.example.com", "ports": ports}]
    expected = r"ports\[65535\]: expected a port .* not listed before"
    with within(), pytest.raises(ManifestError, match=expected):
        Manifest.load(json.dumps(doc).encode())


def test_served_policy_with_every_port_is_checked_quickly() -> None:
    served = b'{"authentication":{"required":false},"egress":{"allow":[{"host":"a.example","ports":[' + \
        b",".join(str(p).encode() for p in range(1, 3000)) + b"]}]},\"version\":1}"
    requirements = PolicyRequirements(egress_subset_of=[("a.example", 443)])
    with within(), pytest.raises(PolicyMismatchError):
        requirements.check(served)


# -- the evidence exchange (requests/exchange.py) ------------------------------------------------
@pytest.mark.parametrize("pattern", [b"a", b"a\r\n", b"\r\n\r"])
def test_headers_one_byte_per_read_are_scanned_once(pattern: bytes) -> None:
    """Before: the whole buffer was searched again after each read, 4 s of CPU for a 64 KiB head."""
    head = (b"HTTP/1.1 200 OK\r\nX-A: " + pattern * MAX_EVIDENCE_BYTES)[:MAX_EVIDENCE_BYTES - 100]
    with within(1.5), pytest.raises(NotAnEnclaveError, match="closed the connection after"):
        fetch_evidence(FakeSocket(head, chunk=1), host="enclave.test", nonce=None, timeout=30)


def test_repeated_header_lines_are_joined_once() -> None:
    lines = ["X-Repeat: " + "v" * 8] * 3_000
    with within(), pytest.raises(NotAnEnclaveError, match="expected HTTP 200"):
        fetch_evidence(FakeSocket(_response(b"", *lines, status="404 Not Found")), host="e", nonce=None,
                       timeout=30)


@pytest.mark.parametrize("status", [b"HTTP/1.1 200 " + b" " * 60_000, b"HTTP/1.1 " + b"9" * 60_000,
                                    b"HTTP/" + b"1." * 30_000])
def test_status_line_worst_cases(status: bytes) -> None:
    with within(), pytest.raises(NotAnEnclaveError, match="evidence"):
        fetch_evidence(FakeSocket(status + b"\r\n\r\n"), host="e", nonce=None, timeout=30)


# -- one deadline for the whole attestation (exchange.py, attestor.py) ----------------------------
def test_verification_starts_only_before_the_deadline() -> None:
    attestor = Attestor(AttestationPolicy(measurements=[bytes(48)]), None, nonce=False, timeout=5)
    evidence = Evidence(report=VECTOR.report, certificates={"vcek": _pem(VECTOR.cert)})
    deadline = Deadline(0.01)
    time.sleep(0.02)
    with pytest.raises(ExchangeTimeout, match=r"verification not finished within the 0\.01 s timeout"):
        attestor.verify(evidence, spki_der=b"\x30\x00", nonce=None, deadline=deadline)


def test_timeout_bounds_exchange_and_verification_together(
    blindbox_enclave: EnclaveServer, tmp_path: Path
) -> None:
    """A verification that outlasts ``timeout`` (here: a KDS that answers slowly) is a timeout, and
    nothing is sent. Before, ``timeout`` covered only the exchange and the request went out."""
    platform: SoftwarePlatform = blindbox_enclave.source.platform  # type: ignore[attr-defined]
    now = dt.datetime.now(dt.timezone.utc)
    crl = platform.crl(Product.MILAN, "vcek", this_update=now - dt.timedelta(hours=1),
                       next_update=now + dt.timedelta(days=1))

    def slow_kds(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        time.sleep(1.5)
        return 200, {}, crl

    with responses.RequestsMock() as mock:
        mock.add_passthru(blindbox_enclave.url)
        mock.add_callback(responses.GET, crl_url(Product.MILAN), callback=slow_kds)
        with pytest.raises(requests.exceptions.ConnectTimeout, match="during attestation"):
            with br.SecureSession(blindbox_enclave.address, measurements=[blindbox_enclave.measurement],
                                  roots=blindbox_enclave.roots_pem, kds=KdsClient(cache_dir=tmp_path),
                                  timeout=1.0) as session:
                session.post("/upload", data=b"secret-7d1e")
    assert b"secret-7d1e" not in blindbox_enclave.raw_bytes_received()


# -- measure inputs (attest/measure.py) ---------------------------------------------------------------
def test_metadata_declaring_gigabytes_is_refused_before_hashing(tmp_path: Path) -> None:
    """Before: 4 KiB of firmware declaring 3.75 GiB of sections kept sev-snp-measure busy for seconds."""
    big = [*AMDSEV_SECTIONS, (0x10000000, 0xF0000000, SEC_MEM)]
    path = tmp_path / "OVMF.fd"
    path.write_bytes(synthetic_ovmf(sections=big))
    with within(), pytest.raises(MeasurementError, match=f"at most {MAX_METADATA_SECTIONS} sections covering "
                                                        f"at most 0x{MAX_METADATA_BYTES:x} bytes"):
        measure(path, vcpus=1, vcpu_type="EPYC-Milan")


def test_metadata_with_too_many_sections_is_refused(tmp_path: Path) -> None:
    extra = [(0x900000 + i * 0x1000, 0x1000, SEC_MEM) for i in range(MAX_METADATA_SECTIONS)]
    many = [*AMDSEV_SECTIONS, *extra]
    path = tmp_path / "OVMF.fd"
    path.write_bytes(synthetic_ovmf(sections=many))
    with within(), pytest.raises(MeasurementError, match=f"found {len(many)} sections"):
        measure(path, vcpus=1, vcpu_type="EPYC-Milan")


def test_real_ovmf_metadata_is_far_below_the_bounds() -> None:
    result = measure(VECTORS / "measure" / "ovmf_AmdSev_suffix.bin", vcpus=1, vcpu_type="EPYC-Milan")
    assert len(result.digest) == 48


# -- the agent's request head (server/framing.py), fed as a slowloris client sends it ---------------
def _feed_head_bytewise(head: bytes) -> int | None:
    from blindbox.server.framing import head_end

    buffer, scanned = bytearray(), 0
    for byte in head:
        buffer.append(byte)
        end = head_end(buffer, scanned)
        if end is not None:
            return end
        scanned = len(buffer)
    return None


def test_agent_head_arriving_one_byte_at_a_time_is_scanned_once() -> None:
    from blindbox.server.framing import MAX_HEAD_BYTES, Refusal

    filler = b"X-Pad: " + b"a" * 100 + b"\r\n"
    head = b"GET / HTTP/1.1\r\nHost: e\r\n" + filler * ((MAX_HEAD_BYTES - 200) // len(filler)) + b"\r\n"
    with within():
        assert _feed_head_bytewise(head) == len(head)
    with within(), pytest.raises(Refusal, match="431"):
        _feed_head_bytewise(b"GET / HTTP/1.1\r\n" + b"a" * (MAX_HEAD_BYTES + 1))


def test_agent_head_split_anywhere_is_found_and_bare_lf_still_refused() -> None:
    from blindbox.server.framing import Refusal, head_end

    head = b"GET / HTTP/1.1\r\nHost: e\r\n\r\n"
    for cut in range(1, len(head)):
        assert head_end(head[:cut], 0) is None
        assert head_end(head, cut) == len(head), cut
    bare = b"GET / HTTP/1.1\r\nHost: e\nX: y\r\n\r\n"
    for cut in range(1, len(bare)):
        with pytest.raises(Refusal, match="bare LF"):
            if head_end(bare[:cut], 0) is None:
                head_end(bare, cut)
