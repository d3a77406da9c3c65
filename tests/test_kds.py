"""AMD KDS client (blindbox.snp.kds) and CRL checks (blindbox.snp.crl), with KDS mocked by `responses`.

Real data: the SEV-SNP vectors (reports and AMD's VCEKs). No AMD CRL is used:
the CRLs come from the software platform (blindbox.testing), whose test ARKs
sign them exactly as AMD's ARKs sign theirs, so the whole KDS path (VCEK fetch,
CRL fetch, revocation) runs end to end on platform-signed reports under the
platform's roots, and real reports show that a CRL AMD did not sign fails
closed. A small test PKI (RSA-2048, generated once per module) and a
hand-written CRL encoder cover malformed and mis-signed CRLs.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import platformdirs
import pytest
import requests
import requests.adapters
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from blindbox.errors import ConfigurationError, NotAnEnclaveError, VerificationIncompleteError
from blindbox.snp import crl as crl_mod
from blindbox.snp import der as der_reader
from blindbox.snp.certificate import AmdCertificate
from blindbox.snp.chain import CertificateChain, verify_chain
from blindbox.snp.crl import MAX_CRL_SIZE, RevocationList
from blindbox.snp.kds import (
    MAX_CERTIFICATE_RESPONSE,
    KdsClient,
    KdsError,
    KdsRateLimitedError,
    cert_chain_url,
    crl_url,
    vcek_url,
)
from blindbox.snp.product import Product
from blindbox.snp.report import AttestationReport, SigningKey
from blindbox.snp.roots import amd_roots, load_roots
from blindbox.snp.tcb import TcbVersion
from blindbox.snp.verify import verify_report
from blindbox.testing import ReportFields, SignedReport, SoftwarePlatform

UTC = dt.timezone.utc
#: Inside every vector certificate's validity and the test platform's (leaves 2024..2049).
AT = dt.datetime(2026, 9, 1, tzinfo=UTC)
DAY_AFTER = AT + dt.timedelta(days=1)
KDS = "https://kdsintf.amd.com"

# One real report per product (the VCEK is what the mocked KDS serves), with the URL AMD documents.
@dataclass(frozen=True)
class RealCase:
    report_bytes: bytes
    report: AttestationReport
    vcek_der: bytes
    url: str
    cache_file: str


def _real_cases(vectors: Path) -> dict[Product, RealCase]:
    index = {e["file"]: e for e in json.loads((vectors / "index.json").read_text())}
    specs = {
        Product.MILAN: ("reports/milan_azure-trustee-ev0_v3_vcek.bin",
                        "Milan/{chip}?blSPL=4&teeSPL=0&snpSPL=24&ucodeSPL=219",
                        "Milan/{chip}/bl4_tee0_snp24_uc219.der"),
        Product.GENOA: ("reports/genoa_oak-oc_v5_vcek.bin",
                        "Genoa/{chip}?blSPL=10&teeSPL=0&snpSPL=25&ucodeSPL=84",
                        "Genoa/{chip}/bl10_tee0_snp25_uc84.der"),
        Product.TURIN: ("reports/turin_oak-oc_v5_vcek.bin",
                        "Turin/3b42092f69c656d3?fmcSPL=0&blSPL=1&teeSPL=0&snpSPL=2&ucodeSPL=71",
                        "Turin/3b42092f69c656d3/fmc0_bl1_tee0_snp2_uc71.der"),
    }
    out = {}
    for product, (file, url_tail, cache_tail) in specs.items():
        entry = index[file]
        raw = (vectors / file).read_bytes()
        out[product] = RealCase(
            report_bytes=raw,
            report=AttestationReport.from_bytes(raw),
            vcek_der=(vectors / entry["key_cert"]).read_bytes(),
            url=f"{KDS}/vcek/v1/" + url_tail.format(chip=entry["chip_id"]),
            cache_file="kds/vcek/" + cache_tail.format(chip=entry["chip_id"]),
        )
    return out


@pytest.fixture(scope="module")
def real(vectors: Path) -> dict[Product, RealCase]:
    return _real_cases(vectors)


@pytest.fixture
def milan(real: dict[Product, RealCase]) -> RealCase:
    return real[Product.MILAN]


def crl_entry(product: Product, family: Literal["vcek", "vlek"], der: bytes) -> bytes:
    """A CRL as the cache keeps it: a first line recording its product and key family, then the DER."""
    return f"blindbox-kds-crl {family} {product.value}\n".encode() + der


def never_sleep(seconds: float) -> None:
    raise AssertionError(f"unexpected retry (would sleep {seconds} s)")


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(tmp_path: Path, sleeps: list[float]) -> KdsClient:
    return KdsClient(cache_dir=tmp_path, sleep=sleeps.append)


# ---------------------------------------------------------------------------- a test PKI and CRL encoder

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
# AlgorithmIdentifier RSASSA-PSS(SHA-384, MGF1-SHA-384, salt 48), byte for byte as in AMD's CRLs.
PSS_ALG = bytes.fromhex(
    "304106092a864886f70d01010a3034a00f300d06096086480165030402020500a11c301a06092a864886f70d0101"
    "08300d06096086480165030402020500a203020130"
)


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _seq(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _time(when: dt.datetime) -> bytes:
    return _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())


def _ext(oid: bytes, value: bytes, critical: bool = False) -> bytes:
    return _seq(oid, b"\x01\x01\xff" if critical else b"", _tlv(0x04, value))


CRL_NUMBER = _ext(bytes.fromhex("0603551d14"), _int(7))
CRITICAL_IDP = _ext(bytes.fromhex("0603551d1c"), _seq(), critical=True)
CRITICAL_CERT_ISSUER = _ext(bytes.fromhex("0603551d1d"), _seq(), critical=True)


def make_crl(
    key: rsa.RSAPrivateKey,
    issuer_der: bytes,
    *,
    this_update: dt.datetime,
    next_update: dt.datetime | None,
    revoked: tuple[int, ...] = (),
    crl_extensions: tuple[bytes, ...] = (CRL_NUMBER,),
    entry_extensions: tuple[bytes, ...] = (),
    alg: bytes = PSS_ALG,
    salt_length: int = 48,
) -> bytes:
    """A DER v2 CRL signed with RSASSA-PSS SHA-384 (encoded here, so that any field can be wrong)."""
    parts = [_int(1), alg, issuer_der, _time(this_update)]
    if next_update is not None:
        parts.append(_time(next_update))
    if revoked:
        entry_tail = (_seq(*entry_extensions),) if entry_extensions else ()
        parts.append(_seq(*(_seq(_int(s), _time(this_update), *entry_tail) for s in revoked)))
    if crl_extensions:
        parts.append(_tlv(0xA0, _seq(*crl_extensions)))
    tbs = _seq(*parts)
    signature = key.sign(tbs, padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=salt_length),
                         hashes.SHA384())
    return _seq(tbs, alg, _tlv(0x03, b"\x00" + signature))


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _cert(subject: str, issuer: str, public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
          signer: rsa.RSAPrivateKey, serial: int, *, ca: bool) -> AmdCertificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(dt.datetime(2045, 1, 1, tzinfo=UTC))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
    der = builder.sign(signer, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)
    return AmdCertificate.from_der(der)


@dataclass(frozen=True)
class Pki:
    ark_key: rsa.RSAPrivateKey
    other_key: rsa.RSAPrivateKey
    ark: AmdCertificate
    vcek_chain: CertificateChain
    vlek_chain: CertificateChain


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A Milan-named test hierarchy: ARK 0x10000 -> ASK 0x10001 / ASVK 0x10101 -> VCEK 0x42 / VLEK 0x43."""
    ark_key, ask_key, other_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                                   for _ in range(3))
    ark = _cert("ARK-Milan", "ARK-Milan", ark_key.public_key(), ark_key, 0x10000, ca=True)
    ask = _cert("SEV-Milan", "ARK-Milan", ask_key.public_key(), ark_key, 0x10001, ca=True)
    asvk = _cert("SEV-VLEK-Milan", "ARK-Milan", ask_key.public_key(), ark_key, 0x10101, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    vcek = _cert("SEV-VCEK", "SEV-Milan", leaf_key, ask_key, 0x42, ca=False)
    vlek = _cert("SEV-VLEK", "SEV-VLEK-Milan", leaf_key, ask_key, 0x43, ca=False)
    roots = load_roots(ark.der)
    vcek_chain = verify_chain(vcek, signing_key=SigningKey.VCEK, product=Product.MILAN, roots=roots,
                              intermediates=[ask], at=AT)
    vlek_chain = verify_chain(vlek, signing_key=SigningKey.VLEK, product=Product.MILAN, roots=roots,
                              intermediates=[asvk], at=AT)
    return Pki(ark_key, other_key, ark, vcek_chain, vlek_chain)


def good_crl(pki: Pki, *, revoked: tuple[int, ...] = (), this_update: dt.datetime = AT - dt.timedelta(days=1),
             next_update: dt.datetime = AT + dt.timedelta(days=1)) -> bytes:
    return make_crl(pki.ark_key, pki.ark.subject_der, this_update=this_update, next_update=next_update,
                    revoked=revoked)


# ---------------------------------------------------------------------------- the software platform


@pytest.fixture(scope="module")
def platform() -> SoftwarePlatform:
    return SoftwarePlatform()


def platform_crl(platform: SoftwarePlatform, product: Product, family: Literal["vcek", "vlek"] = "vcek", *,
                 revoked: tuple[int, ...] = (), this_update: dt.datetime = AT - dt.timedelta(days=1),
                 next_update: dt.datetime = AT + dt.timedelta(days=1)) -> bytes:
    """The CRL KDS would serve at ``crl_url(product, ...)``, signed by the platform's test ARK."""
    return platform.crl(product, family, revoked=revoked, this_update=this_update, next_update=next_update)


@dataclass(frozen=True)
class PlatformCase:
    """A report signed by the software platform, and where KDS and the cache keep its VCEK."""

    signed: SignedReport
    roots: str
    url: str
    cache_file: str

    @property
    def vcek_der(self) -> bytes:
        return self.signed.certificates["vcek"]

    def serial(self, name: str) -> int:
        return AmdCertificate.from_der(self.signed.certificates[name]).serial_number


def platform_case(platform: SoftwarePlatform, product: Product) -> PlatformCase:
    fields = ReportFields(product=product)
    tcb = fields.reported_tcb
    spl = ("" if tcb.fmc is None else f"fmc{tcb.fmc}_") + (
        f"bl{tcb.bootloader}_tee{tcb.tee}_snp{tcb.snp}_uc{tcb.microcode}")
    query = ("" if tcb.fmc is None else f"fmcSPL={tcb.fmc}&") + (
        f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}")
    hwid = fields.chip_id[: product.hwid_length].hex()
    return PlatformCase(
        signed=platform.sign(fields),
        roots=platform.roots_pem(product),
        url=f"{KDS}/vcek/v1/{product.value}/{hwid}?{query}",
        cache_file=f"kds/vcek/{product.value}/{hwid}/{spl}.der",
    )


# ---------------------------------------------------------------------------- URL forms


def test_vcek_url_for_each_product(real: dict[Product, RealCase]) -> None:
    for product, case in real.items():
        assert vcek_url(product, case.report.chip_id, case.report.reported_tcb) == case.url


def test_turin_vcek_url_takes_an_8_byte_chip_id_and_fmc_spl() -> None:
    tcb = TcbVersion.from_components(fmc=3, bootloader=1, tee=2, snp=4, microcode=81)
    chip = bytes.fromhex("3b42092f69c656d3")
    expected = f"{KDS}/vcek/v1/Turin/3b42092f69c656d3?fmcSPL=3&blSPL=1&teeSPL=2&snpSPL=4&ucodeSPL=81"
    assert vcek_url(Product.TURIN, chip, tcb) == expected
    assert vcek_url(Product.TURIN, chip + bytes(56), tcb) == expected
    with pytest.raises(NotAnEnclaveError, match="bytes 8-63 must be zero on Turin"):
        vcek_url(Product.TURIN, chip + b"\x01" + bytes(55), tcb)


def test_vcek_url_refuses_inconsistent_input() -> None:
    milan_tcb = TcbVersion.from_components(bootloader=4, tee=0, snp=24, microcode=219)
    turin_tcb = TcbVersion.from_components(fmc=0, bootloader=1, tee=0, snp=2, microcode=71)
    chip = bytes(range(1, 65))
    assert vcek_url(Product.GENOA, chip, milan_tcb, base_url="https://kds.example/") == (
        f"https://kds.example/vcek/v1/Genoa/{chip.hex()}?blSPL=4&teeSPL=0&snpSPL=24&ucodeSPL=219"
    )
    with pytest.raises(NotAnEnclaveError, match="Turin layout"):
        vcek_url(Product.TURIN, chip[:8], milan_tcb)
    with pytest.raises(NotAnEnclaveError, match="Milan layout"):
        vcek_url(Product.MILAN, chip, turin_tcb)
    with pytest.raises(NotAnEnclaveError, match="masked"):
        vcek_url(Product.MILAN, bytes(64), milan_tcb)
    with pytest.raises(NotAnEnclaveError, match="chip_id: expected 64 bytes for Milan, found 8"):
        vcek_url(Product.MILAN, chip[:8], milan_tcb)


@pytest.mark.parametrize("product", list(Product))
def test_cert_chain_and_crl_urls(product: Product) -> None:
    p = product.value
    assert cert_chain_url(product) == f"{KDS}/vcek/v1/{p}/cert_chain"
    assert cert_chain_url(product, SigningKey.VLEK) == f"{KDS}/vlek/v1/{p}/cert_chain"
    assert crl_url(product) == f"{KDS}/vcek/v1/{p}/crl"
    assert crl_url(product, SigningKey.VLEK) == f"{KDS}/vlek/v1/{p}/crl"
    assert crl_url(product, base_url="http://127.0.0.1:8080/mirror/") == f"http://127.0.0.1:8080/mirror/vcek/v1/{p}/crl"


@pytest.mark.parametrize("base_url", ["http://kdsintf.amd.com", "ftp://x", "https://", "https://h/?q=1"])
def test_base_url_must_be_https_except_loopback(base_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        KdsClient(sleep=never_sleep, cache_dir=tmp_path, base_url=base_url)


@pytest.mark.parametrize("option", [{"max_retries": -1}, {"max_retries": 1000}, {"max_backoff_seconds": -1.0},
                                    {"max_backoff_seconds": float("inf")}, {"timeout": 0.0}])
def test_constructor_bounds(option: dict[str, float], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        KdsClient(sleep=never_sleep, cache_dir=tmp_path, **option)


# ---------------------------------------------------------------------------- VCEK fetch and cache


def _vcek(client: KdsClient, case: RealCase) -> AmdCertificate:
    return client.vcek(Product.MILAN, case.report.chip_id, case.report.reported_tcb)


def test_vcek_fetched_once_then_served_from_disk(
    client: KdsClient, milan: RealCase, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.get(milan.url, body=milan.vcek_der)
    cert = client.vcek(Product.MILAN, milan.report.chip_id, milan.report.reported_tcb)
    assert cert.der == milan.vcek_der
    assert [c.request.url for c in rsps.calls] == [milan.url]
    assert (tmp_path / milan.cache_file).read_bytes() == milan.vcek_der
    again = client.vcek(Product.MILAN, milan.report.chip_id, milan.report.reported_tcb)
    assert again.der == milan.vcek_der
    assert len(rsps.calls) == 1


def test_cache_shared_between_clients(milan: RealCase, rsps: responses.RequestsMock, tmp_path: Path) -> None:
    rsps.get(milan.url, body=milan.vcek_der)
    _vcek(KdsClient(sleep=never_sleep, cache_dir=tmp_path), milan)
    sleeps: list[float] = []
    other = KdsClient(cache_dir=tmp_path, sleep=sleeps.append)
    assert other.vcek(Product.MILAN, milan.report.chip_id, milan.report.reported_tcb).der == milan.vcek_der
    assert len(rsps.calls) == 1
    assert sleeps == []


def test_cache_key_includes_the_full_tcb_with_fmc(
    client: KdsClient, real: dict[Product, RealCase], rsps: responses.RequestsMock
) -> None:
    turin = real[Product.TURIN]
    rsps.get(turin.url, body=turin.vcek_der)
    client.vcek(Product.TURIN, turin.report.chip_id, turin.report.reported_tcb)
    other_fmc = TcbVersion.from_components(fmc=1, bootloader=1, tee=0, snp=2, microcode=71)
    other_url = f"{KDS}/vcek/v1/Turin/3b42092f69c656d3?fmcSPL=1&blSPL=1&teeSPL=0&snpSPL=2&ucodeSPL=71"
    rsps.get(other_url, status=404)
    with pytest.raises(KdsError, match="HTTP 404"):
        client.vcek(Product.TURIN, turin.report.chip_id, other_fmc)
    assert [c.request.url for c in rsps.calls] == [turin.url, other_url]


def _other_milan_vcek(vectors: Path) -> bytes:
    return (vectors / "certs/milan_vcek_a3fdc2c64dc299ab_bl4_tee0_snp24_uc219.der").read_bytes()


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "other chip", "oversize", "empty"])
def test_corrupt_cache_file_is_discarded_and_refetched(
    corruption: str, client: KdsClient, milan: RealCase, rsps: responses.RequestsMock, tmp_path: Path,
    vectors: Path,
) -> None:
    bad = {
        "garbage": b"<html>not a certificate</html>",
        "truncated": milan.vcek_der[:-7],
        "other chip": _other_milan_vcek(vectors),
        "oversize": milan.vcek_der + bytes(MAX_CERTIFICATE_RESPONSE),
        "empty": b"",
    }[corruption]
    path = tmp_path / milan.cache_file
    path.parent.mkdir(parents=True)
    path.write_bytes(bad)
    rsps.get(milan.url, body=milan.vcek_der)
    cert = client.vcek(Product.MILAN, milan.report.chip_id, milan.report.reported_tcb)
    assert cert.der == milan.vcek_der
    assert len(rsps.calls) == 1
    assert path.read_bytes() == milan.vcek_der


def test_offline_corrupt_cache_is_not_trusted(milan: RealCase, tmp_path: Path, vectors: Path) -> None:
    path = tmp_path / milan.cache_file
    path.parent.mkdir(parents=True)
    path.write_bytes(_other_milan_vcek(vectors))
    client = KdsClient(sleep=never_sleep, cache_dir=tmp_path, offline=True)
    with pytest.raises(KdsError, match=r"offline: .* was cached at .* but discarded .*expected hwID"):
        client.vcek(Product.MILAN, milan.report.chip_id, milan.report.reported_tcb)
    assert not path.exists()


def test_wrong_vcek_from_kds_is_refused_and_not_cached(
    client: KdsClient, milan: RealCase, rsps: responses.RequestsMock, tmp_path: Path, vectors: Path
) -> None:
    rsps.get(milan.url, body=_other_milan_vcek(vectors))
    with pytest.raises(KdsError, match=r"unusable VCEK.*expected hwID"):
        client.vcek(Product.MILAN, milan.report.chip_id, milan.report.reported_tcb)
    rsps.replace(responses.GET, milan.url, body=b"-----BEGIN CERTIFICATE-----\n...")
    with pytest.raises(KdsError, match="unusable VCEK"):
        client.vcek(Product.MILAN, milan.report.chip_id, milan.report.reported_tcb)
    assert not (tmp_path / milan.cache_file).exists()


def test_offline_miss_names_the_file_and_url(milan: RealCase, tmp_path: Path) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        client = KdsClient(sleep=never_sleep, cache_dir=tmp_path, offline=True)
        with pytest.raises(KdsError) as info:
            client.vcek(Product.MILAN, milan.report.chip_id, milan.report.reported_tcb)
        assert len(mock.calls) == 0
    assert isinstance(info.value, VerificationIncompleteError)
    assert not isinstance(info.value, NotAnEnclaveError)
    message = str(info.value)
    assert str(tmp_path / milan.cache_file) in message
    assert milan.url in message


def test_offline_hit_from_a_hand_provisioned_cache(real: dict[Product, RealCase], tmp_path: Path) -> None:
    """The documented layout lets an air-gapped host be provisioned by copying files."""
    client = KdsClient(sleep=never_sleep, cache_dir=tmp_path, offline=True)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for product, case in real.items():
            path = tmp_path / case.cache_file
            path.parent.mkdir(parents=True)
            path.write_bytes(case.vcek_der)
            assert client.vcek(product, case.report.chip_id, case.report.reported_tcb).der == case.vcek_der
        assert len(mock.calls) == 0


def test_default_cache_dir_is_the_user_cache(
    milan: RealCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda name: str(tmp_path / "user-cache" / name))
    with pytest.raises(KdsError) as info:
        _vcek(KdsClient(sleep=never_sleep, offline=True), milan)
    assert str(tmp_path / "user-cache" / "blindbox" / milan.cache_file) in str(info.value)


WRITER = """
import sys
from pathlib import Path
from blindbox.snp.kds import _write_atomic
path, fill, rounds = Path(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
payload = fill * (512 * 1024)
for _ in range(rounds):
    _write_atomic(path, payload)
"""


def test_concurrent_writers_of_one_key_never_leave_a_torn_file(tmp_path: Path) -> None:
    """Two processes rewrite the same cache file while this one reads it: every read is whole."""
    path = tmp_path / "kds" / "vcek" / "Milan" / "chip" / "bl1_tee0_snp1_uc1.der"
    size = 512 * 1024
    path.parent.mkdir(parents=True, mode=0o700)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), fill, "150"]) for fill in "AB"]
    reads = 0
    try:
        while any(w.poll() is None for w in writers):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            reads += 1
            assert len(data) == size and data.count(data[:1]) == size, "torn cache file"
    finally:
        codes = [w.wait(timeout=60) for w in writers]
    assert codes == [0, 0]
    assert reads > 0
    final = path.read_bytes()
    assert final in (b"A" * size, b"B" * size)
    assert [p.name for p in path.parent.iterdir()] == [path.name], "temporary files left behind"


