"""The appraisal policy: which genuine enclaves a caller is willing to talk to."""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from blindbox.errors import ConfigurationError, InsecureGuestPolicyError, InvalidEnclaveCode
from blindbox.snp.verify import VerifiedReport

MEASUREMENT_SIZE = 48


class Rule(enum.Enum):
    """A requirement on one boolean property: must be on, must be off, or don't care."""

    REQUIRED = "on"
    FORBIDDEN = "off"
    ANY = "any"

    def admits(self, value: bool) -> bool:
        return self is Rule.ANY or value is (self is Rule.REQUIRED)


def parse_measurement(value: str | bytes) -> bytes:
    """A launch measurement from 96 hex characters (any case) or 48 raw bytes."""
    if isinstance(value, bytes):
        raw = value
    else:
        text = value.strip().lower()
        if len(text) != 2 * MEASUREMENT_SIZE or any(c not in "0123456789abcdef" for c in text):
            raise ConfigurationError(
                f"measurement: expected {2 * MEASUREMENT_SIZE} hex characters, got {value!r}"
            )
        raw = bytes.fromhex(text)
    if len(raw) != MEASUREMENT_SIZE:
        raise ConfigurationError(f"measurement: expected {MEASUREMENT_SIZE} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class AttestationPolicy:
    """What a verified report must also satisfy. Defaults are the secure ones."""

    measurements: tuple[bytes, ...]
    debug: Rule = Rule.FORBIDDEN
    migrate_ma: Rule = Rule.FORBIDDEN

    @classmethod
    def for_measurements(cls, measurements: Iterable[str | bytes], **kwargs: Rule) -> AttestationPolicy:
        parsed = tuple(dict.fromkeys(parse_measurement(m) for m in measurements))
        if not parsed:
            raise ConfigurationError("measurements: expected at least one accepted launch measurement")
        return cls(measurements=parsed, **kwargs)

    def appraise(self, verified: VerifiedReport) -> None:
        """Raise the precise :class:`~blindbox.errors.AttestationError` subclass on the first failure."""
        report = verified.report
        if not any(hmac.compare_digest(report.measurement, m) for m in self.measurements):
            accepted = ", ".join(m.hex() for m in self.measurements)
            raise InvalidEnclaveCode(
                f"measurement: expected one of [{accepted}], found {report.measurement.hex()}"
            )
        if not self.debug.admits(report.policy.debug):
            raise InsecureGuestPolicyError(
                f"guest policy debug: expected {self.debug.value}, found "
                f"{'on' if report.policy.debug else 'off'} (policy 0x{report.policy.raw:x}); "
                "a debuggable guest's memory can be read by the host"
            )
        if not self.migrate_ma.admits(report.policy.migrate_ma):
            raise InsecureGuestPolicyError(
                f"guest policy migration agent: expected {self.migrate_ma.value}, found "
                f"{'on' if report.policy.migrate_ma else 'off'} (policy 0x{report.policy.raw:x})"
            )
