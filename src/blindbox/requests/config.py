"""From SecureSession's keyword arguments to an appraisal policy and trust roots.

This is the one place that decides *what* a session accepts, so a new source
of expectations (such as a manifest) is added here and nowhere else. Without
an expected measurement there is no secure answer, so it refuses.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping
from typing import Any

from blindbox.attest.policy import AttestationPolicy
from blindbox.errors import ConfigurationError
from blindbox.snp.roots import TrustRoots, load_roots

Measurements = str | bytes | Iterable[str | bytes]
Roots = str | bytes | os.PathLike[str] | TrustRoots

DEFAULT_TIMEOUT = 30.0

NO_MEASUREMENT_HELP = (
    "no expected launch measurement: BlindBox will not send data to an enclave whose code it "
    "cannot check. Pass measurements=['<96 hex characters>'] (the SEV-SNP launch digest of the "
    "enclave image you trust, e.g. printed by `blindbox measure`)"
)


def policy_field_names() -> frozenset[str]:
    """The AttestationPolicy keywords a session passes through (all but ``measurements``)."""
    return frozenset(f.name for f in dataclasses.fields(AttestationPolicy) if f.name != "measurements")


def build_policy(measurements: Measurements | None, policy: Mapping[str, Any],
                 *, caller: str = "SecureSession") -> AttestationPolicy:
    """The session's AttestationPolicy; unknown policy names are a TypeError naming them."""
    unknown = sorted(set(policy) - policy_field_names())
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"attestation policy fields are: {', '.join(sorted(policy_field_names()))}"
        )
    if measurements is None:
        raise ConfigurationError(f"{caller}: {NO_MEASUREMENT_HELP}")
    values = [measurements] if isinstance(measurements, (str, bytes)) else list(measurements)
    if not values:
        raise ConfigurationError(f"{caller}: measurements is empty; {NO_MEASUREMENT_HELP}")
    return AttestationPolicy.for_measurements(values, **policy)


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