# ---------------------------------------------------------------------------- HTTP behaviour


def test_429_with_retry_after_seconds_then_success(
    client: KdsClient, milan: RealCase, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(milan.url, status=429, headers={"Retry-After": "7"})
    rsps.get(milan.url, body=milan.vcek_der)
    assert _vcek(client, milan).der == milan.vcek_der
    assert sleeps == [7.0]
    assert len(rsps.calls) == 2


def test_429_with_retry_after_http_date(
    client: KdsClient, milan: RealCase, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    when = email.utils.format_datetime(dt.datetime.now(UTC) + dt.timedelta(seconds=30), usegmt=True)
    rsps.get(milan.url, status=429, headers={"Retry-After": when})
    rsps.get(milan.url, body=milan.vcek_der)
    client = KdsClient(cache_dir=client._root, sleep=sleeps.append, timeout=60)  # the wait is in the deadline
    assert _vcek(client, milan).der == milan.vcek_der
    assert len(sleeps) == 1 and 25.0 <= sleeps[0] <= 30.0


def test_429_without_retry_after_backs_off_exponentially(
    client: KdsClient, milan: RealCase, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(milan.url, status=429)
    rsps.get(milan.url, status=429)
    rsps.get(milan.url, body=milan.vcek_der)
    assert _vcek(client, milan).der == milan.vcek_der
    assert sleeps == [2.0, 4.0]


def test_429_forever_gives_up_after_max_retries(
    milan: RealCase, rsps: responses.RequestsMock, sleeps: list[float], tmp_path: Path
) -> None:
    client = KdsClient(cache_dir=tmp_path, sleep=sleeps.append, max_retries=3, max_backoff_seconds=100)
    rsps.get(milan.url, status=429, headers={"Retry-After": "5"})
    with pytest.raises(KdsRateLimitedError, match="KDS rate limited") as info:
        _vcek(client, milan)
    assert info.value.url == milan.url
    assert len(rsps.calls) == 4
    assert sleeps == [5.0, 5.0, 5.0]


def test_429_total_wait_is_capped(
    milan: RealCase, rsps: responses.RequestsMock, sleeps: list[float], tmp_path: Path
) -> None:
    client = KdsClient(cache_dir=tmp_path, sleep=sleeps.append, max_retries=10, max_backoff_seconds=20)
    rsps.get(milan.url, status=429)
    with pytest.raises(KdsRateLimitedError):
        _vcek(client, milan)
    assert sleeps == [2.0, 4.0, 8.0, 6.0]
    assert len(rsps.calls) == 5


def test_retry_after_beyond_the_budget_fails_at_once(
    client: KdsClient, milan: RealCase, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(milan.url, status=429, headers={"Retry-After": "3600"})
    with pytest.raises(KdsRateLimitedError, match="Retry-After 3600"):
        _vcek(client, milan)
    assert sleeps == []
    assert len(rsps.calls) == 1


def test_5xx_and_transport_errors_are_retried(
    client: KdsClient, milan: RealCase, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(milan.url, status=503)
    rsps.get(milan.url, body=requests.ConnectionError("connection reset"))
    rsps.get(milan.url, status=500)
    rsps.get(milan.url, body=milan.vcek_der)
    assert _vcek(client, milan).der == milan.vcek_der
    assert sleeps == [2.0, 4.0, 8.0]
    assert len(rsps.calls) == 4


def test_5xx_forever_is_bounded_and_not_called_rate_limiting(
    milan: RealCase, rsps: responses.RequestsMock, sleeps: list[float], tmp_path: Path
) -> None:
    client = KdsClient(cache_dir=tmp_path, sleep=sleeps.append, max_retries=2)
    rsps.get(milan.url, status=502)
    with pytest.raises(KdsError, match=r"KDS unavailable.*HTTP 502") as info:
        _vcek(client, milan)
    assert not isinstance(info.value, KdsRateLimitedError)
    assert len(rsps.calls) == 3


@pytest.mark.parametrize("status", [404, 400, 403, 410])
def test_4xx_is_never_retried(
    status: int, client: KdsClient, milan: RealCase, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(milan.url, status=status)
    rsps.get(milan.url, body=milan.vcek_der)
    with pytest.raises(KdsError, match=f"HTTP {status}") as info:
        _vcek(client, milan)
    assert milan.url in str(info.value)
    assert len(rsps.calls) == 1
    assert sleeps == []


def test_404_says_which_url_had_no_certificate(
    client: KdsClient, milan: RealCase, rsps: responses.RequestsMock
) -> None:
    rsps.get(milan.url, status=404)
    with pytest.raises(KdsError, match=re.escape(f"KDS has no VCEK at {milan.url} (HTTP 404")):
        _vcek(client, milan)


def test_redirects_are_not_followed(client: KdsClient, milan: RealCase, rsps: responses.RequestsMock) -> None:
    rsps.get(milan.url, status=302, headers={"Location": "https://elsewhere.example/vcek"})
    rsps.get("https://elsewhere.example/vcek", body=milan.vcek_der)
    with pytest.raises(KdsError, match="HTTP 302"):
        _vcek(client, milan)
    assert len(rsps.calls) == 1


def test_oversize_response_refused_from_its_content_length(
    client: KdsClient, milan: RealCase, rsps: responses.RequestsMock
) -> None:
    rsps.get(milan.url, body=milan.vcek_der, headers={"Content-Length": str(10 * 1024 * 1024)})
    with pytest.raises(KdsError, match="exceeds 65536 bytes"):
        _vcek(client, milan)
    assert len(rsps.calls) == 1


class _CountingBody(io.BytesIO):
    consumed = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.consumed += len(data)
        return data


class _StreamingAdapter(requests.adapters.BaseAdapter):
    """Serves one body with no Content-Length, recording the URLs asked for."""

    def __init__(self, body: _CountingBody) -> None:
        super().__init__()
        self.body = body
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: object, **kwargs: object) -> requests.Response:
        self.urls.append(str(request.url))
        response = requests.Response()
        response.status_code = 200
        response.raw = self.body
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        pass


def test_oversize_streamed_response_refused_without_reading_it_all(milan: RealCase, tmp_path: Path) -> None:
    body = _CountingBody(b"\x30" * (8 * 1024 * 1024))
    adapter = _StreamingAdapter(body)
    session = requests.Session()
    session.mount("https://", adapter)
    client = KdsClient(sleep=never_sleep, cache_dir=tmp_path, session=session)
    with pytest.raises(KdsError, match="exceeds 65536 bytes"):
        _vcek(client, milan)
    assert adapter.urls == [milan.url]
    assert 65536 < body.consumed < 1024 * 1024


def test_cert_chain_fetched_and_checked(
    client: KdsClient, rsps: responses.RequestsMock, vectors: Path
) -> None:
    for key, family in ((SigningKey.VCEK, "vcek"), (SigningKey.VLEK, "vlek")):
        pem = (vectors / f"ca/genoa/cert_chain_{family}.pem").read_bytes()
        rsps.get(f"{KDS}/{family}/v1/Genoa/cert_chain", body=pem)
        intermediate, ark = client.cert_chain(Product.GENOA, key)
        assert ark.der == amd_roots().anchors_for(Product.GENOA)[0].certificate.der
        assert intermediate.common_name == ("SEV-VLEK-Genoa" if key is SigningKey.VLEK else "SEV-Genoa")
    swapped = (vectors / "ca/milan/ark.pem").read_bytes() + (vectors / "ca/milan/ask.pem").read_bytes()
    rsps.get(f"{KDS}/vcek/v1/Milan/cert_chain", body=swapped)
    with pytest.raises(KdsError, match="SEV-Milan then ARK-Milan"):
        client.cert_chain(Product.MILAN)


# ---------------------------------------------------------------------------- pure CRL checks


@pytest.mark.parametrize("product", list(Product))
def test_platform_crl_has_amds_shape(product: Product, platform: SoftwarePlatform) -> None:
    """v2, RSASSA-PSS(SHA-384, MGF1-SHA-384, salt 48) byte for byte as AMD encodes it, the ARK's name,
    thisUpdate/nextUpdate, a revoked list that can hold serial 0, non-critical crlExtensions."""
    ark = AmdCertificate.from_der(platform.ca_der(product, "ark"))
    data = platform_crl(platform, product, revoked=(0x42, 0))
    outer = der_reader.read_single(data, der_reader.SEQUENCE).children()
    assert len(outer) == 3 and outer[1].encoded == PSS_ALG
    fields = outer[0].children()
    assert [f.tag for f in fields] == [0x02, 0x30, 0x30, 0x17, 0x17, 0x30, 0xA0]
    assert (fields[0].encoded, fields[1].encoded, fields[2].encoded) == (_int(1), PSS_ALG, ark.subject_der)
    entries = [e.children() for e in fields[5].children()]
    assert [der_reader.as_int(e[0]) for e in entries] == [0, 0x42] and all(len(e) == 2 for e in entries)
    crl = RevocationList.from_der(data)
    assert (crl.this_update, crl.next_update) == (AT - dt.timedelta(days=1), AT + dt.timedelta(days=1))
    assert crl.revoked_serials == frozenset({0, 0x42}) and crl.is_revoked(0) and not crl.is_revoked(1)
    assert crl.issuer_common_name == f"ARK-{product.value}"
    crl.verify_signed_by(ark)
    crl.check_current(AT)
    amd_ark = amd_roots().anchors_for(product)[0].certificate
    expected = f"CRL: expected issuer '[^']*CN=ARK-{product.value}'"
    with pytest.raises(NotAnEnclaveError, match=expected):
        crl.verify_signed_by(amd_ark)


def _rebuilt(data: bytes, edit: Callable[[list[bytes]], list[bytes]], *, alg: bytes | None = None) -> bytes:
    """``data`` with its TBSCertList fields edited (and its algorithms replaced); the signature is kept."""
    outer = der_reader.read_single(data, der_reader.SEQUENCE).children()
    fields = edit([f.encoded for f in outer[0].children()])
    if alg is not None:
        fields[1] = alg
    return _seq(_seq(*fields), alg or outer[1].encoded, outer[2].encoded)


def _critical_crl_extensions(fields: list[bytes]) -> list[bytes]:
    extensions = der_reader.read_single(der_reader.read_single(fields[-1]).content).children()
    marked = [_seq(e.children()[0].encoded, b"\x01\x01\xff", e.children()[1].encoded) for e in extensions]
    return [*fields[:-1], _tlv(0xA0, _seq(*marked))]


def _critical_entry_extension(fields: list[bytes]) -> list[bytes]:
    entries = der_reader.read_single(fields[5]).children()
    first = _seq(*(part.encoded for part in entries[0].children()), _seq(CRITICAL_CERT_ISSUER))
    return [*fields[:5], _seq(first, *(e.encoded for e in entries[1:])), *fields[6:]]


SALT_32_ALG = PSS_ALG.replace(bytes.fromhex("a203020130"), bytes.fromhex("a203020120"))


@pytest.mark.parametrize(("edit", "alg", "message"), [
    (lambda f: [_int(2), *f[1:]], None, "only X.509 v2 CRLs"),
    (lambda f: f[1:], None, "only X.509 v2 CRLs"),
    (lambda f: [*f[:4], *f[5:]], None, "nextUpdate is missing"),
    (lambda f: [*f[:3], f[4], f[3], *f[5:]], None, "nextUpdate is not after thisUpdate"),
    (_critical_crl_extensions, None, "unsupported critical CRL extension 2.5.29.35"),
    (_critical_entry_extension, None, "unsupported critical CRL entry extension 2.5.29.29"),
    (lambda f: f, SALT_32_ALG, "salt length"),
    (lambda f: [f[0], SALT_32_ALG, *f[2:]], None, "TBS signature algorithm differs"),
    (lambda f: [*f, _tlv(0xA1, b"")], None, "unexpected TBSCertList element tag 0xa1"),
], ids=["v3", "v1", "no-nextUpdate", "reversed-window", "critical-crl-ext", "critical-entry-ext",
        "salt-32", "inner-alg-differs", "trailing-element"])
def test_platform_crl_out_of_profile_is_refused(
    edit: Callable[[list[bytes]], list[bytes]], alg: bytes | None, message: str, platform: SoftwarePlatform
) -> None:
    data = platform_crl(platform, Product.MILAN, revoked=(0, 5))
    assert _rebuilt(data, lambda f: f) == data  # the editor itself changes nothing unasked
    with pytest.raises(NotAnEnclaveError, match=message):
        RevocationList.from_der(_rebuilt(data, edit, alg=alg))


def test_amd_chain_is_never_checked_against_a_crl_amd_did_not_sign(
    real: dict[Product, RealCase], platform: SoftwarePlatform
) -> None:
    """AMD VCEKs have serial 0 and a platform CRL can list it, but only the chain's anchor counts."""
    genoa = verify_report(real[Product.GENOA].report_bytes, certificates=real[Product.GENOA].vcek_der, at=AT)
    assert genoa.roots_are_amd and genoa.chain.leaf.serial_number == 0
    data = platform_crl(platform, Product.GENOA, revoked=(0,))
    crl = RevocationList.from_der(data)
    assert crl.is_revoked(genoa.chain.leaf.serial_number)
    with pytest.raises(NotAnEnclaveError, match=r"CRL: expected issuer '[^']*CN=ARK-Genoa'"):
        crl_mod.check_revocation(crl, genoa.chain, AT)
    amd_ark = genoa.chain.anchor.certificate
    renamed = RevocationList.from_der(_rebuilt(data, lambda f: [*f[:2], amd_ark.subject_der, *f[3:]]))
    with pytest.raises(NotAnEnclaveError, match="signature does not verify under the anchor 'ARK-Genoa'"):
        crl_mod.check_revocation(renamed, genoa.chain, AT)


def test_crl_not_listing_the_chain_passes(pki: Pki) -> None:
    crl = RevocationList.from_der(good_crl(pki, revoked=(0x10002, 0x99)))
    crl_mod.check_revocation(crl, pki.vcek_chain, AT)
    crl_mod.check_revocation(crl, pki.vlek_chain, AT)


@pytest.mark.parametrize(("serial", "chain_name", "role"), [
    (0x10001, "vcek_chain", "intermediate 'SEV-Milan'"),
    (0x10101, "vlek_chain", "intermediate 'SEV-VLEK-Milan'"),
])
def test_crl_revokes_the_intermediate(pki: Pki, serial: int, chain_name: str, role: str) -> None:
    chain: CertificateChain = getattr(pki, chain_name)
    crl = RevocationList.from_der(good_crl(pki, revoked=(0x7, serial)))
    with pytest.raises(NotAnEnclaveError, match=f"revoked: {role}"):
        crl_mod.check_revocation(crl, chain, AT)


def test_an_ark_crl_does_not_speak_for_the_leaf(pki: Pki) -> None:
    """The ARK issued the ASK/ASVK, not the VCEK/VLEK: a serial in its CRL is never the leaf's.

    AMD VCEKs all have serial 0 (the encoder here, unlike cryptography's, can list it): an entry 0
    must not refuse every VCEK of the product, and a leaf serial equal to an entry is no match.
    """
    leaf0 = replace(pki.vcek_chain, leaf=replace(pki.vcek_chain.leaf, serial_number=0))
    crl_mod.check_revocation(RevocationList.from_der(good_crl(pki, revoked=(0,))), leaf0, AT)
    for chain in (pki.vcek_chain, pki.vlek_chain):
        crl = RevocationList.from_der(good_crl(pki, revoked=(chain.leaf.serial_number,)))
        crl_mod.check_revocation(crl, chain, AT)


def test_crl_window(pki: Pki) -> None:
    crl = RevocationList.from_der(good_crl(pki))
    crl_mod.check_revocation(crl, pki.vcek_chain, AT + dt.timedelta(days=1) - dt.timedelta(seconds=1))
    crl_mod.check_revocation(crl, pki.vcek_chain, AT - dt.timedelta(days=1))
    with pytest.raises(NotAnEnclaveError, match="expired"):
        crl_mod.check_revocation(crl, pki.vcek_chain, AT + dt.timedelta(days=1))
    with pytest.raises(NotAnEnclaveError, match="not yet valid"):
        crl_mod.check_revocation(crl, pki.vcek_chain, AT - dt.timedelta(days=1, seconds=1))
    future = RevocationList.from_der(good_crl(pki, this_update=AT + dt.timedelta(hours=1)))
    with pytest.raises(NotAnEnclaveError, match="not yet valid"):
        crl_mod.check_revocation(future, pki.vcek_chain, AT)
    with pytest.raises(ValueError, match="timezone-aware"):
        crl.check_current(AT.replace(tzinfo=None))


def test_crl_without_next_update_is_refused(pki: Pki) -> None:
    der = make_crl(pki.ark_key, pki.ark.subject_der, this_update=AT, next_update=None)
    with pytest.raises(NotAnEnclaveError, match="nextUpdate is missing"):
        RevocationList.from_der(der)


def test_crl_signature_must_be_the_anchors(pki: Pki) -> None:
    by_other_key = make_crl(pki.other_key, pki.ark.subject_der, this_update=AT, next_update=DAY_AFTER)
    with pytest.raises(NotAnEnclaveError, match="signature does not verify"):
        crl_mod.check_revocation(RevocationList.from_der(by_other_key), pki.vcek_chain, AT)
    good = bytearray(good_crl(pki))
    good[-5] ^= 0x01
    with pytest.raises(NotAnEnclaveError, match="signature does not verify"):
        crl_mod.check_revocation(RevocationList.from_der(bytes(good)), pki.vcek_chain, AT)
    misnamed = make_crl(pki.ark_key, pki.vcek_chain.intermediate.subject_der, this_update=AT,
                        next_update=DAY_AFTER)
    with pytest.raises(NotAnEnclaveError,
                       match=r"expected issuer '[^']*CN=ARK-Milan'.*found '[^']*CN=SEV-Milan'"):
        RevocationList.from_der(misnamed).verify_signed_by(pki.ark)


def test_crl_with_other_pss_parameters_is_refused(pki: Pki) -> None:
    salt32 = PSS_ALG.replace(bytes.fromhex("a203020130"), bytes.fromhex("a203020120"))
    der = make_crl(pki.ark_key, pki.ark.subject_der, this_update=AT, next_update=DAY_AFTER,
                   alg=salt32, salt_length=32)
    with pytest.raises(NotAnEnclaveError, match="salt length"):
        RevocationList.from_der(der)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"crl_extensions": (CRITICAL_IDP,)}, "unsupported critical CRL extension 2.5.29.28"),
    ({"crl_extensions": (CRL_NUMBER, CRL_NUMBER)}, "duplicate CRL extension"),
    ({"revoked": (5,), "entry_extensions": (CRITICAL_CERT_ISSUER,)},
     "critical CRL entry extension 2.5.29.29"),
])
def test_crl_critical_or_duplicate_extensions_are_refused(
    pki: Pki, kwargs: dict[str, object], message: str
) -> None:
    der = make_crl(pki.ark_key, pki.ark.subject_der, this_update=AT, next_update=DAY_AFTER,
                   **kwargs)
    with pytest.raises(NotAnEnclaveError, match=message):
        RevocationList.from_der(der)


def test_malformed_crls_are_refused(pki: Pki) -> None:
    good = good_crl(pki)
    for bad in (good + b"\x00", good[:-1], b"", b"\x30\x00", bytes(MAX_CRL_SIZE + 1)):
        with pytest.raises(NotAnEnclaveError, match="CRL"):
            RevocationList.from_der(bad)


def test_crl_parse_agrees_with_cryptography_encoder(pki: Pki) -> None:
    """An independent encoder's CRL reads the same (guards the hand-written test encoder too)."""
    revoked = [x509.RevokedCertificateBuilder().serial_number(s).revocation_date(AT).build()
               for s in (3, 0x10001)]
    der = x509.CertificateRevocationListBuilder(
        issuer_name=x509.load_der_x509_certificate(pki.ark.der).subject,
        last_update=AT - dt.timedelta(hours=1),
        next_update=AT + dt.timedelta(hours=1),
        revoked_certificates=revoked,
    ).sign(pki.ark_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)
    ours = RevocationList.from_der(der)
    theirs = x509.load_der_x509_crl(der)
    assert ours.revoked_serials == frozenset(r.serial_number for r in theirs) == frozenset({3, 0x10001})
    assert ours.this_update == theirs.last_update_utc and ours.next_update == theirs.next_update_utc
    with pytest.raises(NotAnEnclaveError, match="revoked: intermediate"):
        crl_mod.check_revocation(ours, pki.vcek_chain, AT)


# ---------------------------------------------------------------------------- KdsClient.check_revocation


def test_check_revocation_fetches_the_right_crl_once(
    client: KdsClient, pki: Pki, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", body=good_crl(pki))
    rsps.get(f"{KDS}/vlek/v1/Milan/crl", body=good_crl(pki, revoked=(0x10101,)))
    client.check_revocation(pki.vcek_chain, AT)
    client.check_revocation(pki.vcek_chain, AT - dt.timedelta(hours=12))
    with pytest.raises(NotAnEnclaveError, match="revoked: intermediate 'SEV-VLEK-Milan'"):
        client.check_revocation(pki.vlek_chain, AT)
    assert [c.request.url for c in rsps.calls] == [f"{KDS}/vcek/v1/Milan/crl", f"{KDS}/vlek/v1/Milan/crl"]
    assert (tmp_path / "kds/crl/vcek/Milan.crl").is_file()
    offline = KdsClient(sleep=never_sleep, cache_dir=tmp_path, offline=True)
    offline.check_revocation(pki.vcek_chain, AT)
    assert len(rsps.calls) == 2


@pytest.mark.parametrize("serial", [0x10001])
def test_check_revocation_refuses_revoked_chain(
    client: KdsClient, pki: Pki, rsps: responses.RequestsMock, serial: int
) -> None:
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", body=good_crl(pki, revoked=(serial,)))
    with pytest.raises(NotAnEnclaveError, match=f"revoked: .* serial 0x{serial:x}"):
        client.check_revocation(pki.vcek_chain, AT)


def test_stale_cached_crl_is_refetched(client: KdsClient, pki: Pki, rsps: responses.RequestsMock) -> None:
    first = good_crl(pki)
    second = good_crl(pki, this_update=AT + dt.timedelta(days=1), next_update=AT + dt.timedelta(days=8))
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", body=first)
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", body=second)
    client.check_revocation(pki.vcek_chain, AT)
    assert len(rsps.calls) == 1
    client.check_revocation(pki.vcek_chain, AT + dt.timedelta(days=2))
    assert len(rsps.calls) == 2
    client.check_revocation(pki.vcek_chain, AT + dt.timedelta(days=1, hours=20))
    assert len(rsps.calls) == 2


def test_stale_crl_from_kds_is_refused(client: KdsClient, pki: Pki, rsps: responses.RequestsMock) -> None:
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", body=good_crl(pki))
    with pytest.raises(KdsError, match=r"CRL from .* is refused: CRL: expired"):
        client.check_revocation(pki.vcek_chain, AT + dt.timedelta(days=2))


def test_crl_with_future_this_update_from_kds_is_refused(
    client: KdsClient, pki: Pki, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", body=good_crl(pki, this_update=AT + dt.timedelta(minutes=5)))
    with pytest.raises(KdsError, match="not yet valid"):
        client.check_revocation(pki.vcek_chain, AT)


def test_offline_with_only_a_stale_crl_fails_clearly(
    client: KdsClient, pki: Pki, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", body=good_crl(pki))
    client.check_revocation(pki.vcek_chain, AT)
    offline = KdsClient(sleep=never_sleep, cache_dir=tmp_path, offline=True)
    with pytest.raises(KdsError, match=r"offline: no current Milan VCEK CRL.*expired") as info:
        offline.check_revocation(pki.vcek_chain, AT + dt.timedelta(days=2))
    assert str(tmp_path / "kds/crl/vcek/Milan.crl") in str(info.value)
    assert f"{KDS}/vcek/v1/Milan/crl" in str(info.value)
    with pytest.raises(KdsError, match="none cached at"):
        empty = KdsClient(sleep=never_sleep, cache_dir=tmp_path / "empty", offline=True)
        empty.check_revocation(pki.vcek_chain, AT)
    assert len(rsps.calls) == 1


def test_crl_cached_on_disk_under_another_key_is_ignored(
    client: KdsClient, pki: Pki, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    path = tmp_path / "kds/crl/vcek/Milan.crl"
    path.parent.mkdir(parents=True)
    other = make_crl(pki.other_key, pki.ark.subject_der, this_update=AT, next_update=DAY_AFTER)
    path.write_bytes(crl_entry(Product.MILAN, "vcek", other))
    served = good_crl(pki)
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", body=served)
    client.check_revocation(pki.vcek_chain, AT)
    assert len(rsps.calls) == 1
    assert path.read_bytes() == crl_entry(Product.MILAN, "vcek", served)  # the poisoned file was replaced


def test_memory_cache_serves_when_the_disk_cache_is_unwritable(
    pki: Pki, milan: RealCase, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    client = KdsClient(sleep=never_sleep, cache_dir=not_a_dir)
    rsps.get(milan.url, body=milan.vcek_der)
    assert _vcek(client, milan).der == milan.vcek_der
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", body=good_crl(pki))
    client.check_revocation(pki.vcek_chain, AT - dt.timedelta(hours=12))
    client.check_revocation(pki.vcek_chain, AT - dt.timedelta(hours=11))
    assert [c.request.url for c in rsps.calls] == [milan.url, f"{KDS}/vcek/v1/Milan/crl"]


def test_crl_unavailable_fails_closed(client: KdsClient, pki: Pki, rsps: responses.RequestsMock) -> None:
    rsps.get(f"{KDS}/vcek/v1/Milan/crl", status=404)
    with pytest.raises(KdsError, match="KDS has no CRL at"):
        client.check_revocation(pki.vcek_chain, AT)


# ---------------------------------------------------------------------------- end to end on real reports


@pytest.mark.parametrize("product", list(Product))
def test_verify_report_with_mocked_kds_and_the_platforms_crl(
    product: Product, platform: SoftwarePlatform, rsps: responses.RequestsMock, tmp_path: Path,
    sleeps: list[float],
) -> None:
    """A platform-signed report; its VCEK and the platform's CRL served by the mocked KDS; test roots."""
    case = platform_case(platform, product)
    assert vcek_url(product, case.signed.fields.chip_id, case.signed.fields.reported_tcb) == case.url
    crl = platform_crl(platform, product, revoked=(0, 0x7))
    rsps.get(case.url, body=case.vcek_der)
    rsps.get(crl_url(product), body=crl)
    client = KdsClient(cache_dir=tmp_path, sleep=sleeps.append)
    verified = verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT)
    assert verified.revocation_checked and not verified.roots_are_amd
    assert verified.product is product
    assert verified.certificate.der == case.vcek_der
    assert [c.request.url for c in rsps.calls] == [case.url, crl_url(product)]
    assert (tmp_path / case.cache_file).read_bytes() == case.vcek_der
    assert (tmp_path / f"kds/crl/vcek/{product.value}.crl").read_bytes() == crl_entry(product, "vcek", crl)
    again = verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT - dt.timedelta(hours=23))
    assert again.certificate.der == case.vcek_der and again.revocation_checked
    assert len(rsps.calls) == 2
    assert sleeps == []
    with pytest.raises(NotAnEnclaveError, match="expected a chain to AMD's pinned roots"):
        verify_report(case.signed.raw, kds=client, at=AT)  # the same evidence under AMD's roots


@pytest.mark.parametrize(("name", "role"), [("ask", "intermediate 'SEV-{}'")])
@pytest.mark.parametrize("product", list(Product))
def test_verify_report_refuses_a_chain_the_kds_crl_revokes(
    product: Product, name: str, role: str, platform: SoftwarePlatform, rsps: responses.RequestsMock,
    tmp_path: Path,
) -> None:
    case = platform_case(platform, product)
    serial = case.serial(name)
    assert serial != 0
    rsps.get(case.url, body=case.vcek_der)
    rsps.get(crl_url(product), body=platform_crl(platform, product, revoked=(0x7, serial)))
    client = KdsClient(sleep=never_sleep, cache_dir=tmp_path)
    expected = re.escape(f"revoked: {role.format(product.value)} serial 0x{serial:x} is listed in the CRL of "
                         f"'ARK-{product.value}'")
    with pytest.raises(NotAnEnclaveError, match=expected):
        verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT)


def test_verify_report_checks_a_vlek_chain_against_the_vlek_crl(
    platform: SoftwarePlatform, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    signed = platform.sign(ReportFields(product=Product.GENOA, signing_key=SigningKey.VLEK))
    asvk = AmdCertificate.from_der(signed.certificates["asvk"]).serial_number
    vlek_crl = crl_url(Product.GENOA, SigningKey.VLEK)
    rsps.get(crl_url(Product.GENOA), body=platform_crl(platform, Product.GENOA))
    rsps.get(vlek_crl, body=platform_crl(platform, Product.GENOA, "vlek", revoked=(asvk,)))
    client = KdsClient(sleep=never_sleep, cache_dir=tmp_path)
    with pytest.raises(NotAnEnclaveError, match=f"revoked: intermediate 'SEV-VLEK-Genoa' serial 0x{asvk:x}"):
        verify_report(signed.raw, certificates=signed.certificates, kds=client,
                      roots=platform.roots_pem(Product.GENOA), at=AT)
    assert [c.request.url for c in rsps.calls] == [vlek_crl]
    assert (tmp_path / "kds/crl/vlek/Genoa.crl").is_file()


def test_verify_report_refetches_a_stale_crl_and_refuses_a_stale_one_from_kds(
    platform: SoftwarePlatform, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    case = platform_case(platform, Product.MILAN)
    url = crl_url(Product.MILAN)
    first = platform_crl(platform, Product.MILAN)  # AT - 1 day .. AT + 1 day
    second = platform_crl(platform, Product.MILAN, this_update=AT + dt.timedelta(days=1),
                          next_update=AT + dt.timedelta(days=8))
    rsps.get(case.url, body=case.vcek_der)
    rsps.get(url, body=first)
    rsps.get(url, body=second)
    client = KdsClient(sleep=never_sleep, cache_dir=tmp_path, max_crl_age_seconds=7 * 86400)
    verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT)
    assert len(rsps.calls) == 2
    verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT + dt.timedelta(days=2))
    assert [c.request.url for c in rsps.calls] == [case.url, url, url]  # stale in memory and on disk
    assert (tmp_path / "kds/crl/vcek/Milan.crl").read_bytes() == crl_entry(Product.MILAN, "vcek", second)
    verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT + dt.timedelta(days=7))
    assert len(rsps.calls) == 3
    with pytest.raises(KdsError, match=r"CRL from .*/vcek/v1/Milan/crl is refused: CRL: expired at "):
        verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT + dt.timedelta(days=8))
    assert len(rsps.calls) == 4  # KDS (still serving the second CRL) was asked once more


def test_verify_report_offline_misses_name_the_file(platform: SoftwarePlatform, tmp_path: Path) -> None:
    """Offline: a missing VCEK, then a missing CRL, each named; then a hand-provisioned cache passes."""
    case = platform_case(platform, Product.TURIN)
    client = KdsClient(sleep=never_sleep, cache_dir=tmp_path, offline=True)
    crl_file = tmp_path / "kds/crl/vcek/Turin.crl"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        with pytest.raises(KdsError, match="offline: the Turin VCEK") as info:
            verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT)
        assert str(tmp_path / case.cache_file) in str(info.value) and case.url in str(info.value)
        (tmp_path / case.cache_file).parent.mkdir(parents=True)
        (tmp_path / case.cache_file).write_bytes(case.vcek_der)
        with pytest.raises(KdsError, match="offline: no current Turin VCEK CRL") as info:
            verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT)
        assert f"none cached at {crl_file}" in str(info.value) and crl_url(Product.TURIN) in str(info.value)
        crl_file.parent.mkdir(parents=True)
        crl_file.write_bytes(crl_entry(Product.TURIN, "vcek", platform_crl(platform, Product.TURIN)))
        verified = verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT)
        assert verified.revocation_checked
        with pytest.raises(KdsError, match=r"offline: no current Turin VCEK CRL.*expired"):
            verify_report(case.signed.raw, kds=client, roots=case.roots, at=AT + dt.timedelta(days=1))
        assert len(mock.calls) == 0


