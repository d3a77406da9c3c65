"""From SecureSession's keyword arguments to an appraisal policy, owner-policy requirements and roots.

This is the one place that decides *what* a session accepts. The sources, and
how they combine (never two sources for one decision):

- ``measurements=`` (with policy keywords such as ``debug=Rule.ANY``), or
- ``manifest=`` (a :class:`~blindbox.attest.manifest.Manifest`, a path, an
  ``https://`` URL, a dict or JSON text; ``manifest_signature=`` and
  ``publisher_key=`` verify a detached signature, ``manifest_name=`` (or
  ``BLINDBOX_MANIFEST_NAME``) names the product expected -- required with a
  publisher key -- and ``min_sequence=`` the oldest release accepted). A
  manifest is a complete appraisal policy, so measurements or policy keywords
  given with it are refused as ambiguous; edit the manifest's ``policy`` instead.
- With neither, the manifest named by ``BLINDBOX_MANIFEST``: a path or an
  ``https://`` URL only (inline JSON is refused: an environment variable is
  too easy to set from elsewhere to hold the policy itself). With nothing at
  all there is no secure answer: refused.
- ``expected_policy=``: requirements on the data-owner policy (an exact
  SHA-256, a :class:`~blindbox.attest.owner_policy.PolicyRequirements` or a
  dict of its fields). Refused when the manifest already states
  ``owner_policy`` requirements.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blindbox._text import redact_url, shown
from blindbox.attest.manifest import Manifest
from blindbox.attest.owner_policy import PolicyRequirements
from blindbox.attest.policy import AttestationPolicy
from blindbox.errors import ConfigurationError, ManifestError
from blindbox.snp.roots import TrustRoots, load_roots

log = logging.getLogger("blindbox.requests")

Measurements = str | bytes | Iterable[str | bytes]
Roots = str | bytes | os.PathLike[str] | TrustRoots
ManifestSource = Manifest | str | os.PathLike[str] | bytes | Mapping[str, Any]
ExpectedPolicy = str | PolicyRequirements | Mapping[str, Any]

DEFAULT_TIMEOUT = 30.0
#: Environment variable naming the manifest (path or https:// URL) used when nothing else is given.
MANIFEST_ENV = "BLINDBOX_MANIFEST"
#: Environment variable naming the product expected from a manifest when ``manifest_name=`` is not given.
MANIFEST_NAME_ENV = "BLINDBOX_MANIFEST_NAME"

NO_MEASUREMENT_HELP = (
    "no expected launch measurement: BlindBox will not send data to an enclave whose code it "
    "cannot check. Pass measurements=['<96 hex characters>'] (the SEV-SNP launch digest of the "
    "enclave image you trust, e.g. printed by `blindbox measure`), or manifest= (the enclave "
    "vendor's manifest: a path, an https:// URL or a dict), or set the environment variable "
    f"{MANIFEST_ENV} to a manifest's path or https:// URL"
)
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_REQUIREMENT_FIELDS = tuple(f.name for f in dataclasses.fields(PolicyRequirements))


@dataclass(frozen=True)
class Expectations:
    """What a session accepts: appraisal policy, data-owner policy requirements, and their manifest."""

    policy: AttestationPolicy
    requirements: PolicyRequirements | None
    manifest: Manifest | None


@functools.cache
def policy_field_names() -> frozenset[str]:
    """The AttestationPolicy keywords a session passes through (all but ``measurements``)."""
    return frozenset(f.name for f in dataclasses.fields(AttestationPolicy) if f.name != "measurements")


def build_expectations(
    *,
    measurements: Measurements | None,
    manifest: ManifestSource | None,
    manifest_signature: bytes | str | os.PathLike[str] | None,
    publisher_key: str | bytes | None,
    expected_policy: ExpectedPolicy | None,
    policy: Mapping[str, Any],
    caller: str,
    timeout: float = DEFAULT_TIMEOUT,
    manifest_name: str | None = None,
    min_sequence: int | None = None,
) -> Expectations:
    """Decide what the session accepts, or refuse (ConfigurationError; TypeError for unknown keywords).

    ``timeout`` bounds a manifest fetched from an ``https://`` URL. ``manifest_name`` defaults to
    ``BLINDBOX_MANIFEST_NAME``.
    """
    _check_policy_names(policy, caller)
    requirements = parse_expected_policy(expected_policy)
    origin = "manifest="
    if manifest is None and measurements is None:
        named = os.environ.get(MANIFEST_ENV, "").strip()
        if named:
            manifest, origin = _manifest_from_env(named), f"{MANIFEST_ENV}={describe_source(named)}"
    if manifest_name is None:
        manifest_name = os.environ.get(MANIFEST_NAME_ENV, "").strip() or None
    if manifest is None:
        given = [name for name, value in (("manifest_signature", manifest_signature),
                                          ("publisher_key", publisher_key), ("min_sequence", min_sequence))
                 if value is not None]
        if given:
            raise ConfigurationError(
                f"{caller}: {', '.join(given)} check a manifest, but no manifest was "
                f"given (pass manifest= or set {MANIFEST_ENV})"
            )
        return Expectations(build_policy(measurements, policy, caller=caller), requirements, None)
    if measurements is not None:
        raise ConfigurationError(
            f"{caller}: both measurements and a manifest were given; a manifest lists the accepted "
            "measurements itself, so the two would be ambiguous. Pass one of them"
        )
    if policy:
        raise ConfigurationError(
            f"{caller}: the manifest is the complete appraisal policy, so policy keyword(s) "
            f"{', '.join(map(repr, sorted(policy)))} given with it would be ambiguous; change the "
            "manifest's 'policy' member instead (e.g. Manifest.load(...).to_dict(), edited, as manifest=)"
        )
    loaded = _load_manifest(manifest, manifest_signature, publisher_key, manifest_name, min_sequence,
                            timeout, origin)
    stated = loaded.policy_requirements()
    if stated is not None and requirements is not None:
        raise ConfigurationError(
            f"{caller}: the manifest already states data-owner policy requirements (owner_policy), so "
            "expected_policy would be ambiguous; pass one of them"
        )
    log.debug("using manifest %r version %r sequence %d from %s (sha256 %s, %s)", shown(loaded.name),
              shown(loaded.version), loaded.sequence, origin if origin != "manifest=" else
              f"manifest={describe_source(manifest)}", loaded.sha256 or "n/a",
              "signature verified" if loaded.signed else "unsigned")
    return Expectations(loaded.attestation_policy(), stated or requirements, loaded)


def build_policy(measurements: Measurements | None, policy: Mapping[str, Any],
                 *, caller: str = "SecureSession") -> AttestationPolicy:
    """The AttestationPolicy for ``measurements``; unknown policy names are a TypeError naming them."""
    _check_policy_names(policy, caller)
    if measurements is None:
        raise ConfigurationError(f"{caller}: {NO_MEASUREMENT_HELP}")
    if isinstance(measurements, Collection) and not isinstance(measurements, (str, bytes)) \
            and not isinstance(measurements, Mapping) and not measurements:
        raise ConfigurationError(f"{caller}: measurements is empty; {NO_MEASUREMENT_HELP}")
    return AttestationPolicy.for_measurements(measurements, **policy)


def parse_expected_policy(value: ExpectedPolicy | None) -> PolicyRequirements | None:
    """``expected_policy=``: a SHA-256 (64 hex), a PolicyRequirements, or a dict of its fields."""
    if value is None or isinstance(value, PolicyRequirements):
        return value
    if isinstance(value, str):
        return PolicyRequirements(exact_digest=value.strip())
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(_REQUIREMENT_FIELDS))
        if unknown:
            raise ConfigurationError(
                f"expected_policy: unknown requirement(s) {', '.join(map(repr, unknown))}; "
                f"the fields are {', '.join(_REQUIREMENT_FIELDS)}"
            )
        return PolicyRequirements(**value)
    raise ConfigurationError(
        "expected_policy: expected the policy's SHA-256 (64 hex characters), a PolicyRequirements or a "
        f"dict of its fields, got {type(value).__name__}"
    )


def build_roots(roots: Roots | None) -> TrustRoots | None:
    """Caller-supplied anchors (which replace AMD's), or None for AMD's pinned roots.

    Certificate data (PEM text, PEM or DER bytes) is parsed, and each ARK's
    self-signature checked, once per process for identical input; a path is
    read on every call.
    """
    if roots is None:
        return None
    if isinstance(roots, bytes) or (isinstance(roots, str) and "-----BEGIN" in roots):
        return _load_roots_data(roots)
    return load_roots(roots)


@functools.lru_cache(maxsize=16)
def _load_roots_data(data: str | bytes) -> TrustRoots:
    return load_roots(data)


def check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _check_policy_names(policy: Mapping[str, Any], caller: str) -> None:
    unknown = sorted(set(policy) - policy_field_names())
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"attestation policy fields are: {', '.join(sorted(policy_field_names()))}"
        )


def describe_source(source: object) -> str:
    """A manifest source for messages and logs: a URL as ``scheme://host[:port]`` only (a pre-signed
    URL carries its token in the query), a path escaped, anything else by its kind."""
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return "JSON text"
    if isinstance(source, str) and _URL_RE.match(source):
        return redact_url(source)
    if isinstance(source, (str, os.PathLike)):
        return repr(shown(os.fspath(source)))
    return type(source).__name__


def _manifest_from_env(value: str) -> str:
    """``BLINDBOX_MANIFEST``: a path or an https:// URL; inline JSON is refused, not guessed at."""
    if value.startswith(("{", "[")):
        raise ConfigurationError(
            f"{MANIFEST_ENV}: expected a manifest's path or https:// URL, found inline JSON; put the "
            "manifest in a file (or pass it as manifest= in code) and name that file here"
        )
    return value


def _load_manifest(source: ManifestSource, signature: bytes | str | os.PathLike[str] | None,
                   publisher_key: str | bytes | None, name: str | None, min_sequence: int | None,
                   timeout: float, origin: str) -> Manifest:
    if isinstance(source, Manifest):
        if signature is not None or publisher_key is not None:
            raise ConfigurationError(
                "manifest: a loaded Manifest cannot be checked against manifest_signature/publisher_key "
                "(a signature covers exact bytes); pass the manifest's path, URL or bytes instead"
            )
        # Checked when it was loaded; the caller's identity and minimum still apply.
        source.check(name=name, min_sequence=min_sequence)
        return source
    try:
        return Manifest.load(source, signature=signature, publisher_key=publisher_key, name=name,
                             min_sequence=min_sequence, timeout=timeout)
    except ManifestError as exc:
        if origin.startswith(MANIFEST_ENV):
            raise type(exc)(f"{origin}: {exc}") from None
        raise

