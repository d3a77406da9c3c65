"""The KDS cache is untrusted input (issue 18 §2), and peers' malformed headers are typed errors (§9).

Each test performs an attack as another local user sharing ``cache_dir`` would: the tests run as
root, so "another user" is simulated with ``os.chown`` to another uid and with file modes; a FIFO
is made with ``os.mkfifo``. The reports, VCEKs and CRLs come from the software SNP platform (its
test ARKs sign CRLs as AMD's do), with AMD KDS mocked by ``responses``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ObjectIdentifier

from blindbox.errors import ManifestError, NotAnEnclaveError, VerificationIncompleteError
from blindbox.snp.certificate import AmdCertificate
from blindbox.snp.kds import KdsClient, KdsError, KdsRateLimitedError, crl_url, vcek_url
from blindbox.snp.product import Product
from blindbox.snp.report import SigningKey
from blindbox.snp.verify import VerifiedReport, verify_report
from blindbox.testing import ReportFields, SignedReport, SoftwarePlatform

UTC = dt.timezone.utc
AT = dt.datetime(2026, 9, 1, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
OTHER_UID = 4242
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
BL_SPL_OID = ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: simulates another local user with os.chown"
)


@pytest.fixture(scope="module")
def platform() -> SoftwarePlatform:
    return SoftwarePlatform()


@pytest.fixture(scope="module")
def signed(platform: SoftwarePlatform) -> SignedReport:
    return platform.sign(ReportFields(product=Product.MILAN))


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def never_sleep(seconds: float) -> None:
    raise AssertionError(f"unexpected retry (would sleep {seconds} s)")


class Case:
    """The platform's Milan report, where KDS serves its VCEK and CRL, and where the cache keeps them."""

    def __init__(self, platform: SoftwarePlatform, signed: SignedReport, root: Path) -> None:
        self.platform, self.signed, self.root = platform, signed, root
        self.fields = signed.fields
        self.roots = platform.roots_pem(Product.MILAN)
        self.vcek_der = signed.certificates["vcek"]
        self.vcek_url = vcek_url(Product.MILAN, self.fields.chip_id, self.fields.reported_tcb)
        self.crl_url = crl_url(Product.MILAN)
        tcb = self.fields.reported_tcb
        hwid = self.fields.chip_id[:64].hex()
        self.vcek_file = (root / "kds" / "vcek" / "Milan" / hwid /
                          f"bl{tcb.bootloader}_tee{tcb.tee}_snp{tcb.snp}_uc{tcb.microcode}.der")
        self.crl_file = root / "kds" / "crl" / "vcek" / "Milan.crl"

    def serial(self, name: str) -> int:
        return AmdCertificate.from_der(self.signed.certificates[name]).serial_number

    def crl(self, *, this_update: dt.datetime, revoked: tuple[int, ...] = (),
            family: Literal["vcek", "vlek"] = "vcek") -> bytes:
        return self.platform.crl(Product.MILAN, family, revoked=revoked, this_update=this_update,
                                 next_update=this_update + dt.timedelta(days=7))

    def verify(self, client: KdsClient, at: dt.datetime = AT) -> VerifiedReport:
        return verify_report(self.signed.raw, kds=client, roots=self.roots, at=at)

    def client(self, **options: object) -> KdsClient:
        return KdsClient(cache_dir=self.root, sleep=never_sleep, **options)  # type: ignore[arg-type]


@pytest.fixture
def case(platform: SoftwarePlatform, signed: SignedReport, tmp_path: Path) -> Case:
    return Case(platform, signed, tmp_path / "cache")


def entry(family: str, product: str, der: bytes) -> bytes:
    """A CRL as the cache keeps it: the product and key family it was fetched for, then the DER."""
    return f"blindbox-kds-crl {family} {product}\n".encode() + der


def plant(path: Path, data: bytes, *, uid: int | None = None, mode: int = 0o600) -> None:
    """Write a cache entry the way an attacker would (parents made 0700, like the client's)."""
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir(mode=0o700)
    path.write_bytes(data)
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, uid)


