"""The transport adapter: every request goes to the attested origin over attested connections.

It installs the session's attested pool class in the pool manager *and* in
every proxy manager (``HTTPS_PROXY`` included), builds pool keys from the
origin rather than from the URL, ignores ``verify=``/CA bundles for the
enclave, and re-raises attestation failures with their exact type. The one
place ``verify=`` applies is the TLS connection to an ``https://`` proxy, which
is verified exactly as plain requests verifies it.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, HTTPAdapter
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, InvalidProxyURL, InvalidURL, ProxyError, SSLError
from requests.models import PreparedRequest, Response
from requests.utils import DEFAULT_CA_BUNDLE_PATH, prepend_scheme_if_needed, select_proxy
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import ConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.poolmanager import ProxyManager, proxy_from_url
from urllib3.util import parse_url
from urllib3.util.proxy import connection_requires_http_tunnel
from urllib3.util.ssl_ import create_urllib3_context

from blindbox.errors import AttestationError, ConfigurationError
from blindbox.requests.attestor import Attestor, ClientCert
from blindbox.requests.connection import AttestationAbort, attested_pool_class
from blindbox.requests.origin import Origin

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

log = logging.getLogger("blindbox.requests")

#: Where an ``https://`` proxy's certificate is verified against: ("file" | "dir", path), or None
#: for no verification (``verify=False``).
_ProxyTrust = tuple[str, str] | None


class AttestedAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` bound to one origin and one session's pins."""

    def __init__(self, origin: Origin, attestor: Attestor, **kwargs: Any) -> None:
        self.origin = origin
        self.attestor = attestor
        self._pool_cls = attested_pool_class(attestor)
        self._proxy_lock = threading.Lock()
        self._proxy_contexts: dict[_ProxyTrust, ssl.SSLContext] = {}
        self._tls_proxy_managers: dict[tuple[str, _ProxyTrust], ProxyManager] = {}
        super().__init__(**kwargs)

    # -- pool managers ----------------------------------------------------------------------------
    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        # A new dict: the default one is a module-level global shared by every PoolManager.
        self.poolmanager.pool_classes_by_scheme = {"https": self._pool_cls}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """The proxy manager for ``proxy``; an ``https://`` proxy is verified as with ``verify=True``."""
        return self._proxy_manager(proxy, True, **proxy_kwargs)

    def _proxy_manager(self, proxy: str, verify: bool | str | None, **proxy_kwargs: Any) -> Any:
        """A manager whose pools attest; the TLS to an ``https://`` proxy is verified under ``verify``.

        ``verify`` applies to the proxy hop only, exactly as in requests: True
        means requests' CA bundle, a path that bundle (or directory), False no
        verification. The enclave hop inside the tunnel never uses it. One
        manager per (proxy, trust), so a request never reuses a proxy
        connection verified under other trust.
        """
        if proxy.lower().startswith("socks"):
            raise ConfigurationError(
                f"proxy {proxy!r}: SOCKS proxies are not supported by SecureSession; use an HTTP "
                "CONNECT proxy (attestation stays end to end through the tunnel)"
            )
        if not proxy.lower().startswith("https:"):
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        else:
            trust = _proxy_trust(verify)
            with self._proxy_lock:
                manager = self._tls_proxy_managers.get((proxy, trust))
                if manager is None:
                    context = self._proxy_contexts.get(trust)
                    if context is None:
                        context = self._proxy_contexts[trust] = _proxy_context(trust)
                    manager = self._tls_proxy_managers[(proxy, trust)] = proxy_from_url(
                        proxy,
                        proxy_headers=self.proxy_headers(proxy),
                        proxy_ssl_context=context,
                        num_pools=getattr(self, "_pool_connections", DEFAULT_POOLSIZE),
                        maxsize=getattr(self, "_pool_maxsize", DEFAULT_POOLSIZE),
                        block=getattr(self, "_pool_block", DEFAULT_POOLBLOCK),
                        **proxy_kwargs,
                    )
        manager.pool_classes_by_scheme = {"https": self._pool_cls}
        return manager

    def get_connection_with_tls_context(
        self,
        request: PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: ClientCert = None,
    ) -> ConnectionPool:
        """As requests does, except that ``verify`` reaches only the TLS to an ``https://`` proxy."""
        proxy = select_proxy(cast(str, request.url), proxies)
        if not proxy:
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        try:
            host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        except ValueError as exc:
            raise InvalidURL(exc, request=request) from exc
        proxy = prepend_scheme_if_needed(proxy, "http")  # type: ignore[no-untyped-call]
        if not parse_url(proxy).host:
            raise InvalidProxyURL("Please check proxy URL. It is malformed and could be missing the host.")
        manager = self._proxy_manager(proxy, verify)
        return cast(ConnectionPool, manager.connection_from_host(**host_params, pool_kwargs=pool_kwargs))

    def build_connection_pool_key_attributes(
        self, request: PreparedRequest, verify: bool | str | None, cert: ClientCert = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        """Pool key from the attested origin (never from the URL) and the session's TLS context."""
        self.origin.check(request.url)
        host_params: _HostParams = {"scheme": "https", "host": self.origin.host, "port": self.origin.port}
        pool_kwargs: _PoolKwargs = {"ssl_context": self.attestor.context_for(cert), "cert_reqs": "CERT_NONE"}
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: ClientCert) -> None:
        """``verify=`` and CA bundles do not apply to the enclave: the attested pin is the only trust."""
        conn.cert_reqs = "CERT_NONE"
        conn.ca_certs = None
        conn.ca_cert_dir = None
        conn.cert_file = None
        conn.key_file = None

    def close(self) -> None:
        super().close()
        with self._proxy_lock:
            for manager in self._tls_proxy_managers.values():
                manager.clear()

    # -- sending ----------------------------------------------------------------------------------
    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        try:
            self.origin.check(request.url)
        except AttestationError as exc:
            exc.request = request
            log.warning("refused %s: %s", request.method, exc)
            raise
        try:
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                                proxies=proxies)
        except AttestationAbort as abort:
            error = abort.error
        # Raised outside the except block so the error keeps its own cause chain.
        error.request = request
        raise error

    def connect_origin(self, proxies: Mapping[str, str], timeout: float,
                       verify: bool | str | None = True) -> None:
        """Open and attest one connection to the origin without sending any request.

        The connection goes back to the pool, so the first request reuses it.
        ``verify`` is the session's, for an ``https://`` proxy only. Raises the
        attestation error itself, ``ConnectTimeout``, ``ProxyError`` or
        ``ConnectionError``, as a request would.
        """
        probe = PreparedRequest()  # what a GET of the origin's root would be (its URL is canonical)
        probe.prepare_method("GET")
        probe.url = self.origin.url + "/"
        probe.prepare_headers(None)
        probe.prepare_cookies(None)
        pool = self.get_connection_with_tls_context(probe, verify, proxies=proxies)
        if not isinstance(pool, HTTPSConnectionPool):
            raise ConfigurationError(
                f"expected an HTTPS pool for {self.origin.url}, got {type(pool).__name__}"
            )
        conn = pool._get_conn()
        conn.timeout = timeout
        tunnel = pool.proxy is not None and connection_requires_http_tunnel(
            pool.proxy, pool.proxy_config, "https"
        )
        try:
            if tunnel:
                pool._prepare_proxy(cast(HTTPSConnection, conn))
            else:
                conn.connect()
        except AttestationAbort as abort:
            conn.close()
            pool._put_conn(None)
            error: Exception = abort.error
        except (OSError, HTTPError) as exc:
            conn.close()
            pool._put_conn(None)
            error = _as_requests_error(exc, probe, proxied=pool.proxy is not None
                                       and not conn.has_connected_to_proxy)
            error.__cause__ = exc
        except BaseException:
            conn.close()
            pool._put_conn(None)
            raise
        else:
            pool._put_conn(conn)
            return
        if isinstance(error, AttestationError):
            error.request = probe
        raise error


