"""The harnesses: one per parser of untrusted bytes, each with the only errors it may raise.

A harness feeds its input to the parser the way BlindBox meets such bytes (from a server, a file
or AMD KDS) and then exercises what is built from the result (messages, descriptions, the
checks that print field values), because an untyped error while a message is built is a finding
too. Any exception outside ``allowed`` is a finding, and so is any input that takes longer than
``bound`` seconds.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import h11
import requests

from blindbox.errors import (
    AttestationError,
    ConfigurationError,
    ManifestError,
    MeasurementError,
    NotAnEnclaveError,
    PolicyMismatchError,
)
from blindbox.server.framing import Refusal
from blindbox.snp.der import DerError
from blindbox.snp.product import Product
from blindbox.snp.report import AttestationReport
from fuzz import mutators
from fuzz.mutators import Mutator

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
VECTORS = ROOT.parent / "tests" / "vectors" / "snp"
#: The time every harness verifies at: inside the validity of most real VCEKs in the vectors.
AT = _dt.datetime(2025, 6, 1, tzinfo=_dt.timezone.utc)
#: Default per-input bound in seconds; the slowest legitimate input takes milliseconds.
BOUND = 2.0


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    mutators: tuple[Mutator, ...]
    max_size: int
    bound: float = BOUND

    @property
    def corpus(self) -> Path:
        return CORPUS / self.name


# -- shared fixtures (real vectors; built once per process) --------------------------------------
@cache
def _milan_report() -> AttestationReport:
    raw = (VECTORS / "reports" / "milan_gsg_v2_vcek.bin").read_bytes()
    return AttestationReport.from_bytes(raw).with_product(Product.MILAN)


@cache
def _policy() -> object:
    from blindbox.attest.policy import AttestationPolicy
    return AttestationPolicy(measurements=[bytes(48)])


# -- harnesses -----------------------------------------------------------------------------------
def report(data: bytes) -> None:
    from blindbox.snp.describe import describe, render_text

    parsed = AttestationReport.from_bytes(data)
    render_text(describe(parsed))


def _walk_der(tlv: object, depth: int) -> None:
    from blindbox.snp import der
    from blindbox.snp.certificate import parse_time

    assert isinstance(tlv, der.Tlv)
    if tlv.tag & 0x20:
        if depth < 64:
            for child in tlv.children():
                _walk_der(child, depth + 1)
        return
    readers: dict[int, Callable[[der.Tlv], object]] = {
        der.INTEGER: der.as_int, der.OID: der.as_oid, der.BOOLEAN: der.as_bool,
        der.BIT_STRING: der.as_bit_string, der.UTF8_STRING: der.as_string,
        der.PRINTABLE_STRING: der.as_string, der.IA5_STRING: der.as_string,
        der.UTC_TIME: parse_time, der.GENERALIZED_TIME: parse_time,
    }
    reader = readers.get(tlv.tag)
    if reader is not None:
        value = reader(tlv)
        str(value)
    if tlv.tag == der.INTEGER:
        str(der.as_int(tlv, der.MAX_SERIAL_BITS))


def der_reader(data: bytes) -> None:
    from blindbox.attest.binding import spki_of_certificate
    from blindbox.snp import der

    try:
        for tlv in der.read_all(data):
            _walk_der(tlv, 0)
    finally:
        try:
            spki_of_certificate(data)
        except NotAnEnclaveError:
            pass


def x509(data: bytes) -> None:
    from blindbox.snp.certificate import AmdCertificate, format_name
    from blindbox.snp.extensions import check_against_report, parse_extensions

    cert = AmdCertificate.from_der(data)
    format_name(cert.subject), format_name(cert.issuer), cert.is_ca(), cert.serial_number.__format__("x")
    str(cert.serial_number)
    cert.public_key()
    extensions = parse_extensions(cert)
    str(extensions)
    check_against_report(extensions, _milan_report())


def pem(data: bytes) -> None:
    from blindbox.snp.certificate import load_all

    load_all(data)
    load_all(data.decode("latin-1"))


def certtable(data: bytes) -> None:
    from blindbox.snp.certificate import load_all
    from blindbox.snp.certtable import decode_cert_table

    table = decode_cert_table(data)
    for body in table.certificates.values():
        try:
            load_all(body)
        except NotAnEnclaveError:
            pass


def evidence(data: bytes) -> None:
    from blindbox.attest.evidence import Evidence
    from blindbox.attest.verifier import assess_evidence, verify_evidence

    parsed = Evidence.from_json(data)
    assessment = assess_evidence(parsed, spki_der=b"\x30\x00", nonce=None, policy=_policy(),  # type: ignore[arg-type]
                                 at=AT)
    assessment.to_dict()
    verify_evidence(parsed, spki_der=b"\x30\x00", nonce=None, policy=_policy(), at=AT)  # type: ignore[arg-type]


def crl(data: bytes) -> None:
    from blindbox.snp.certificate import load_all
    from blindbox.snp.crl import RevocationList

    parsed = RevocationList.from_der(data)
    parsed.describe()
    parsed.is_revoked(0)
    [str(s) for s in parsed.revoked_serials]
    parsed.check_current(AT)
    parsed.verify_signed_by(load_all((VECTORS / "ca" / "milan" / "ark.pem").read_bytes())[0])


def manifest(data: bytes) -> None:
    from blindbox.attest.manifest import Manifest

    loaded = Manifest.load(data)
    loaded.attestation_policy()
    loaded.policy_requirements()


def owner_policy(data: bytes) -> None:
    """An operator's policy file (``from_json``), then served policy bytes as a client checks them."""
    from blindbox.attest.owner_policy import OwnerPolicy, PolicyRequirements

    try:
        OwnerPolicy.from_json(data).to_dict()
    except ConfigurationError:
        pass
    PolicyRequirements(authentication_required=True,
                       egress_subset_of=["logs.example.com", ("api.example.com", 443)]).check(data)