def forged_vcek(genuine: bytes, *, bl_spl: bytes | None = None) -> bytes:
    """The genuine VCEK's names, key and extensions, signed by a key no chain knows."""
    cert = x509.load_der_x509_certificate(genuine)
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(cert.public_key()).serial_number(cert.serial_number)
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for extension in cert.extensions:
        value = extension.value
        if bl_spl is not None and extension.oid == BL_SPL_OID:
            value = x509.UnrecognizedExtension(BL_SPL_OID, bl_spl)
        builder = builder.add_extension(value, extension.critical)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return builder.sign(attacker, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)


def warnings_naming(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and str(path) in r.getMessage()]


# ---------------------------------------------------------------------------- (a) a VCEK whose chain fails


def test_cached_vcek_whose_chain_fails_is_evicted_and_fetched_once_more(
    case: Case, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    plant(case.vcek_file, forged_vcek(case.vcek_der))
    rsps.get(case.vcek_url, body=case.vcek_der)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR))
    verified = case.verify(case.client())
    assert verified.certificate.der == case.vcek_der and verified.revocation_checked
    assert [c.request.url for c in rsps.calls] == [case.vcek_url, case.crl_url]
    assert case.vcek_file.read_bytes() == case.vcek_der  # the genuine one replaced it
    assert any("expected a chain to" in m for m in warnings_naming(caplog, case.vcek_file))


def test_offline_a_cached_vcek_whose_chain_fails_is_evicted_and_reported(case: Case) -> None:
    plant(case.vcek_file, forged_vcek(case.vcek_der))
    with pytest.raises(KdsError, match=r"offline: .* was cached at .* but discarded \(.*expected a chain"):
        case.verify(case.client(offline=True))
    assert not case.vcek_file.exists()


def test_a_vcek_from_kds_whose_chain_fails_is_not_genuine_and_not_cached(
    case: Case, rsps: responses.RequestsMock
) -> None:
    rsps.get(case.vcek_url, body=forged_vcek(case.vcek_der))
    with pytest.raises(NotAnEnclaveError, match="expected a chain to") as info:
        case.verify(case.client())
    assert not isinstance(info.value, VerificationIncompleteError)  # a genuine failure, not "incomplete"
    assert not case.vcek_file.exists()
    assert len(rsps.calls) == 1


def test_a_genuine_cached_vcek_is_not_evicted_for_the_time_checked(
    case: Case, rsps: responses.RequestsMock
) -> None:
    """The eviction check walks the chain at the VCEK's own notBefore: a wrong ``at`` is not its fault."""
    plant(case.vcek_file, case.vcek_der)
    late = AmdCertificate.from_der(case.vcek_der).not_after + dt.timedelta(days=1)
    with pytest.raises(NotAnEnclaveError, match="expected valid at"):
        case.verify(case.client(offline=True), at=late)
    assert case.vcek_file.read_bytes() == case.vcek_der
    assert len(rsps.calls) == 0


def test_a_cached_file_failing_with_an_untyped_error_is_discarded(
    case: Case, rsps: responses.RequestsMock
) -> None:
    """An attacker-sized INTEGER (blSPL of 5000 digits) in a cached VCEK: discarded, fetched again."""
    body = b"\x7f" + b"\xff" * 2100  # over 5000 decimal digits
    integer = b"\x02\x82" + len(body).to_bytes(2, "big") + body
    plant(case.vcek_file, forged_vcek(case.vcek_der, bl_spl=integer))
    rsps.get(case.vcek_url, body=case.vcek_der)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR))
    assert case.verify(case.client()).certificate.der == case.vcek_der
    assert case.vcek_file.read_bytes() == case.vcek_der


# ---------------------------------------------------------------------------- (b) older CRLs, other families


def test_an_older_crl_never_replaces_a_newer_one(case: Case, rsps: responses.RequestsMock) -> None:
    """The cached CRL (newer, listing the ASK) must win over an older one that KDS or a mirror serves."""
    ask = case.serial("ask")
    newer = case.crl(this_update=AT - 30 * HOUR, revoked=(ask,))
    older = case.crl(this_update=AT - 40 * HOUR)
    plant(case.crl_file, entry("vcek", "Milan", newer))
    plant(case.vcek_file, case.vcek_der)
    rsps.get(case.crl_url, body=older)
    with pytest.raises(NotAnEnclaveError, match=f"revoked: intermediate 'SEV-Milan' serial 0x{ask:x}"):
        case.verify(case.client())  # the cached one is past the 24 h age cap, so KDS is asked
    assert len(rsps.calls) == 1
    assert case.crl_file.read_bytes() == entry("vcek", "Milan", newer)  # not replaced by the older one