def _as_requests_error(exc: OSError | HTTPError, request: PreparedRequest, *, proxied: bool) -> Exception:
    """The exception requests raises for this connect-time failure."""
    reason = _reason(exc)
    if isinstance(exc, (ConnectTimeoutError, TimeoutError)) and not isinstance(exc, NewConnectionError):
        return ConnectTimeout(reason, request=request)
    if isinstance(exc, Urllib3ProxyError) or proxied:
        return ProxyError(reason, request=request)
    if isinstance(exc, (ssl.SSLError, Urllib3SSLError)):
        return SSLError(reason, request=request)
    return RequestsConnectionError(reason, request=request)


def _reason(exc: OSError | HTTPError) -> str | OSError | HTTPError:
    """urllib3's message without the connection object it carries beside it (the cause keeps both)."""
    if isinstance(exc, HTTPError) and len(exc.args) == 2 and isinstance(exc.args[1], str):
        return exc.args[1]
    return exc


def _proxy_trust(verify: bool | str | None) -> _ProxyTrust:
    """What ``verify`` means for the proxy hop, as requests' ``cert_verify`` reads it.

    Stricter in one corner: only ``False`` turns verification off (requests also skips it for
    ``None`` and ``""``; here ``None`` means the default bundle and ``""`` is an invalid path).
    """
    if verify is False:
        return None
    location = DEFAULT_CA_BUNDLE_PATH if verify is True or verify is None else os.fspath(verify)
    if not location or not os.path.exists(location):
        raise OSError(f"Could not find a suitable TLS CA certificate bundle, invalid path: {location}")
    return ("dir" if os.path.isdir(location) else "file", location)


def _proxy_context(trust: _ProxyTrust) -> ssl.SSLContext:
    """The TLS context for an ``https://`` proxy: urllib3's defaults, with requests' trust."""
    if trust is None:
        return create_urllib3_context(cert_reqs=ssl.CERT_NONE)
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    kind, location = trust
    if kind == "dir":
        context.load_verify_locations(capath=location)
    else:
        context.load_verify_locations(cafile=location)
    return context
