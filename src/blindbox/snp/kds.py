"""AMD Key Distribution Service (KDS) client: the only part of :mod:`blindbox.snp` on the network.

Nothing fetched is trusted. A VCEK is parsed and must be the one requested
(product, hwID and every SPL), and :func:`~blindbox.snp.verify.verify_report`
then walks its chain to a pinned root; a CRL counts only when the anchor of the
chain being checked signed it and it is current (:mod:`blindbox.snp.crl`).
Revocation fails closed: a CRL that cannot be fetched or verified is an error.

VCEKs are immutable, so they are cached on disk, written atomically (temporary
file then ``os.replace`` in the same directory, safe across processes) and
re-checked against their key whenever read; a cached file that does not check
out is deleted. CRLs are cached in memory and on disk but never used outside
``thisUpdate <= at < nextUpdate``. Layout under ``cache_dir`` (provision it by
hand for air-gapped use with ``offline=True``)::

    kds/vcek/<Product>/<hwid hex>/[fmc<n>_]bl<n>_tee<n>_snp<n>_uc<n>.der
    kds/crl/<vcek|vlek>/<Product>.crl

Every response size is bounded. HTTP 429 is honoured (Retry-After in seconds or
as an HTTP-date) with a bounded exponential backoff; 5xx and transport errors
are retried a bounded number of times; 404 and other 4xx never are. VLEKs
cannot be fetched: AMD gives them only to cloud providers, so a VLEK must come
with the evidence.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import hmac
import logging
import math
import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import platformdirs
import requests

from blindbox._http import read_bounded
from blindbox.errors import (
    AttestationError,
    ConfigurationError,
    NotAnEnclaveError,
    VerificationIncompleteError,
)
from blindbox.snp.certificate import AmdCertificate, load_all
from blindbox.snp.chain import CertificateChain
from blindbox.snp.crl import MAX_CRL_SIZE, RevocationList, check_revocation
from blindbox.snp.extensions import parse_extensions
from blindbox.snp.product import Product
from blindbox.snp.report import SigningKey
from blindbox.snp.tcb import TcbVersion

log = logging.getLogger("blindbox.snp.kds")

DEFAULT_BASE_URL = "https://kdsintf.amd.com"
#: Largest VCEK or cert_chain response accepted.
MAX_CERTIFICATE_RESPONSE = 64 * 1024
_MAX_RETRIES_LIMIT = 20
_BACKOFF_BASE_SECONDS = 2.0
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_SPL_PARAMETERS = {"fmc": "fmcSPL", "bootloader": "blSPL", "tee": "teeSPL", "snp": "snpSPL",
                   "microcode": "ucodeSPL"}
_SPL_SHORT = {"fmc": "fmc", "bootloader": "bl", "tee": "tee", "snp": "snp", "microcode": "uc"}


class KdsError(NotAnEnclaveError, VerificationIncompleteError):
    """AMD KDS did not deliver what was needed (missing, unavailable, oversized...)."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class KdsRateLimitedError(KdsError):
    """AMD KDS kept answering HTTP 429 beyond the retry and backoff budget."""


# ---------------------------------------------------------------------------- URLs


def _base(base_url: str) -> str:
    parts = urllib.parse.urlsplit(base_url)
    loopback = parts.hostname in _LOOPBACK_HOSTS
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigurationError(
            f"base_url: expected an https:// URL (http:// only on loopback), found {base_url!r}"
        )
    if not parts.hostname or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"base_url: expected scheme://host[:port][/path], found {base_url!r}")
    return base_url.rstrip("/")


def _family(signing_key: SigningKey) -> str:
    return "vlek" if signing_key is SigningKey.VLEK else "vcek"


def _hwid(product: Product, chip_id: bytes) -> bytes:
    """The hwID a VCEK is issued for: CHIP_ID, or its first 8 bytes on Turin."""
    size = product.hwid_length
    if len(chip_id) not in (size, 64):
        sizes = "64" if size == 64 else f"{size} or 64"
        raise NotAnEnclaveError(
            f"chip_id: expected {sizes} bytes for {product.value}, found {len(chip_id)}"
        )
    hwid, tail = bytes(chip_id[:size]), bytes(chip_id[size:])
    if any(tail):
        raise NotAnEnclaveError(
            f"chip_id: bytes {size}-63 must be zero on {product.value}, found {tail.hex()}"
        )
    if not any(hwid):
        raise NotAnEnclaveError("chip_id: all zero (masked); no VCEK can be fetched for it")
    return hwid