def test_an_older_crl_planted_on_disk_loses_to_the_newer_one_in_memory(
    case: Case, rsps: responses.RequestsMock
) -> None:
    ask = case.serial("ask")
    plant(case.vcek_file, case.vcek_der)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR, revoked=(ask,)))
    client = case.client()
    with pytest.raises(NotAnEnclaveError, match="revoked: intermediate"):
        case.verify(client)
    plant(case.crl_file, entry("vcek", "Milan", case.crl(this_update=AT - 2 * HOUR)))
    with pytest.raises(NotAnEnclaveError, match="revoked: intermediate"):
        case.verify(client)
    assert len(rsps.calls) == 1


def test_a_cached_crl_older_than_the_age_cap_is_fetched_again(
    case: Case, rsps: responses.RequestsMock
) -> None:
    """An older, genuinely signed CRL still inside its window: AMD's re-issue (revoking the ASK) is used."""
    ask = case.serial("ask")
    plant(case.vcek_file, case.vcek_der)
    plant(case.crl_file, entry("vcek", "Milan", case.crl(this_update=AT - 3 * 24 * HOUR)))
    reissued = case.crl(this_update=AT - HOUR, revoked=(ask,))
    rsps.get(case.crl_url, body=reissued)
    with pytest.raises(NotAnEnclaveError, match=f"revoked: intermediate 'SEV-Milan' serial 0x{ask:x}"):
        case.verify(case.client())
    assert case.crl_file.read_bytes() == entry("vcek", "Milan", reissued)


def test_offline_uses_any_current_crl(case: Case) -> None:
    plant(case.vcek_file, case.vcek_der)
    plant(case.crl_file, entry("vcek", "Milan", case.crl(this_update=AT - 5 * 24 * HOUR)))
    assert case.verify(case.client(offline=True)).revocation_checked


def test_a_cached_crl_within_the_age_cap_is_used_without_kds(case: Case) -> None:
    plant(case.vcek_file, case.vcek_der)
    plant(case.crl_file, entry("vcek", "Milan", case.crl(this_update=AT - 23 * HOUR)))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        assert case.verify(case.client()).revocation_checked
        assert len(mock.calls) == 0


@pytest.mark.parametrize(("planted", "why"), [
    (lambda crl: entry("vlek", "Milan", crl), "expected the first line 'blindbox-kds-crl vcek Milan'"),
    (lambda crl: entry("vcek", "Genoa", crl), "expected the first line 'blindbox-kds-crl vcek Milan'"),
    (lambda crl: crl, "expected the first line"),
])
def test_a_crl_of_another_family_or_product_planted_is_discarded(
    planted: Callable[[bytes], bytes], why: str, case: Case, rsps: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The VLEK-family CRL (same ARK, so its signature verifies) planted as the VCEK one: discarded."""
    ask = case.serial("ask")
    plant(case.vcek_file, case.vcek_der)
    plant(case.crl_file, planted(case.crl(this_update=AT - HOUR, family="vlek")))
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR, revoked=(ask,)))
    with pytest.raises(NotAnEnclaveError, match="revoked: intermediate 'SEV-Milan'"):
        case.verify(case.client())
    assert any(why in m for m in warnings_naming(caplog, case.crl_file))
    assert case.crl_file.read_bytes().startswith(b"blindbox-kds-crl vcek Milan\n")


def test_the_vlek_crl_is_cached_with_its_family(platform: SoftwarePlatform, tmp_path: Path,
                                                  rsps: responses.RequestsMock) -> None:
    signed = platform.sign(ReportFields(product=Product.GENOA, signing_key=SigningKey.VLEK))
    vlek_crl = platform.crl(Product.GENOA, "vlek", this_update=AT - HOUR, next_update=AT + HOUR)
    rsps.get(crl_url(Product.GENOA, SigningKey.VLEK), body=vlek_crl)
    client = KdsClient(cache_dir=tmp_path, sleep=never_sleep)
    verify_report(signed.raw, certificates=signed.certificates, kds=client,
                  roots=platform.roots_pem(Product.GENOA), at=AT)
    assert (tmp_path / "kds/crl/vlek/Genoa.crl").read_bytes() == entry("vlek", "Genoa", vlek_crl)


# ---------------------------------------------------------------------------- (c) a FIFO, a symlink


def _within(seconds: float, call: Callable[[], object]) -> object:
    """``call()`` in a thread; fails the test (instead of hanging it) if it blocks."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds} s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


@pytest.mark.parametrize("which", ["vcek", "crl"])
def test_a_fifo_in_place_of_a_cache_file_never_blocks(
    which: str, case: Case, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = case.vcek_file if which == "vcek" else case.crl_file
    plant(fifo, b"")
    fifo.unlink()
    os.mkfifo(fifo, 0o600)
    if which == "crl":
        plant(case.vcek_file, case.vcek_der)
    rsps.get(case.vcek_url, body=case.vcek_der)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR))
    verified = _within(10, lambda: case.verify(case.client()))
    assert isinstance(verified, VerifiedReport) and verified.revocation_checked
    assert any("expected a regular file, found a FIFO" in m for m in warnings_naming(caplog, fifo))
    assert fifo.is_file() and not fifo.is_fifo()  # replaced by the fetched one


