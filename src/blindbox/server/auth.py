"""Who may call the upstream: the data-owner policy's ``authentication`` rules, per request.

Security property: with ``authentication.required`` a request is admitted only
with a bearer token whose SHA-256 is listed, or over a connection whose TLS
client certificate has a listed SPKI SHA-256. Digests are compared with
:func:`hmac.compare_digest` against every listed value (no early exit). Two
``Authorization`` headers are refused as ambiguous, never resolved. Sans-IO:
the caller supplies the headers and, when asked for, the client's certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from blindbox.attest.binding import spki_of_certificate
from blindbox.attest.owner_policy import OwnerPolicy
from blindbox.errors import NotAnEnclaveError
from blindbox.server.framing import Refusal

#: RFC 6750 §2.1: ``Bearer`` (any case) 1*SP b64token.
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Principal:
    """An admitted caller: how it proved itself and the listed digest it matched."""

    kind: str  # "bearer" or "certificate"
    digest: str


def _match(digest: bytes, listed: Iterable[str]) -> str | None:
    """The listed digest equal to ``digest`` (hex), compared in constant time against each."""
    found = None
    hexed = digest.hex().encode("ascii")
    for candidate in listed:
        if hmac.compare_digest(hexed, candidate.encode("ascii")):
            found = candidate
    return found


class Authenticator:
    """The ``authentication`` section of an owner policy (or none: everyone admitted)."""

    def __init__(self, policy: OwnerPolicy | None) -> None:
        self._tokens: tuple[str, ...] = tuple(policy.bearer_token_sha256) if policy else ()
        self._spkis: tuple[str, ...] = tuple(policy.client_certificate_spki_sha256) if policy else ()
        self.required = bool(policy and policy.authentication_required)

    @property
    def wants_certificate(self) -> bool:
        """Whether a client certificate can admit a request (the policy lists SPKI digests)."""
        return self.required and bool(self._spkis)

    def bearer(self, headers: Headers) -> Principal | None:
        """The principal of the request's bearer token if it is listed, else None.

        Raises :class:`Refusal` (400) for more than one ``Authorization`` header.
        """
        values = [value for name, value in headers if name == b"authorization"]
        if len(values) > 1:
            raise Refusal(400, "more than one Authorization header")
        if not values or not self._tokens:
            return None
        match = _BEARER.fullmatch(values[0])
        if match is None:
            return None
        digest = _match(hashlib.sha256(match.group(1)).digest(), self._tokens)
        return Principal("bearer", digest) if digest is not None else None

    def certificate(self, cert_der: bytes | None) -> Principal | None:
        """The principal of a client certificate whose SPKI SHA-256 is listed, else None."""
        if not cert_der or not self._spkis:
            return None
        try:
            spki = spki_of_certificate(cert_der)
        except NotAnEnclaveError:
            return None
        digest = _match(hashlib.sha256(spki).digest(), self._spkis)
        return Principal("certificate", digest) if digest is not None else None