def _check_layout(product: Product, tcb: TcbVersion) -> None:
    if product.has_fmc != (tcb.fmc is not None):
        expected = "with" if product.has_fmc else "without"
        raise NotAnEnclaveError(
            f"tcb: expected the {product.value} layout ({expected} an FMC SPL), found {tcb}"
        )


def vcek_url(product: Product, chip_id: bytes, tcb: TcbVersion, *,
             base_url: str = DEFAULT_BASE_URL) -> str:
    """The KDS URL of the VCEK for this chip and TCB.

    Milan/Genoa: ``{base}/vcek/v1/{P}/{hex(chip_id)}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=``;
    Turin: ``{base}/vcek/v1/Turin/{hex(chip_id[:8])}?fmcSPL=&blSPL=&teeSPL=&snpSPL=&ucodeSPL=``.
    """
    hwid = _hwid(product, chip_id)
    _check_layout(product, tcb)
    query = "&".join(f"{_SPL_PARAMETERS[name]}={value}" for name, value in tcb.components().items())
    return f"{_base(base_url)}/vcek/v1/{product.kds_name}/{hwid.hex()}?{query}"


def cert_chain_url(product: Product, signing_key: SigningKey = SigningKey.VCEK, *,
                   base_url: str = DEFAULT_BASE_URL) -> str:
    """The KDS URL of the PEM ASK+ARK (VCEK) or ASVK+ARK (VLEK) chain."""
    return f"{_base(base_url)}/{_family(signing_key)}/v1/{product.kds_name}/cert_chain"


def crl_url(product: Product, signing_key: SigningKey = SigningKey.VCEK, *,
            base_url: str = DEFAULT_BASE_URL) -> str:
    """The KDS URL of the DER CRL covering the VCEK (ASK) or VLEK (ASVK) chain."""
    return f"{_base(base_url)}/{_family(signing_key)}/v1/{product.kds_name}/crl"


# ---------------------------------------------------------------------------- disk cache


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers (any process) see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_bounded_file(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when missing, unreadable or larger than ``limit`` (then deleted)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("KDS cache: cannot read %s (%s); ignoring it", path, exc)
        return None
    if len(data) > limit:
        _discard(path, f"larger than {limit} bytes")
        return None
    return data


def _discard(path: Path, reason: str) -> None:
    log.warning("KDS cache: discarding %s: %s", path, reason)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("KDS cache: cannot delete %s (%s)", path, exc)


# ---------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class _Retry:
    reason: str
    retry_after: float | None = None
    rate_limited: bool = False


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())



# ---------------------------------------------------------------------------- client


