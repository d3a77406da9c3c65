"""Regression tests from the security review of blindbox.snp and blindbox.attest.

Each test pins one finding: a network- or configuration-controlled value that
made an untyped exception escape instead of the documented typed error.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import responses

from blindbox.attest.manifest import Manifest
from blindbox.attest.policy import AttestationPolicy
from blindbox.errors import ConfigurationError, ManifestError, PolicyViolationError
from blindbox.snp import SigningKey, verify_report
from blindbox.snp.kds import KdsClient, KdsError
from blindbox.snp.product import Product
from blindbox.snp.tcb import TcbVersion
from blindbox.testing import ReportFields, SoftwarePlatform, default_chip_id

#: U+00B2 SUPERSCRIPT TWO: str.isdigit() is True for it, int() refuses it. HTTP header
#: values are decoded as latin-1, so the single byte 0xB2 on the wire arrives as this.
SUPERSCRIPT_TWO = "\u00b2"
_TCB = TcbVersion.from_components(bootloader=4, tee=0, snp=24, microcode=219)
_CHIP = bytes(range(1, 65))


@pytest.fixture()
def loopback_kds() -> Iterator[str]:
    """A one-shot HTTP server on 127.0.0.1 answering 200 with ``Content-Length: \\xb2``."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\nConnection: close\r\n\r\n0\x82")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    thread.join(timeout=10)


def test_kds_non_ascii_content_length_is_a_typed_error(loopback_kds: str, tmp_path: Path) -> None:
    client = KdsClient(cache_dir=tmp_path, base_url=loopback_kds, max_retries=0, sleep=lambda _: None)
    with pytest.raises(KdsError, match="Content-Length: expected 1 to 20 ASCII digits"):
        client.vcek(Product.MILAN, _CHIP, _TCB)


def test_kds_non_ascii_content_length_via_mock_is_a_typed_error(tmp_path: Path) -> None:
    client = KdsClient(cache_dir=tmp_path, max_retries=0, sleep=lambda _: None)
    with responses.RequestsMock() as rsps:
        rsps.get(
            f"https://kdsintf.amd.com/vcek/v1/Milan/{_CHIP.hex()}?blSPL=4&teeSPL=0&snpSPL=24&ucodeSPL=219",
            body=b"\x30\x00",
            headers={"Content-Length": SUPERSCRIPT_TWO},
        )
        with pytest.raises(KdsError):
            client.vcek(Product.MILAN, _CHIP, _TCB)


def test_manifest_url_with_non_ascii_content_length_is_a_manifest_error() -> None:
    url = "https://vendor.example/manifest.json"
    with responses.RequestsMock() as rsps:
        rsps.get(url, body=b"{}", headers={"Content-Length": SUPERSCRIPT_TWO})
        with pytest.raises(ManifestError):
            Manifest.load(url)


@pytest.mark.parametrize("field, value", [
    ("min_firmware", f"1.55.{SUPERSCRIPT_TWO}"),
    ("min_abi", f"0.{SUPERSCRIPT_TWO}"),
])
def test_policy_version_with_non_ascii_digits_is_a_configuration_error(field: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        AttestationPolicy(measurements=["00" * 48], **{field: value})


def test_vlek_report_never_matches_chip_ids() -> None:
    """A VLEK is per cloud provider: even a non-zero chip_id in a VLEK report proves no chip."""
    platform = SoftwarePlatform()
    chip = default_chip_id(Product.MILAN)
    signed = platform.sign(ReportFields(product=Product.MILAN, signing_key=SigningKey.VLEK, chip_id=chip))
    verified = verify_report(signed.raw, certificates=dict(signed.certificates),
                             roots=platform.roots_pem(Product.MILAN))
    assert verified.report.chip_id == chip  # the report does carry these bytes...
    policy = AttestationPolicy(measurements=[bytes(48)], signing_keys={SigningKey.VLEK}, chip_ids=[chip])
    with pytest.raises(PolicyViolationError, match="chip_id"):
        policy.appraise(verified)  # ...but no VLEK vouches for them
