"""Module-level ``request/get/post/...``: requests' one-shot API, attesting the URL's origin.

Each call opens a :class:`SecureSession` for the URL's origin, sends one
request (its connection attests first) and closes the session, exactly as
``requests.get`` does with a plain session. Connecting and attesting are
bounded by the call's connect timeout, or by 30 s per step when it gives none
(``requests.get`` would wait for ever on a server that never answers). The
attestation keywords (``measurements``, ``manifest``, ``manifest_signature``,
``publisher_key``, ``manifest_name``, ``min_sequence``, ``expected_policy``,
``roots``, ``nonce`` and the policy fields) are taken out; everything else goes to ``Session.request``.
"""

from __future__ import annotations

import os
from typing import Any

from requests.models import Response
from urllib3.util import Timeout

from blindbox.requests.config import (
    DEFAULT_TIMEOUT,
    ExpectedPolicy,
    ManifestSource,
    Measurements,
    Roots,
    policy_field_names,
)
from blindbox.requests.origin import Origin
from blindbox.requests.session import SecureSession
from blindbox.snp.verify import KdsSource


class _OneShotSession(SecureSession):
    """A session for one call: the call's own request attests its connection (same checks)."""

    _caller = "blindbox.requests.request"

    def _attest_origin(self) -> None:
        return None


def _attestation_timeout(timeout: Any) -> float:
    """Seconds for connecting and attesting: the call's connect timeout, else the default."""
    if isinstance(timeout, Timeout):
        timeout = timeout.connect_timeout
    elif isinstance(timeout, tuple) and timeout:
        timeout = timeout[0]
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return float(timeout)
    return DEFAULT_TIMEOUT


def request(
    method: str | bytes,
    url: str | bytes,
    *,
    measurements: Measurements | None = None,
    manifest: ManifestSource | None = None,
    manifest_signature: bytes | str | os.PathLike[str] | None = None,
    publisher_key: str | bytes | None = None,
    manifest_name: str | None = None,
    min_sequence: int | None = None,
    expected_policy: ExpectedPolicy | None = None,
    roots: Roots | None = None,
    kds: KdsSource | None = None,
    nonce: bool = True,
    **kwargs: Any,
) -> Response:
    """Like ``requests.request``, but only to an attested enclave at the URL's origin.

    A non-``https://`` URL raises :class:`~blindbox.errors.OriginRefusedError`
    before anything is sent; attestation failures raise their exact
    :class:`~blindbox.errors.AttestationError` subclass. The attestation
    keywords are :class:`SecureSession`'s (``measurements`` or ``manifest``,
    ``expected_policy``, ``roots``, ``kds``, ``nonce``, policy fields).
    """
    target = url.decode("utf-8") if isinstance(url, bytes) else url
    origin = Origin.of_url(target)
    names = policy_field_names()
    policy = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
    with _OneShotSession(origin.url, measurements=measurements, manifest=manifest,
                         manifest_signature=manifest_signature, publisher_key=publisher_key,
                         manifest_name=manifest_name, min_sequence=min_sequence,
                         expected_policy=expected_policy, roots=roots, kds=kds, nonce=nonce,
                         timeout=_attestation_timeout(kwargs.get("timeout")), **policy) as session:
        return session.request(method=method, url=target, **kwargs)


def get(url: str | bytes, params: Any = None, **kwargs: Any) -> Response:
    """Like ``requests.get``, attested."""
    return request("get", url, params=params, **kwargs)


def options(url: str | bytes, **kwargs: Any) -> Response:
    """Like ``requests.options``, attested."""
    return request("options", url, **kwargs)


def head(url: str | bytes, **kwargs: Any) -> Response:
    """Like ``requests.head`` (no redirects by default), attested."""
    kwargs.setdefault("allow_redirects", False)
    return request("head", url, **kwargs)


def post(url: str | bytes, data: Any = None, json: Any = None, **kwargs: Any) -> Response:
    """Like ``requests.post``, attested."""
    return request("post", url, data=data, json=json, **kwargs)


def put(url: str | bytes, data: Any = None, **kwargs: Any) -> Response:
    """Like ``requests.put``, attested."""
    return request("put", url, data=data, **kwargs)


def patch(url: str | bytes, data: Any = None, **kwargs: Any) -> Response:
    """Like ``requests.patch``, attested."""
    return request("patch", url, data=data, **kwargs)


def delete(url: str | bytes, **kwargs: Any) -> Response:
    """Like ``requests.delete``, attested."""
    return request("delete", url, **kwargs)