@pytest.mark.parametrize("product", list(Product))
def test_real_report_with_mocked_kds_fails_closed_on_a_crl_amd_did_not_sign(
    product: Product, real: dict[Product, RealCase], platform: SoftwarePlatform, rsps: responses.RequestsMock,
    tmp_path: Path, sleeps: list[float],
) -> None:
    """Real report and real VCEK through the mocked KDS under AMD's pinned roots: the VCEK path works
    and caches, and revocation fails closed because the served CRL is not signed by AMD's ARK."""
    case = real[product]
    rsps.get(case.url, body=case.vcek_der)
    rsps.get(crl_url(product), body=platform_crl(platform, product))
    client = KdsClient(cache_dir=tmp_path, sleep=sleeps.append)
    refused = (re.escape(f"KDS: the {product.value} VCEK CRL from {crl_url(product)} is refused: ")
               + f"CRL: expected issuer '[^']*CN=ARK-{product.value}'")
    with pytest.raises(KdsError, match=refused):
        verify_report(case.report_bytes, kds=client, at=AT)
    assert [c.request.url for c in rsps.calls] == [case.url, crl_url(product)]
    assert (tmp_path / case.cache_file).read_bytes() == case.vcek_der
    assert not (tmp_path / f"kds/crl/vcek/{product.value}.crl").exists()  # a refused CRL is not cached
    fetched = client.vcek(product, case.report.chip_id, case.report.reported_tcb)
    assert fetched.der == case.vcek_der and fetched.serial_number == 0
    verified = verify_report(case.report_bytes, certificates=fetched.der, at=AT)
    assert verified.roots_are_amd and not verified.revocation_checked and verified.product is product
    with pytest.raises(KdsError, match=refused):
        verify_report(case.report_bytes, kds=client, at=AT)
    assert [c.request.url for c in rsps.calls] == [case.url, crl_url(product), crl_url(product)]
    assert sleeps == []


def test_verify_report_vcek_404_fails_with_one_request(
    milan: RealCase, rsps: responses.RequestsMock, tmp_path: Path, sleeps: list[float]
) -> None:
    rsps.get(milan.url, status=404)
    with pytest.raises(KdsError, match=re.escape(f"KDS has no VCEK at {milan.url} (HTTP 404")):
        verify_report(milan.report_bytes, kds=KdsClient(cache_dir=tmp_path, sleep=sleeps.append), at=AT)
    assert len(rsps.calls) == 1
    assert sleeps == []
