"""SecureSession's configuration, addresses, public surface, audit data and logging."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from urllib3.util import Retry

import blindbox.requests as br
from blindbox.attest.evidence import EVIDENCE_PATH
from blindbox.attest.policy import Rule
from blindbox.errors import ConfigurationError, InsecureGuestPolicyError, OriginRefusedError
from blindbox.requests.origin import Origin
from blindbox.testing.evidence import LiveEvidence
from blindbox.testing.fixture import RecordedEvidence
from blindbox.testing.server import EnclaveServer, Fault

from .requests_support import (
    SECRET,
    SECRET_BODY,
    SECRET_HEADERS,
    SECRET_PATH,
    enclave,
    session_kwargs,
)


@pytest.fixture(scope="module")
def honest() -> Iterator[EnclaveServer]:
    with enclave() as server:
        yield server


# -- configuration --------------------------------------------------------------------------------
def test_no_measurement_is_refused_with_instructions(honest: EnclaveServer) -> None:
    before = honest.connections
    for measurements in (None, [], ()):
        with pytest.raises(ConfigurationError, match=r"measurements=\['<96 hex characters>'\]"):
            br.SecureSession(honest.address, measurements=measurements, roots=honest.roots_pem)
    with pytest.raises(ConfigurationError, match="no expected launch measurement"):
        br.get(honest.url + "/x", roots=honest.roots_pem)
    assert honest.connections == before  # refused before connecting


def test_measurements_any_case_one_or_many(honest: EnclaveServer) -> None:
    other = "ab" * 48
    for measurements in (honest.measurement.upper(), [other, honest.measurement.upper()],
                         (honest.measurement,), bytes.fromhex(honest.measurement)):
        with br.SecureSession(honest.address, measurements=measurements, roots=honest.roots_pem) as s:
            assert s.attestation is not None and s.attestation.measurement == honest.measurement
    with pytest.raises(ConfigurationError, match="96 hex characters"):
        br.SecureSession(honest.address, measurements=["abc"], roots=honest.roots_pem)
    with pytest.raises(br.InvalidEnclaveCode):
        br.SecureSession(honest.address, measurements=[other], roots=honest.roots_pem)


def test_roots_from_text_bytes_and_path(honest: EnclaveServer, tmp_path: Path) -> None:
    path = tmp_path / "roots.pem"
    path.write_text(honest.roots_pem)
    for roots in (honest.roots_pem, honest.roots_pem.encode(), str(path), path):
        with br.SecureSession(honest.address, measurements=[honest.measurement], roots=roots) as s:
            assert s.attestation is not None and not s.attestation.verified.roots_are_amd
    with pytest.raises(ConfigurationError, match="roots"):
        br.SecureSession(honest.address, measurements=[honest.measurement], roots="not a certificate")


def test_unknown_policy_names_are_a_type_error(honest: EnclaveServer) -> None:
    with pytest.raises(TypeError, match=r"'debugg', 'tcb_minimum'") as info:
        br.SecureSession(honest.address, debugg=Rule.ANY, tcb_minimum=1, **session_kwargs(honest))
    assert "debug" in str(info.value) and "migrate_ma" in str(info.value)  # lists the valid names
    with pytest.raises(TypeError, match="debugg"):
        br.get(honest.url + "/", debugg=Rule.ANY, **session_kwargs(honest))


def test_policy_fields_pass_through() -> None:
    with enclave(faults=[Fault.DEBUG_POLICY]) as server:
        with pytest.raises(InsecureGuestPolicyError, match="debug"):
            br.SecureSession(server.address, **session_kwargs(server))
        with br.SecureSession(server.address, debug=Rule.ANY, **session_kwargs(server)) as session:
            assert session.attestation is not None and session.attestation.verified.report.policy.debug
        assert br.get(server.url + "/ok", debug=Rule.ANY, **session_kwargs(server)).status_code == 200


@pytest.mark.parametrize("timeout", [0, -1, "5", True])
def test_bad_timeout_is_refused(timeout: object, honest: EnclaveServer) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        br.SecureSession(honest.address, timeout=timeout, **session_kwargs(honest))  # type: ignore[arg-type]


# -- addresses --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("addr", "host", "port", "url"),
    [
        ("enclave.example", "enclave.example", 443, "https://enclave.example"),
        ("Enclave.Example:8443", "enclave.example", 8443, "https://enclave.example:8443"),
        ("https://enclave.example", "enclave.example", 443, "https://enclave.example"),
        ("https://enclave.example:443/", "enclave.example", 443, "https://enclave.example"),
        ("HTTPS://10.0.0.1:9000", "10.0.0.1", 9000, "https://10.0.0.1:9000"),
        ("[::1]:8443", "::1", 8443, "https://[::1]:8443"),
    ],
)
def test_address_forms(addr: str, host: str, port: int, url: str) -> None:
    origin = Origin.parse(addr)
    assert (origin.host, origin.port, origin.url) == (host, port, url)


@pytest.mark.parametrize("addr", ["http://enclave.example", "ftp://x", "https://h/api", "https://h/?q=1",
                                  "https://user:pw@h", "h:notaport", "", "   ", "https://"])
def test_bad_addresses(addr: str) -> None:
    with pytest.raises(ConfigurationError, match="addr"):
        Origin.parse(addr)


def test_address_forms_connect(honest: EnclaveServer) -> None:
    for addr in (honest.address, honest.url, honest.url + "/"):
        with br.SecureSession(addr, **session_kwargs(honest)) as session:
            assert session.base_url == honest.url
            assert session.get("/ping").url == honest.url + "/ping"


def test_origin_check() -> None:
    origin = Origin.parse("enclave.example:8443")
    origin.check("https://enclave.example:8443/x?y#z")
    origin.check("https://ENCLAVE.example.:8443/")
    for url in ("http://enclave.example:8443/", "https://enclave.example/", "https://other:8443/",
                "https://enclave.example:8443@evil.example/", "https://enclave.example:bad/",
                "wss://enclave.example:8443/", "/relative", None):
        with pytest.raises(OriginRefusedError):
            origin.check(url)
    assert origin.resolve("/a?b=1") == "https://enclave.example:8443/a?b=1"
    assert origin.resolve("a") == "https://enclave.example:8443/a"
    assert origin.resolve(b"/bytes") == "https://enclave.example:8443/bytes"
    assert origin.resolve("https://other/") == "https://other/"


# -- public surface -----------------------------------------------------------------------------
def test_reexports_what_scripts_use_and_nothing_that_sends_unattested() -> None:
    for name in ("exceptions", "codes", "Response", "Request", "PreparedRequest", "RequestException",
                 "ConnectionError", "HTTPError", "Timeout", "ConnectTimeout", "ReadTimeout",
                 "TooManyRedirects", "JSONDecodeError", "URLRequired", "auth", "cookies", "structures",
                 "utils", "status_codes"):
        assert hasattr(br, name), name
    assert br.codes.ok == 200 and br.exceptions is requests.exceptions and br.Response is requests.Response
    for name in ("Session", "adapters", "sessions", "HTTPAdapter", "BaseAdapter"):
        assert not hasattr(br, name), name
    # ``blindbox.requests.session`` is this package's module (SecureSession), not requests.session().
    assert not callable(getattr(br, "session", None)) and "session" not in br.__all__
    assert set(br.__all__) <= set(dir(br))
    assert issubclass(br.AttestationError, requests.exceptions.ConnectionError)


def test_mounting_a_plain_adapter_keeps_its_settings_and_attestation(honest: EnclaveServer) -> None:
    retry = Retry(total=3, status_forcelist=[503])
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        evidence_before = len(honest.evidence_requests)
        session.mount("https://", requests.adapters.HTTPAdapter(max_retries=retry, pool_maxsize=32))
        adapter = session.get_adapter(session.base_url)
        assert type(adapter).__name__ == "AttestedAdapter"
        assert adapter.max_retries is retry  # type: ignore[attr-defined]
        assert adapter.poolmanager.connection_pool_kw["maxsize"] == 32  # type: ignore[attr-defined]
        assert session.get("/after-mount").status_code == 200
        assert len(honest.evidence_requests) == evidence_before  # same pins, new pool
        assert len(session.attestations) == 1


def test_mounting_other_adapters_is_refused(honest: EnclaveServer) -> None:
    class CustomAdapter(requests.adapters.HTTPAdapter):
        pass

    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        with pytest.raises(ConfigurationError, match="without attestation"):
            session.mount("https://", CustomAdapter())
        with br.SecureSession(honest.address, **session_kwargs(honest)) as other:
            with pytest.raises(ConfigurationError, match="without attestation"):
                session.mount("https://", other.get_adapter(other.base_url))
        session.adapters["https://"] = requests.adapters.HTTPAdapter()  # bypassing mount()
        before = len(honest.received)
        with pytest.raises(ConfigurationError, match="not this SecureSession's attested adapter"):
            session.post(SECRET_PATH, data=SECRET_BODY)
        assert len(honest.received) == before


def test_cannot_be_pickled(honest: EnclaveServer) -> None:
    import pickle

    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(session)


# -- what was verified ----------------------------------------------------------------------------
def test_attestation_is_available_for_audit(honest: EnclaveServer) -> None:
    with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
        attestation = session.attestation
        assert attestation is not None and session.attestations == (attestation,)
        summary = attestation.summary()
        assert summary["measurement"] == honest.measurement
        assert summary["TLS SPKI sha256"] == hashlib.sha256(honest.identity.spki_der).hexdigest()
        assert summary["product"] == "Milan" and summary["signing key"] == "VCEK"
        assert summary["roots"] == "caller-supplied (NOT AMD)"
        assert attestation.nonce is not None and len(attestation.nonce) == 32
        nonce_query = honest.evidence_requests[-1].path.split("nonce=", 1)[1]
        assert nonce_query == attestation.nonce.hex()
        for key in ("report version", "chip id", "reported TCB", "guest policy", "attested at"):
            assert summary[key]


def test_nonces_are_fresh(honest: EnclaveServer) -> None:
    nonces = set()
    for _ in range(3):
        with br.SecureSession(honest.address, **session_kwargs(honest)) as session:
            assert session.attestation is not None and session.attestation.nonce is not None
            nonces.add(session.attestation.nonce)
    assert len(nonces) == 3


def test_nonce_false_sends_no_nonce(honest: EnclaveServer) -> None:
    with br.SecureSession(honest.address, nonce=False, **session_kwargs(honest)) as session:
        assert session.attestation is not None and session.attestation.nonce is None
    assert honest.evidence_requests[-1].path == EVIDENCE_PATH


def test_recorded_fixture_needs_nonce_false(tmp_path: Path) -> None:
    source = RecordedEvidence.load(LiveEvidence.create().record().save(tmp_path / "fixture"))
    with EnclaveServer(evidence=source) as server:
        with br.SecureSession(server.address, nonce=False, **session_kwargs(server)) as session:
            assert session.get("/recorded").status_code == 200
        with pytest.raises(br.BindingMismatchError, match="nonce"):
            br.SecureSession(server.address, **session_kwargs(server))


# -- logging --------------------------------------------------------------------------------------
def test_logging_tells_each_step_and_never_the_body(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="blindbox")
    with enclave() as server:
        with br.SecureSession(server.address, **session_kwargs(server)) as session:
            session.post(SECRET_PATH, data=SECRET_BODY, headers=SECRET_HEADERS)
            with pytest.raises(OriginRefusedError) as refused:
                session.post(f"https://elsewhere.invalid{SECRET_PATH}?key={SECRET}", data=SECRET_BODY)
            assert "https://elsewhere.invalid" in str(refused.value) and SECRET not in str(refused.value)
    debug = [r.getMessage() for r in caplog.records if r.name == "blindbox.requests"]
    for step in ("fetching evidence", "received", "attested and pinned"):
        assert any(step in message for message in debug), step
    with enclave(faults=[Fault.OTHER_MEASUREMENT]) as server:
        with pytest.raises(br.InvalidEnclaveCode):
            br.post(server.url + SECRET_PATH, data=SECRET_BODY, headers=SECRET_HEADERS,
                    **session_kwargs(server))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "blindbox.requests"]
    assert any("InvalidEnclaveCode" in r.getMessage() for r in warnings)
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("blindbox.testing")]
    assert ours and not any(SECRET in message for message in ours)
