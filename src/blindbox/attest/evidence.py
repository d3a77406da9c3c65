"""Protocol v1 evidence: the JSON document served at ``/.well-known/blindbox/attestation``.

Parsing is strict and bounded: at most 64 KiB, canonical padded base64, exact
types, duplicate keys refused. Unknown top-level members and unknown
certificate names are ignored (forward compatibility); missing required ones
are errors. Every failure is a :class:`~blindbox.errors.NotAnEnclaveError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from blindbox._text import shown
from blindbox.attest import strict_json
from blindbox.errors import NotAnEnclaveError
from blindbox.snp.certificate import MAX_CERTIFICATE_SIZE, MAX_PEM_SIZE
from blindbox.snp.report import REPORT_SIZE

EVIDENCE_PATH = "/.well-known/blindbox/attestation"
MAX_EVIDENCE_BYTES = 64 * 1024
PROTOCOL_VERSION = 1
TEE = "sev-snp"
CERTIFICATE_NAMES = ("vcek", "vlek", "ask", "asvk", "ark")
_NONCE_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Evidence:
    """One evidence document: the raw report, optional PEM certificates and policy bytes."""

    report: bytes
    certificates: Mapping[str, str] = field(default_factory=dict)
    policy: bytes | None = None

    def __repr__(self) -> str:
        """One line: sizes and names, never the report, certificate or policy bytes."""
        policy = "None" if self.policy is None else f"{len(self.policy)} bytes"
        return (f"Evidence(report={len(self.report)} bytes, certificates={sorted(self.certificates)}, "
                f"policy={policy})")

    def to_json(self) -> bytes:
        """Serialise per protocol v1."""
        doc: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "tee": TEE,
            "report": base64.b64encode(self.report).decode("ascii"),
        }
        if self.certificates:
            doc["certificates"] = dict(self.certificates)
        doc["policy"] = base64.b64encode(self.policy).decode("ascii") if self.policy is not None else None
        return json.dumps(doc, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, body: bytes) -> Evidence:
        """Parse and validate an evidence document received from a server."""
        if len(body) > MAX_EVIDENCE_BYTES:
            raise NotAnEnclaveError(
                f"evidence: expected at most {MAX_EVIDENCE_BYTES} bytes, found {len(body)}"
            )
        try:
            doc = strict_json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise NotAnEnclaveError(f"evidence: expected a JSON object, found invalid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise NotAnEnclaveError(f"evidence: expected a JSON object, found {type(doc).__name__}")
        version = _require(doc, "version")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise NotAnEnclaveError(f"evidence.version: expected 1, found {shown(repr(version), 40)}")
        tee = _require(doc, "tee")
        if tee != TEE:
            raise NotAnEnclaveError(f"evidence.tee: expected {TEE!r}, found {shown(repr(tee), 40)}")
        report = _b64(_require(doc, "report"), "report")
        if len(report) != REPORT_SIZE:
            raise NotAnEnclaveError(
                f"evidence.report: expected {REPORT_SIZE} bytes, found {len(report)}"
            )
        certificates: dict[str, str] = {}
        certs = doc.get("certificates")
        if certs is not None:
            if not isinstance(certs, dict):
                raise NotAnEnclaveError(
                    f"evidence.certificates: expected an object, found {type(certs).__name__}"
                )
            for name in CERTIFICATE_NAMES:
                value = certs.get(name)
                if value is None:
                    continue
                if not isinstance(value, str) or "-----BEGIN CERTIFICATE-----" not in value:
                    raise NotAnEnclaveError(
                        f"evidence.certificates.{name}: expected a PEM string, found {type(value).__name__}"
                    )
                if len(value) > MAX_PEM_SIZE:
                    raise NotAnEnclaveError(
                        f"evidence.certificates.{name}: expected at most {MAX_PEM_SIZE} characters of "
                        f"PEM (one certificate of at most {MAX_CERTIFICATE_SIZE} bytes), found {len(value)}"
                    )
                certificates[name] = value
        raw_policy = doc.get("policy")
        policy = None if raw_policy is None else _b64(raw_policy, "policy")
        return cls(report=report, certificates=certificates, policy=policy)



def _require(doc: dict[str, Any], name: str) -> Any:
    if name not in doc:
        raise NotAnEnclaveError(f"evidence.{name}: required member is missing")
    return doc[name]


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise NotAnEnclaveError(f"evidence.{name}: expected a base64 string, found {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NotAnEnclaveError(f"evidence.{name}: invalid standard base64 ({exc})") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise NotAnEnclaveError(f"evidence.{name}: expected canonical padded base64")
    return raw


def encode_nonce(nonce: bytes) -> str:
    """The ``nonce`` query value for 32 nonce bytes (64 lowercase hex characters)."""
    if len(nonce) != 32:
        raise ValueError(f"nonce: expected 32 bytes, got {len(nonce)}")
    return nonce.hex()


def decode_nonce(value: str) -> bytes:
    """Parse a ``nonce`` query value; anything but 64 lowercase hex is a ValueError."""
    if not _NONCE_RE.fullmatch(value):
        raise ValueError("nonce: expected 64 lowercase hex characters (32 bytes)")
    return bytes.fromhex(value)