class _Socket:
    """Serves ``data`` in chunks of a size chosen by the input's first byte (1 byte per TLS record too)."""

    def __init__(self, data: bytes) -> None:
        self.size = (1, 2, 7, 100, 1500, 16384)[data[0] % 6] if data else 1
        self.data = memoryview(data[1:])
        self.pos = 0

    def settimeout(self, value: float | None, /) -> None:
        pass

    def sendall(self, data: bytes, /) -> None:
        pass

    def recv(self, size: int, /) -> bytes:
        chunk = bytes(self.data[self.pos:self.pos + min(size, self.size)])
        self.pos += len(chunk)
        return chunk


def exchange(data: bytes) -> None:
    from blindbox.requests.exchange import fetch_evidence

    response = fetch_evidence(_Socket(data), host="enclave.test:8443", nonce=None, timeout=30)
    str(response)


def measure_ovmf(data: bytes) -> None:
    from blindbox.attest.measure import measure

    with tempfile.TemporaryDirectory(prefix="blindbox-fuzz-") as work:
        path = os.path.join(work, "OVMF.fd")
        with open(path, "wb") as out:
            out.write(data)
        measure(path, vcpus=1, vcpu_type="EPYC-Milan")


def kds_headers(data: bytes) -> None:
    """AMD KDS reply headers (Retry-After, Content-Length): parsers owned by the KDS client."""
    import requests

    from blindbox._http import read_bounded
    from blindbox.snp.kds import _parse_retry_after

    text = data.decode("latin-1")
    _parse_retry_after(text)
    response = requests.Response()
    response.headers["Content-Length"] = text
    response.raw = io.BytesIO(b"x" * 10)
    read_bounded(response, 5)


@cache
def _agent_auth() -> object:
    from blindbox.attest.owner_policy import OwnerPolicy
    from blindbox.server.auth import Authenticator

    token_sha256 = hashlib.sha256(b"fuzz-token").hexdigest()
    return Authenticator(OwnerPolicy(authentication_required=True, bearer_token_sha256=(token_sha256,)))


def agent_request(data: bytes) -> None:
    """The agent's handling of a client's bytes before anything reaches the upstream: the head
    arriving in pieces (incremental framing scan), the smuggling checks, h11's parse of head and
    body, authentication and the upstream header rewrite."""
    import h11

    from blindbox.server.auth import Authenticator
    from blindbox.server.framing import MAX_HEAD_BYTES, check_head, head_end
    from blindbox.server.headers import upstream_request_headers

    buffer, scanned, end = bytearray(), 0, None
    for start in range(0, len(data), 7):
        buffer += data[start:start + 7]
        end = head_end(buffer, scanned)
        if end is not None:
            break
        scanned = len(buffer)
    if end is None:
        return
    check_head(bytes(buffer[:end]))
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.receive_data(data)
    conn.receive_data(b"")
    event = conn.next_event()
    if not isinstance(event, h11.Request):
        return
    auth = _agent_auth()
    assert isinstance(auth, Authenticator)
    principal = auth.bearer(event.headers)
    upstream_request_headers(event.headers, client_ip="198.18.0.1", chunked=False,
                             principal=None if principal is None else principal.digest,
                             drop_authorization=principal is not None)
    for _ in range(1024):  # the body, to its end or the first framing error
        event = conn.next_event()
        if event is h11.NEED_DATA or isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return


_DER = (mutators.mutate_der,) * 3 + mutators.BYTES
_TEXT = (mutators.insert_run, *mutators.BYTES)

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("report", report, (NotAnEnclaveError,), mutators.BYTES, 4096),
    Target("der", der_reader, (DerError, NotAnEnclaveError), _DER, 16 * 1024),
    Target("x509", x509, (NotAnEnclaveError,), _DER, 16 * 1024),
    Target("pem", pem, (NotAnEnclaveError,), (mutators.mutate_pem,) * 3 + _TEXT, 64 * 1024),
    Target("certtable", certtable, (NotAnEnclaveError,), _DER + mutators.BYTES, 64 * 1024),
    Target("evidence", evidence, (AttestationError,), (mutators.mutate_json,) * 4 + _TEXT, 64 * 1024),
    Target("crl", crl, (NotAnEnclaveError,), _DER, 256 * 1024),
    Target("manifest", manifest, (ManifestError,), (mutators.mutate_json,) * 4 + _TEXT, 1024 * 1024),
    Target("owner_policy", owner_policy, (PolicyMismatchError,), (mutators.mutate_json,) * 4 + _TEXT,
           16 * 1024),
    Target("exchange", exchange, (NotAnEnclaveError,), (mutators.mutate_http,) * 4 + _TEXT, 70 * 1024),
    Target("measure", measure_ovmf, (MeasurementError,), (mutators.mutate_ovmf,) * 3 + mutators.BYTES,
           64 * 1024),
    Target("kds_headers", kds_headers, (requests.exceptions.InvalidHeader,), _TEXT, 8 * 1024),
    Target("agent_request", agent_request, (Refusal, h11.RemoteProtocolError),
           (mutators.mutate_http,) * 4 + _TEXT, 40 * 1024),
)}
