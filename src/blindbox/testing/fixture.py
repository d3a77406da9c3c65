"""Recorded fixtures: a directory a user can commit, replayed byte for byte in CI.

Layout (format ``blindbox-fixture-v1``)::

    fixture.json    metadata: measurement, product, creation time, "simulated": true
    evidence.json   the protocol v1 evidence document exactly as served
    tls-cert.pem    the TLS certificate the evidence binds (no nonce: recorded)
    tls-key.pem     its private key (a TEST key: fixtures are not secrets)
    roots.pem       the test roots that signed the evidence — NOT AMD's; its header says
                    whether they are fresh keys or the shared PUBLIC test keys

A recorded fixture binds no nonce, so clients must use ``nonce=False``. It is
reproducible because it is committed: ``blindbox fixture create`` makes fresh
random test keys for each fixture unless asked for the shared test keys.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from blindbox._text import shown
from blindbox.attest.evidence import Evidence
from blindbox.errors import AttestationError, ConfigurationError
from blindbox.server.tls import TlsIdentity
from blindbox.snp.report import AttestationReport
from blindbox.testing.server import Fault

FORMAT = "blindbox-fixture-v1"
_FILES = ("fixture.json", "evidence.json", "tls-cert.pem", "tls-key.pem", "roots.pem")
#: Faults that need fresh evidence, which a recording cannot provide.
_NEEDS_LIVE = frozenset({Fault.WRONG_KEY, Fault.NONCE_IGNORED, Fault.DEBUG_POLICY, Fault.OTHER_MEASUREMENT})


class FixtureError(ConfigurationError):
    """A fixture directory that cannot be served as it is (missing files, metadata that
    contradicts the recorded report)."""


@dataclass(frozen=True)
class RecordedEvidence:
    """An evidence source that replays one recorded fixture and ignores nonces."""

    recorded: Evidence
    identity: TlsIdentity
    measurement: str
    roots_pem: str
    product: str

    @property
    def policy(self) -> bytes | None:
        return self.recorded.policy

    def evidence(self, *, spki_der: bytes, nonce: bytes | None, faults: frozenset[Fault]) -> Evidence:
        unsupported = faults & _NEEDS_LIVE
        if unsupported:
            names = ", ".join(sorted(f.value for f in unsupported))
            raise ValueError(f"recorded fixtures cannot simulate {names}; use live evidence")
        return self.recorded

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RecordedEvidence:
        """Read a fixture directory, checking its format, that every file is there and that the
        metadata says what the recorded report says (:class:`FixtureError` otherwise)."""
        root = Path(directory)
        missing = [name for name in _FILES if not (root / name).is_file()]
        if missing:
            raise FixtureError(f"fixture {root}: missing {', '.join(missing)}")
        try:
            meta = json.loads((root / "fixture.json").read_text())
            recorded = Evidence.from_json((root / "evidence.json").read_bytes())
            report = AttestationReport.from_bytes(recorded.report)
        except (ValueError, AttestationError) as exc:
            raise FixtureError(f"fixture {root}: unreadable ({shown(str(exc))})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else meta
            raise FixtureError(f"fixture {root}: expected format {FORMAT!r}, found {shown(repr(found))}")
        for key, actual in (("measurement", report.measurement.hex()),
                            ("product", report.product.value.lower() if report.product else None)):
            value = meta.get(key)
            if actual is not None and (not isinstance(value, str) or value.lower() != actual):
                raise FixtureError(
                    f"fixture {root}: fixture.json {key}: expected the recorded report's {actual}, "
                    f"found {shown(repr(value))}"
                )
        return cls(
            recorded=recorded,
            identity=TlsIdentity.load(root / "tls-cert.pem", root / "tls-key.pem"),
            measurement=report.measurement.hex(),
            roots_pem=(root / "roots.pem").read_text(),
            product=report.product.value.lower() if report.product else str(meta.get("product")),
        )

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the fixture directory (created if needed)."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "simulated": True,
            "note": "SIMULATED SEV-SNP evidence signed by BlindBox test roots, not by AMD. "
            "Trust roots.pem only in tests.",
            "measurement": self.measurement,
            "product": self.product,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (root / "fixture.json").write_text(json.dumps(meta, indent=2) + "\n")
        (root / "evidence.json").write_bytes(self.recorded.to_json())
        self.identity.save(root / "tls-cert.pem", root / "tls-key.pem")
        (root / "roots.pem").write_text(self.roots_pem)
        return root
