"""SecureSession(kds=...): revocation checked for the attested chain, fail closed, nothing leaked."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
import responses

import blindbox.requests as br
from blindbox.errors import NotAnEnclaveError, VerificationIncompleteError
from blindbox.snp import AmdCertificate, Product
from blindbox.snp.kds import KdsClient, crl_url
from blindbox.testing import EnclaveServer, SoftwarePlatform

SECRET = b"secret-payload-7c1f"
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _crl(server: EnclaveServer, revoked: tuple[int, ...] = ()) -> bytes:
    platform: SoftwarePlatform = server.source.platform  # type: ignore[attr-defined]
    return platform.crl(Product.MILAN, "vcek", revoked=revoked, this_update=NOW - dt.timedelta(hours=1),
                        next_update=NOW + dt.timedelta(days=1))


def _ask_serial(server: EnclaveServer) -> int:
    evidence = server.source.evidence(spki_der=server.identity.spki_der, nonce=None, faults=frozenset())
    return AmdCertificate.load(evidence.certificates["ask"]).serial_number


def _session(server: EnclaveServer, client: KdsClient) -> br.SecureSession:
    return br.SecureSession(server.address, measurements=[server.measurement], roots=server.roots_pem,
                            kds=client)


def test_current_crl_without_our_serials_lets_the_session_through(
    blindbox_enclave: EnclaveServer, tmp_path: Path
) -> None:
    with responses.RequestsMock() as mock:
        mock.add_passthru(blindbox_enclave.url)
        mock.get(crl_url(Product.MILAN), body=_crl(blindbox_enclave, revoked=(0xDEAD,)))
        with _session(blindbox_enclave, KdsClient(cache_dir=tmp_path)) as session:
            assert session.post("/upload", data=SECRET).status_code == 200
        assert len(mock.calls) == 1  # the CRL, and nothing else went to "AMD"
    assert SECRET in blindbox_enclave.raw_bytes_received()


@pytest.mark.parametrize("which", ["ASK", "no CRL"])
def test_revoked_or_unknown_revocation_refuses_before_sending(
    blindbox_enclave_factory: Callable[..., EnclaveServer], tmp_path: Path, which: str
) -> None:
    server = blindbox_enclave_factory()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(server.url)
        if which == "ASK":
            mock.get(crl_url(Product.MILAN), body=_crl(server, revoked=(_ask_serial(server),)))
        else:
            mock.get(crl_url(Product.MILAN), status=404)
        refused = NotAnEnclaveError if which == "ASK" else VerificationIncompleteError  # KDS: incomplete
        with pytest.raises(refused, match="revoked: intermediate" if which == "ASK" else "CRL"):
            br.post(f"{server.url}/upload", data=SECRET, measurements=[server.measurement],
                    roots=server.roots_pem, kds=KdsClient(cache_dir=tmp_path))
    assert SECRET not in server.raw_bytes_received()
    assert server.received == []
