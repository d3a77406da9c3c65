"""Error messages read once: one prefix, the cause once, what was expected and what was found.

Every fault mode of the fixture server is provoked through ``SecureSession``
exactly as a user meets it; the message the user reads is then checked for a
repeated prefix or a repeated clause (the sign of a cause wrapped into its own
wrapper's text) and for the expected/found pair.
"""

from __future__ import annotations

import re

import pytest
from requests.exceptions import ConnectTimeout

import blindbox.requests as br
from blindbox.errors import (
    AttestationError,
    BindingMismatchError,
    InsecureGuestPolicyError,
    InvalidEnclaveCode,
    NotAnEnclaveError,
    OriginRefusedError,
)
from blindbox.testing.server import Fault

from .requests_support import enclave, session_kwargs

#: The fault modes that make the eager attestation of ``SecureSession(...)`` fail, and how.
AT_CONNECT: dict[Fault, type[Exception]] = {
    Fault.WRONG_KEY: BindingMismatchError,
    Fault.NONCE_IGNORED: BindingMismatchError,
    Fault.DEBUG_POLICY: InsecureGuestPolicyError,
    Fault.OTHER_MEASUREMENT: InvalidEnclaveCode,
    Fault.CORRUPT_SIGNATURE: NotAnEnclaveError,
    Fault.TRUNCATED_REPORT: NotAnEnclaveError,
    Fault.HUGE_JSON: NotAnEnclaveError,
    Fault.MALFORMED_JSON: NotAnEnclaveError,
    Fault.NO_EVIDENCE: NotAnEnclaveError,
    Fault.SLOW_EVIDENCE: ConnectTimeout,
}
#: Fault modes met later: on a second connection, on a redirect, or never (handled by reconnecting).
LATER = {Fault.SWITCH_CERTIFICATE, Fault.REDIRECT_OTHER_ORIGIN, Fault.CLOSE_AFTER_EVIDENCE}


def assert_reads_once(message: str) -> None:
    """One prefix, no clause said twice, and both what was expected and what was found."""
    assert "\n" not in message, message
    prefix = message.split(":", 1)[0] + ":"
    assert message.count(prefix) == 1, f"prefix {prefix!r} repeated in: {message}"
    words = re.findall(r"[A-Za-z][\w.'-]*", message)
    clauses = [" ".join(words[i:i + 5]) for i in range(len(words) - 4)]
    repeated = {c for c in clauses if clauses.count(c) > 1}
    assert not repeated, f"{sorted(repeated)} said twice in: {message}"
    assert "expected" in message, message
    # "announced": what a server declared (a Content-Length) before anything was read.
    assert re.search(r"\b(found|announced)\b", message), message


def test_every_fault_mode_is_covered() -> None:
    assert set(AT_CONNECT) | LATER == set(Fault)


@pytest.mark.parametrize("fault", list(AT_CONNECT), ids=lambda f: f.value)
def test_a_refused_enclave_says_it_once(fault: Fault) -> None:
    timeout = {"timeout": 1} if fault is Fault.SLOW_EVIDENCE else {}
    with enclave(faults=[fault], slow_seconds=3) as server:
        with pytest.raises(AT_CONNECT[fault]) as info:
            br.SecureSession(server.url, **session_kwargs(server, **timeout))
    assert type(info.value) is AT_CONNECT[fault]
    assert_reads_once(str(info.value))
    cause = info.value.__cause__
    if isinstance(cause, AttestationError):
        assert str(cause) not in str(info.value)


def test_a_switched_certificate_says_it_once() -> None:
    with enclave(faults=[Fault.SWITCH_CERTIFICATE]) as server:
        with br.SecureSession(server.url, **session_kwargs(server)) as session:
            session.get_adapter(session.base_url).close()  # the next connection meets the other key
            with pytest.raises(BindingMismatchError) as info:
                session.get("/")
    assert_reads_once(str(info.value))


def test_a_cross_origin_redirect_says_it_once() -> None:
    with enclave(faults=[Fault.REDIRECT_OTHER_ORIGIN]) as server:
        with br.SecureSession(server.url, **session_kwargs(server)) as session:
            with pytest.raises(OriginRefusedError) as info:
                session.get("/")
    assert_reads_once(str(info.value))


def test_close_after_evidence_is_not_an_error() -> None:
    with enclave(faults=[Fault.CLOSE_AFTER_EVIDENCE]) as server:
        with br.SecureSession(server.url, **session_kwargs(server)) as session:
            assert session.get("/").status_code == 200


def test_the_checker_catches_a_rewrapped_cause() -> None:
    """Control: the message this module exists to prevent fails the check."""
    rewrapped = ("evidence: the connection to 127.0.0.1:1 failed during the evidence exchange "
                 "(evidence: expected HTTP 200 for GET /.well-known/blindbox/attestation, found 404)")
    with pytest.raises(AssertionError):
        assert_reads_once(rewrapped)
    with pytest.raises(AssertionError):
        assert_reads_once("report signature: does not verify under the VCEK")