class KdsClient:
    """Fetches VCEKs and checks revocation against AMD KDS (implements ``KdsSource``).

    ``offline=True`` never touches the network: only the cache under
    ``cache_dir`` is used, and a miss says which file (and URL) was needed.
    ``max_retries`` bounds the retries of one request and
    ``max_backoff_seconds`` the total time slept for it; ``sleep`` is
    injectable for tests.
    """

    def __init__(
        self,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool = False,
        session: requests.Session | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_backoff_seconds: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (isinstance(max_retries, int) and 0 <= max_retries <= _MAX_RETRIES_LIMIT):
            raise ConfigurationError(f"max_retries: expected 0..{_MAX_RETRIES_LIMIT}, found {max_retries!r}")
        if not (math.isfinite(max_backoff_seconds) and max_backoff_seconds >= 0):
            raise ConfigurationError(
                f"max_backoff_seconds: expected a finite number >= 0, found {max_backoff_seconds!r}"
            )
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"timeout: expected a finite number > 0, found {timeout!r}")
        root = Path(cache_dir) if cache_dir is not None else Path(platformdirs.user_cache_dir("blindbox"))
        self._cache = root / "kds"
        self._offline = offline
        self._session = session if session is not None else requests.Session()
        self._base_url = _base(base_url)
        self._timeout = timeout
        self._max_retries = max_retries
        self._max_backoff = float(max_backoff_seconds)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._crls: dict[tuple[Product, SigningKey], bytes] = {}

    # -- VCEK

    def vcek(self, product: Product, chip_id: bytes, tcb: TcbVersion) -> AmdCertificate:
        """The VCEK for this chip and TCB, from the cache or KDS; parsed and matched, not yet trusted."""
        url = vcek_url(product, chip_id, tcb, base_url=self._base_url)
        hwid = _hwid(product, chip_id)
        name = "_".join(f"{_SPL_SHORT[k]}{v}" for k, v in tcb.components().items())
        path = self._cache / "vcek" / product.kds_name / hwid.hex() / f"{name}.der"
        cached = _read_bounded_file(path, MAX_CERTIFICATE_RESPONSE)
        if cached is not None:
            try:
                cert = AmdCertificate.from_der(cached)
                _check_vcek(cert, product, hwid, tcb)
            except NotAnEnclaveError as exc:
                _discard(path, str(exc))
            else:
                return cert
        if self._offline:
            raise KdsError(
                f"offline: the {product.value} VCEK for chip {hwid.hex()[:16]}... ({tcb}) is not "
                f"cached at {path}; it would be fetched from {url}", url
            )
        data = self._get(url, MAX_CERTIFICATE_RESPONSE, "VCEK")
        try:
            cert = AmdCertificate.from_der(data)
            _check_vcek(cert, product, hwid, tcb)
        except NotAnEnclaveError as exc:
            raise KdsError(f"KDS: unusable VCEK from {url}: {exc}", url) from None
        try:
            _write_atomic(path, data)
        except OSError as exc:
            log.warning("KDS cache: cannot write %s (%s)", path, exc)
        return cert

    # -- certificate chain

    def cert_chain(self, product: Product,
                   signing_key: SigningKey = SigningKey.VCEK) -> tuple[AmdCertificate, AmdCertificate]:
        """AMD's (ASK or ASVK, ARK) for ``product`` as KDS serves them: parsed, never anchors."""
        url = cert_chain_url(product, signing_key, base_url=self._base_url)
        if self._offline:
            raise KdsError(f"offline: the cert_chain is not cached; it would be fetched from {url}", url)
        data = self._get(url, MAX_CERTIFICATE_RESPONSE, "cert_chain")
        try:
            certs = load_all(data) if b"-----BEGIN" in data else []
        except NotAnEnclaveError as exc:
            raise KdsError(f"KDS: unusable cert_chain from {url}: {exc}", url) from None
        expected = (f"SEV-VLEK-{product.value}" if signing_key is SigningKey.VLEK
                    else f"SEV-{product.value}", f"ARK-{product.value}")
        found = tuple(c.common_name for c in certs)
        if found != expected:
            raise KdsError(
                f"KDS: expected a PEM cert_chain {' then '.join(expected)} from {url}, "
                f"found {', '.join(found) or 'no certificate'}",
                url,
            )
        return certs[0], certs[1]

    # -- revocation

    def check_revocation(self, chain: CertificateChain, at: _dt.datetime) -> None:
        """Fail closed unless a current CRL signed by ``chain``'s anchor lists neither chain certificate."""
        if at.tzinfo is None:
            raise ValueError("at: expected a timezone-aware datetime")
        product = chain.anchor.product or parse_extensions(chain.leaf).product
        leaf_name = chain.leaf.common_name
        if leaf_name not in ("SEV-VCEK", "SEV-VLEK"):
            raise NotAnEnclaveError(f"revocation: expected a SEV-VCEK or SEV-VLEK leaf, found {leaf_name!r}")
        signing_key = SigningKey.VLEK if leaf_name == "SEV-VLEK" else SigningKey.VCEK
        check_revocation(self._current_crl(product, signing_key, chain, at), chain, at)

    def _current_crl(self, product: Product, signing_key: SigningKey, chain: CertificateChain,
                     at: _dt.datetime) -> RevocationList:
        """A CRL verified under ``chain``'s anchor and current at ``at``: cached if one is, else fetched."""
        anchor = chain.anchor.certificate
        url = crl_url(product, signing_key, base_url=self._base_url)
        path = self._cache / "crl" / _family(signing_key) / f"{product.kds_name}.crl"
        key = (product, signing_key)
        reason = f"none cached at {path}"
        for source in ("memory", "disk"):
            if source == "memory":
                with self._lock:
                    data = self._crls.get(key)
            else:
                data = _read_bounded_file(path, MAX_CRL_SIZE)
            if data is None:
                continue
            try:
                crl = _verified_crl(data, anchor, at)
            except NotAnEnclaveError as exc:
                reason = f"the cached one ({source}, {path}) is unusable: {exc}"
                continue
            with self._lock:
                self._crls[key] = data
            return crl
        family = _family(signing_key).upper()
        if self._offline:
            raise KdsError(
                f"offline: no current {product.value} {family} CRL at {at.isoformat()}: {reason}; "
                f"it would be fetched from {url}", url
            )
        data = self._get(url, MAX_CRL_SIZE, "CRL")
        try:
            crl = _verified_crl(data, anchor, at)
        except NotAnEnclaveError as exc:
            raise KdsError(
                f"KDS: the {product.value} {family} CRL from {url} is refused: {exc}", url
            ) from None
        with self._lock:
            self._crls[key] = data
        try:
            _write_atomic(path, data)
        except OSError as exc:
            log.warning("KDS cache: cannot write %s (%s)", path, exc)
        return crl

    # -- HTTP with bounded retries

    def _get(self, url: str, limit: int, what: str) -> bytes:
        """GET ``url``: at most ``max_retries`` retries and ``max_backoff_seconds`` of sleep in total."""
        waited = 0.0
        attempts = 0
        while True:
            attempts += 1
            outcome = self._attempt(url, limit, what)
            if isinstance(outcome, bytes):
                return outcome
            remaining = self._max_backoff - waited
            if attempts > self._max_retries:
                raise self._give_up(url, what, outcome, attempts, waited)
            if outcome.retry_after is not None:
                delay = outcome.retry_after
                if delay > remaining:
                    reason = (f"{outcome.reason} with Retry-After {delay:.0f} s, more than the "
                              f"{remaining:.0f} s left of max_backoff_seconds")
                    raise self._give_up(url, what, replace(outcome, reason=reason), attempts, waited)
            elif remaining > 0:
                delay = min(_BACKOFF_BASE_SECONDS * 2 ** (attempts - 1), remaining)
            else:
                raise self._give_up(url, what, outcome, attempts, waited)
            log.debug("KDS: %s for %s; retrying in %.1f s", outcome.reason, url, delay)
            self._sleep(delay)
            waited += delay

    def _give_up(self, url: str, what: str, outcome: _Retry, attempts: int, waited: float) -> KdsError:
        budget = f"{attempts} attempt(s), {waited:.0f} s waited (max_retries={self._max_retries}, " \
                 f"max_backoff_seconds={self._max_backoff:g})"
        if outcome.rate_limited:
            return KdsRateLimitedError(
                f"KDS rate limited: {what} request {url} still answered {outcome.reason} after {budget}",
                url,
            )
        return KdsError(
            f"KDS unavailable: {what} request {url} failed ({outcome.reason}) after {budget}", url
        )

    def _attempt(self, url: str, limit: int, what: str) -> bytes | _Retry:
        log.debug("KDS: GET %s", url)
        try:
            response = self._session.get(url, timeout=self._timeout, stream=True, allow_redirects=False)
        except AttestationError:
            raise
        except (requests.ConnectionError, requests.Timeout) as exc:
            return _Retry(f"transport error {type(exc).__name__}")
        except requests.RequestException as exc:
            raise KdsError(f"KDS: {what} request {url} failed: {type(exc).__name__}: {exc}", url) from None
        with response:
            status = response.status_code
            if status == 200:
                try:
                    body = read_bounded(response, limit)
                except AttestationError:
                    raise
                except (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ContentDecodingError) as exc:
                    return _Retry(f"transport error {type(exc).__name__} while reading")
                if body is None:
                    raise KdsError(f"KDS: {what} response from {url} exceeds {limit} bytes; refused", url)
                return body
            if status == 429:
                return _Retry("HTTP 429", _parse_retry_after(response.headers.get("Retry-After")), True)
            if 500 <= status <= 599:
                return _Retry(f"HTTP {status}", _parse_retry_after(response.headers.get("Retry-After")))
        if status == 404:
            raise KdsError(f"KDS has no {what} at {url} (HTTP 404 Not Found; not retried)", url)
        raise KdsError(f"KDS: {what} request {url} answered HTTP {status}; not retried", url)