def test_a_symlink_in_place_of_a_cache_file_is_not_followed(
    case: Case, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.der"
    target.write_bytes(case.vcek_der)
    plant(case.vcek_file, b"")
    case.vcek_file.unlink()
    case.vcek_file.symlink_to(target)
    rsps.get(case.vcek_url, body=case.vcek_der)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR))
    case.verify(case.client())
    assert len(rsps.calls) == 2  # fetched: the link was not read
    assert not case.vcek_file.is_symlink() and target.read_bytes() == case.vcek_der


# ---------------------------------------------------------------------------- (d) ownership and modes


@needs_root
def test_a_cache_file_owned_by_another_user_is_refused(
    case: Case, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    """Another user's older (but genuine and current) CRL that does not list the revoked ASK."""
    ask = case.serial("ask")
    plant(case.vcek_file, case.vcek_der)
    plant(case.crl_file, entry("vcek", "Milan", case.crl(this_update=AT - 2 * HOUR)), uid=OTHER_UID)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR, revoked=(ask,)))
    with pytest.raises(NotAnEnclaveError, match="revoked: intermediate 'SEV-Milan'"):
        case.verify(case.client())
    assert any(f"expected owner uid {os.geteuid()} (this user), found uid {OTHER_UID}" in m
               for m in warnings_naming(caplog, case.crl_file))
    assert case.crl_file.stat().st_uid == os.geteuid()


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_cache_file_writable_by_others_is_refused(
    mode: int, case: Case, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    plant(case.vcek_file, forged_vcek(case.vcek_der), mode=mode)
    rsps.get(case.vcek_url, body=case.vcek_der)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR))
    case.verify(case.client())
    assert any(f"found mode {mode:04o}" in m for m in warnings_naming(caplog, case.vcek_file))
    assert stat.S_IMODE(case.vcek_file.stat().st_mode) == 0o600


