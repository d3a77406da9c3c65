"""``blindbox verify`` without ``--cert`` says what it fetches from AMD KDS and how to avoid it (issue 10).

The real KdsClient runs against a KDS mocked by ``responses``, on a real Genoa report.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest
import responses

from blindbox.cli import main
from blindbox.snp.kds import crl_url, vcek_url
from blindbox.snp.product import Product
from blindbox.snp.report import AttestationReport

from .conftest import report_vectors

GENOA = {v.name: v for v in report_vectors()}["genoa_oak-oc_v5_vcek"]
HINT = ("blindbox verify: AMD KDS could not be used; pass the VCEK with --cert (and the ASK with --chain) "
        "to verify offline")


def test_verify_without_cert_says_what_it_fetches_and_suggests_cert_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda name: str(tmp_path / name))
    report = AttestationReport.from_bytes(GENOA.report)
    vcek = vcek_url(Product.GENOA, report.chip_id, report.reported_tcb)
    crl = crl_url(Product.GENOA)
    with responses.RequestsMock() as kds:
        kds.get(vcek, body=GENOA.cert)
        kds.get(crl, status=404)
        code = main(["verify", str(GENOA.report_path), "--at", GENOA.at.isoformat()])
    err = capsys.readouterr().err.splitlines()
    assert code != 0
    chip = report.chip_id.hex()[:16]
    assert err[0] == (f"blindbox verify: fetching the Genoa VCEK for chip {chip}... ({report.reported_tcb}) "
                      f"from {vcek} (use --cert/--chain to verify offline)")
    assert err[1] == (f"blindbox verify: fetching the Genoa VCEK CRL from {crl} "
                      "(use --cert/--chain to verify offline)")
    assert err[2] == f"blindbox verify: KdsError: KDS has no CRL at {crl} (HTTP 404 Not Found; not retried)"
    assert err[3:] == [HINT]


def test_verify_with_cert_fetches_nothing_and_says_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with responses.RequestsMock() as kds:
        code = main(["verify", str(GENOA.report_path), "--cert", str(GENOA.cert_path),
                     "--at", GENOA.at.isoformat()])
        assert len(kds.calls) == 0
    assert code == 0
    assert capsys.readouterr().err == ""