def _verified_crl(data: bytes, anchor: AmdCertificate, at: _dt.datetime) -> RevocationList:
    crl = RevocationList.from_der(data)
    crl.verify_signed_by(anchor)
    crl.check_current(at)
    return crl


def _check_vcek(cert: AmdCertificate, product: Product, hwid: bytes, tcb: TcbVersion) -> None:
    """Require ``cert`` to be the VCEK of this product, hwID and TCB."""
    if cert.common_name != "SEV-VCEK":
        raise NotAnEnclaveError(f"VCEK: expected subject CN 'SEV-VCEK', found {cert.common_name!r}")
    ext = parse_extensions(cert)
    if ext.product is not product:
        raise NotAnEnclaveError(f"VCEK: expected product {product.value}, found {ext.product_name!r}")
    if ext.csp_id is not None or ext.hwid is None or not hmac.compare_digest(ext.hwid, hwid):
        found = ext.hwid.hex()[:16] + "..." if ext.hwid is not None else "none"
        raise NotAnEnclaveError(f"VCEK: expected hwID {hwid.hex()[:16]}..., found {found}")
    if ext.spls() != tcb.components():
        found_tcb = " ".join(f"{k}={v}" for k, v in ext.spls().items())
        raise NotAnEnclaveError(f"VCEK: expected TCB {tcb}, found {found_tcb}")