@needs_root
@pytest.mark.parametrize("level", ["root", "kds", "kds/vcek", "kds/crl/vcek"])
@pytest.mark.parametrize("attack", ["owner", "mode"])
def test_a_cache_directory_of_another_user_or_writable_by_others_is_not_used(
    level: str, attack: str, case: Case, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is read from or written under a level another user controls; the warning names it."""
    plant(case.vcek_file, forged_vcek(case.vcek_der))
    plant(case.crl_file, entry("vcek", "Milan", case.crl(this_update=AT - HOUR)))
    directory = case.root if level == "root" else case.root / level
    if attack == "owner":
        os.chown(directory, OTHER_UID, OTHER_UID)
    else:
        directory.chmod(0o777)
    under = [p for p in (case.vcek_file, case.crl_file) if directory in p.parents]
    before = [p.read_bytes() for p in under]
    rsps.get(case.vcek_url, body=case.vcek_der)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR))
    case.verify(case.client())
    expected = ("expected owner uid" if attack == "owner" else "expected no group/other write permission")
    assert any(expected in m for m in warnings_naming(caplog, directory))
    assert under and [p.read_bytes() for p in under] == before  # neither discarded nor rewritten
    assert len(rsps.calls) == 1 + (case.crl_file in under)  # the forged VCEK was never read


def test_every_level_is_created_0700(case: Case, rsps: responses.RequestsMock) -> None:
    rsps.get(case.vcek_url, body=case.vcek_der)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR))
    old = os.umask(0)
    try:
        case.verify(case.client())
    finally:
        os.umask(old)
    for path in (case.vcek_file, case.crl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for level in path.relative_to(case.root).parents:
            assert stat.S_IMODE((case.root / level).stat().st_mode) == 0o700, level


# ---------------------------------------------------------------------------- §9: untyped errors from peers


@pytest.mark.parametrize("retry_after", [
    "Fri, 01 Jan 99999999999999999999 00:00:00 GMT",  # OverflowError before
    "Fri, 01 Jan 10000 00:00:00 GMT",
    "Fri, 01 Jan 2030 00:00:00 +99999999999999999999",
])
def test_a_retry_after_date_with_a_huge_year_is_ignored(
    retry_after: str, case: Case, rsps: responses.RequestsMock
) -> None:
    sleeps: list[float] = []
    rsps.get(case.vcek_url, status=429, headers={"Retry-After": retry_after})
    rsps.get(case.vcek_url, body=case.vcek_der)
    client = KdsClient(cache_dir=case.root, sleep=sleeps.append)
    assert client.vcek(Product.MILAN, case.fields.chip_id, case.fields.reported_tcb).der == case.vcek_der
    assert sleeps == [2.0]  # unusable: the exponential backoff instead


def test_rate_limiting_exhausted_is_incomplete_not_refused(case: Case, rsps: responses.RequestsMock) -> None:
    rsps.get(case.vcek_url, status=429, headers={"Retry-After": "1"})
    client = KdsClient(cache_dir=case.root, sleep=lambda _: None, max_retries=1)
    with pytest.raises(KdsRateLimitedError) as info:
        client.vcek(Product.MILAN, case.fields.chip_id, case.fields.reported_tcb)
    assert isinstance(info.value, VerificationIncompleteError)
    assert not isinstance(info.value, NotAnEnclaveError)


class OneAnswer:
    """A loopback HTTP server that answers one request with fixed bytes (a peer's exact header)."""

    def __init__(self, answer: bytes) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, args=(answer,), daemon=True)
        self.thread.start()

    def _serve(self, answer: bytes) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            conn.recv(65536)
            conn.sendall(answer)

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("length", [b"1" * 5000, b"64\x01", b"64\x0b", b"+64", b"0x40", b"-1"])
def test_a_malformed_content_length_from_kds_is_a_typed_error(length: bytes, tmp_path: Path) -> None:
    peer = OneAnswer(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\nConnection: close\r\n\r\n0\x82")
    try:
        client = KdsClient(cache_dir=tmp_path, base_url=peer.url, max_retries=0, sleep=never_sleep)
        with pytest.raises(KdsError, match="Content-Length: expected 1 to 20 ASCII digits"):
            client.vcek(Product.MILAN, bytes(range(1, 65)), ReportFields(product=Product.MILAN).reported_tcb)
    finally:
        peer.close()


@pytest.mark.parametrize("length", ["1" * 5000, "64\x01"])
def test_a_malformed_content_length_on_a_manifest_is_a_manifest_error(length: str) -> None:
    url = "https://vendor.example/manifest.json"
    with responses.RequestsMock() as mock:
        mock.get(url, body=b"{}", headers={"Content-Length": length})
        with pytest.raises(ManifestError, match="Content-Length: expected 1 to 20 ASCII digits"):
            from blindbox.attest.manifest import Manifest

            Manifest.load(url)


def test_on_fetch_names_what_and_where(case: Case, rsps: responses.RequestsMock) -> None:
    seen: list[tuple[str, str]] = []
    rsps.get(case.vcek_url, body=case.vcek_der)
    rsps.get(case.crl_url, body=case.crl(this_update=AT - HOUR))
    case.verify(KdsClient(cache_dir=case.root, sleep=never_sleep, on_fetch=lambda *a: seen.append(a)))
    chip = case.fields.chip_id.hex()[:16]
    assert seen == [(f"the Milan VCEK for chip {chip}... ({case.fields.reported_tcb})", case.vcek_url),
                    ("the Milan VCEK CRL", case.crl_url)]
    case.verify(KdsClient(cache_dir=case.root, sleep=never_sleep, on_fetch=lambda *a: seen.append(a)))
    assert len(seen) == 2  # served from the cache: nothing fetched, nothing said
