"""SecureSession: a ``requests.Session`` that only talks to one attested enclave origin."""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import requests
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, BaseAdapter, HTTPAdapter
from requests.models import PreparedRequest, Request, Response
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies

from blindbox._text import redact_url
from blindbox.attest.manifest import Manifest
from blindbox.attest.verifier import Attestation
from blindbox.errors import ConfigurationError, OriginRefusedError
from blindbox.requests.adapter import AttestedAdapter
from blindbox.requests.attestor import Attestor
from blindbox.requests.config import (
    DEFAULT_TIMEOUT,
    ExpectedPolicy,
    ManifestSource,
    Measurements,
    Roots,
    build_expectations,
    build_roots,
    check_timeout,
)
from blindbox.requests.origin import Origin
from blindbox.snp.verify import KdsSource

if TYPE_CHECKING:
    from requests.sessions import _Settings

log = logging.getLogger("blindbox.requests")
_merge = cast(Callable[[Any, Any], Any], merge_setting)

#: Whether urllib reads proxy settings from the environment alone (on macOS and Windows it also
#: reads system settings, which no snapshot of the environment covers).
_PROXIES_FROM_ENVIRONMENT = os.supports_bytes_environ and sys.platform != "darwin"


class SecureSession(requests.Session):
    """A ``requests.Session`` whose every byte goes to an attested SEV-SNP enclave at ``addr``.

    Construction connects and attests eagerly, raising
    :class:`~blindbox.errors.NotAnEnclaveError`,
    :class:`~blindbox.errors.InvalidEnclaveCode` (or another
    :class:`~blindbox.errors.AttestationError`) when the server is not an
    enclave the caller accepts. Afterwards every new connection's TLS key must
    be one attested in this session (a new key is attested on its own
    connection first). Paths are relative to ``addr``; other origins, plain
    HTTP and cross-origin redirects raise
    :class:`~blindbox.errors.OriginRefusedError` before anything is sent.

    What is accepted comes from exactly one source:

    - ``measurements``: accepted launch measurements (hex), with ``**policy``
      :class:`~blindbox.attest.policy.AttestationPolicy` fields such as
      ``debug=Rule.ANY``; or
    - ``manifest``: the enclave vendor's manifest (a
      :class:`~blindbox.attest.manifest.Manifest`, a path, an ``https://``
      URL, a dict or JSON text), checked against ``manifest_signature`` by
      ``publisher_key`` when one is pinned; then ``manifest_name`` (or
      ``BLINDBOX_MANIFEST_NAME``) must name the product expected, and the
      manifest's sequence may not fall below ``min_sequence`` nor below the
      highest this user verified before (docs/manifest.md). Its appraisal policy and
      ``owner_policy`` requirements apply; measurements or policy fields
      given as well are refused as ambiguous (edit the manifest instead);
    - with neither, the manifest named by the ``BLINDBOX_MANIFEST``
      environment variable; with nothing,
      :class:`~blindbox.errors.ConfigurationError`.

    ``expected_policy``: requirements on the enclave's data-owner policy -- its
    exact SHA-256 (64 hex), a
    :class:`~blindbox.attest.owner_policy.PolicyRequirements` or a dict of its
    fields; an enclave that does not meet them raises
    :class:`~blindbox.errors.PolicyMismatchError` while connecting, before any
    request byte is sent. ``roots``: PEM text/bytes or a path whose ARKs
    replace AMD's pinned roots. ``kds``: a
    :class:`~blindbox.snp.kds.KdsClient` to check AMD's revocation lists for
    every attested chain (failing closed when a current CRL cannot be had) and
    to fetch a VCEK the evidence lacks; without it, no request goes to AMD and
    the evidence must carry its VCEK or VLEK. ``nonce=False`` for recorded evidence that
    cannot answer a fresh nonce. ``timeout``: seconds allowed for each step
    of opening a connection -- TCP connect, TLS handshake, attestation
    exchange -- when a request gives no connect timeout (``timeout=(connect,
    read)`` or a number); also for the eager connection and a manifest fetch.
    Running out raises ``requests.exceptions.ConnectTimeout`` naming the step.

    ``cert=`` (per request, or ``session.cert``) is presented only to a TLS key
    already attested in this session, when the enclave asks for it by TLS 1.3
    post-handshake authentication; handshakes never carry it.
    """

    _caller: ClassVar[str] = "SecureSession"

    def __init__(
        self,
        addr: str,
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
        timeout: float = DEFAULT_TIMEOUT,
        **policy: Any,
    ) -> None:
        seconds = check_timeout(timeout)
        expectations = build_expectations(
            measurements=measurements, manifest=manifest, manifest_signature=manifest_signature,
            publisher_key=publisher_key, expected_policy=expected_policy, policy=policy,
            caller=self._caller, timeout=seconds, manifest_name=manifest_name, min_sequence=min_sequence,
        )
        attestation_policy = expectations.policy
        origin = Origin.parse(addr)
        attestor = Attestor(attestation_policy, build_roots(roots), nonce=bool(nonce), timeout=seconds,
                            requirements=expectations.requirements, kds=kds)
        self._attestor: Attestor | None = None  # requests' default adapters are never mounted
        self._environment: tuple[object, tuple[dict[str, str], str | None]] | None = None
        super().__init__()
        self._origin = origin
        self._manifest = expectations.manifest
        self._attestor = attestor
        self._adapter = AttestedAdapter(origin, attestor)
        self.adapters.clear()
        self.mount("https://", self._adapter)
        self.mount("http://", self._adapter)  # so plain-HTTP URLs are refused, never sent
        log.debug("SecureSession for %s: %d accepted measurement(s)%s, %s roots, nonce %s, %s",
                  origin.url, len(attestation_policy.measurements),
                  "" if expectations.manifest is None else f" from manifest {expectations.manifest.name!r}",
                  "AMD" if roots is None else "caller-supplied", "on" if nonce else "off",
                  "data-owner policy requirements" if expectations.requirements is not None
                  else "no data-owner policy requirements")
        try:
            self._attest_origin()
        except BaseException:
            self.close()
            raise

    def _attest_origin(self) -> None:
        """Connect to the origin and attest it now, without sending any request."""
        settings = self.merge_environment_settings(self._origin.url, {}, None, None, None)
        self._adapter.connect_origin(settings["proxies"], self._adapter.attestor.timeout,
                                     verify=settings["verify"])

    def merge_environment_settings(self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> _Settings:
        """As ``requests.Session`` does, reading the environment once per change of it.

        The environment's proxies (for the URL's host) and CA bundle are kept
        with an exact copy of the environment they came from and looked up
        again whenever it differs, so the eager attestation and the first
        request do not both scan it. Where urllib also reads system proxy
        settings (macOS, Windows), every call looks them up as requests does.
        """
        if not (self.trust_env and _PROXIES_FROM_ENVIRONMENT and isinstance(url, str)):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        no_proxy = proxies.get("no_proxy") if proxies is not None else None
        key = (url.split("/", 3)[:3], no_proxy, dict(os.environb))
        memo = self._environment
        if memo is not None and memo[0] == key:
            env_proxies, env_bundle = memo[1]
        else:
            env_proxies = get_environ_proxies(url, no_proxy=no_proxy)
            env_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            self._environment = (key, (env_proxies, env_bundle))
        if proxies is not None:
            for name, value in env_proxies.items():
                proxies.setdefault(name, value)
        if verify is True or verify is None:
            verify = env_bundle or verify
        return {"proxies": _merge(proxies, self.proxies), "stream": _merge(stream, self.stream),
                "verify": _merge(verify, self.verify), "cert": _merge(cert, self.cert)}

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a SecureSession cannot be pickled: its pins belong to this process's connections")

    # -- what was verified ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The attested origin, ``https://host[:port]``."""
        return self._origin.url

    @property
    def manifest(self) -> Manifest | None:
        """The manifest this session's expectations come from (None when given measurements)."""
        return self._manifest

    @property
    def attestation(self) -> Attestation:
        """What was verified about the enclave (the first attested TLS key), for display and audit.

        Never None: the session attested its origin when it was constructed. A
        session holding no attestation (its pins were dropped) attests the origin
        again on this access, raising the attestation error when that fails.
        """
        found = self._adapter.attestor.attestations
        if not found:
            self._attest_origin()
            found = self._adapter.attestor.attestations
        return found[0]

    @property
    def attestations(self) -> tuple[Attestation, ...]:
        """One attestation per distinct TLS key met (several replicas behind one address)."""
        return self._adapter.attestor.attestations

    # -- requests.Session overrides ---------------------------------------------------------------
    def prepare_request(self, request: Request) -> PreparedRequest:
        """Paths and relative references resolve against the attested origin."""
        if request.url is not None:
            resolved = self._origin.resolve(request.url)
            if resolved != request.url:
                request = copy.copy(request)
                request.url = resolved
        return super().prepare_request(request)

    def send(self, request: PreparedRequest, **kwargs: Any) -> Response:
        """Send on an attested connection; any URL off the origin is refused first."""
        try:
            self._origin.check(request.url)
        except OriginRefusedError as exc:
            exc.request = request
            log.warning("refused %s: %s", request.method, exc)
            raise
        return super().send(request, **kwargs)

    def get_adapter(self, url: str) -> BaseAdapter:
        adapter = super().get_adapter(url)
        if not isinstance(adapter, AttestedAdapter) or adapter.attestor is not self._attestor:
            raise ConfigurationError(
                f"the adapter for {redact_url(url)} is not this SecureSession's attested adapter; "
                "SecureSession sends only over attested connections"
            )
        return adapter

    def mount(self, prefix: str | bytes, adapter: BaseAdapter) -> None:
        """Only attested adapters of this session are mounted.

        A plain ``requests.adapters.HTTPAdapter`` (the usual way to set retries
        and pool sizes) is replaced by an attested adapter with the same
        settings; any other adapter class is refused, since it could send data
        without attestation.
        """
        if self._attestor is None:
            return  # requests.Session.__init__ mounting its plain adapters: skipped
        if type(adapter) is HTTPAdapter:
            adapter = self._adopt(adapter)
        if not isinstance(adapter, AttestedAdapter) or adapter.attestor is not self._attestor:
            raise ConfigurationError(
                f"cannot mount {type(adapter).__name__} on a SecureSession: it could send data "
                "without attestation. Mount a plain HTTPAdapter (its retries and pool sizes are "
                "kept) or set them on session.get_adapter(session.base_url)"
            )
        super().mount(prefix, adapter)

    def _adopt(self, plain: HTTPAdapter) -> AttestedAdapter:
        """An attested adapter with a plain HTTPAdapter's retries and pool settings."""
        attestor = self._attestor
        if attestor is None:
            raise ConfigurationError("SecureSession is not initialised")
        adopted = AttestedAdapter(
            self._origin, attestor,
            pool_connections=getattr(plain, "_pool_connections", DEFAULT_POOLSIZE),
            pool_maxsize=getattr(plain, "_pool_maxsize", DEFAULT_POOLSIZE),
            max_retries=plain.max_retries,
            pool_block=getattr(plain, "_pool_block", DEFAULT_POOLBLOCK),
        )
        plain.close()
        log.debug("mounted an attested adapter with the given HTTPAdapter's settings")
        return adopted
