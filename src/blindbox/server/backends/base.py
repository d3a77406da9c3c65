"""The report-backend protocol and the evidence it returns.

A backend turns 64 bytes of report_data into an SEV-SNP ATTESTATION_REPORT
signed by the AMD secure processor, plus the certificate table the host
attached, exactly as the kernel handed them over. The backend proves nothing by
itself: clients verify the report. What every backend guarantees is that it
returns a well-formed report *for the report_data and VMPL asked for* (checked
here, so a stale or foreign report from a shared kernel interface is never
served), and a certificate table that parses strictly, or none.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from blindbox.errors import NotAnEnclaveError
from blindbox.server.backends.errors import MalformedEvidenceError, ReportRequestError
from blindbox.snp.certtable import CertTable, decode_cert_table
from blindbox.snp.report import REPORT_SIZE, AttestationReport

#: Size of REPORT_DATA, the caller's bytes the report signs.
REPORT_DATA_SIZE = 64
#: Highest VMPL a report can be requested for (TSM_PRIVLEVEL_MAX).
MAX_VMPL = 3


@dataclass(frozen=True)
class RawEvidence:
    """A report and its certificate table, byte for byte as the kernel gave them.

    ``report`` is the 1184-byte ATTESTATION_REPORT; ``cert_table`` the GHCB
    certificate table (empty when the host supplied none); ``table`` its
    strict parse (:func:`blindbox.snp.certtable.decode_cert_table`);
    ``backend`` the name of the backend that produced it.
    """

    report: bytes
    cert_table: bytes = b""
    backend: str = ""
    table: CertTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.report, bytes) or len(self.report) != REPORT_SIZE:
            found = len(self.report) if isinstance(self.report, bytes) else type(self.report).__name__
            raise MalformedEvidenceError(
                f"{self.backend or 'backend'}: expected a {REPORT_SIZE}-byte report, found {found}"
            )
        if not isinstance(self.cert_table, bytes):
            raise TypeError(f"cert_table: expected bytes, got {type(self.cert_table).__name__}")
        table = CertTable()
        if self.cert_table.strip(b"\x00"):
            try:
                table = decode_cert_table(self.cert_table)
            except NotAnEnclaveError as exc:
                raise MalformedEvidenceError(
                    f"{self.backend or 'backend'}: the host's certificate table is malformed ({exc}); "
                    "fix the certificates loaded on the host (snphost / the cloud's agent) or serve "
                    "certificates fetched from AMD KDS instead"
                ) from None
        object.__setattr__(self, "table", table)

    @property
    def certificates(self) -> Mapping[str, bytes]:
        """Known certificates of the table by name ("vcek"/"vlek", "ask"/"asvk", "ark")."""
        return self.table.certificates

    def __repr__(self) -> str:
        names = ",".join(sorted(self.certificates)) or "none"
        return f"RawEvidence(backend={self.backend!r}, report={len(self.report)} bytes, certificates={names})"


@runtime_checkable
class ReportBackend(Protocol):
    """Something that asks the AMD secure processor for a report."""

    @property
    def name(self) -> str:
        """Short name: "configfs-tsm", "sev-guest" or "simulator"."""
        ...

    def get_report(self, report_data: bytes, vmpl: int | None = None) -> RawEvidence:
        """A fresh report over exactly ``report_data`` (64 bytes), at ``vmpl`` when given."""
        ...


def check_request(backend: str, report_data: bytes, vmpl: int | None) -> bytes:
    """Validate a request's arguments; return report_data as bytes."""
    if not isinstance(report_data, (bytes, bytearray, memoryview)):
        raise TypeError(f"report_data: expected bytes, got {type(report_data).__name__}")
    data = bytes(report_data)
    if len(data) != REPORT_DATA_SIZE:
        raise ReportRequestError(
            f"{backend}: report_data must be exactly {REPORT_DATA_SIZE} bytes, got {len(data)}"
        )
    if vmpl is not None and (isinstance(vmpl, bool) or not isinstance(vmpl, int)
                             or not 0 <= vmpl <= MAX_VMPL):
        raise ReportRequestError(f"{backend}: vmpl must be an integer 0..{MAX_VMPL} or None, got {vmpl!r}")
    return data


def check_report(backend: str, report: bytes, report_data: bytes, vmpl: int | None) -> AttestationReport:
    """Parse ``report`` strictly and check it answers this request (report_data, VMPL)."""
    try:
        parsed = AttestationReport.from_bytes(report)
    except NotAnEnclaveError as exc:
        raise MalformedEvidenceError(f"{backend}: the kernel returned a malformed report ({exc})") from None
    if not hmac.compare_digest(parsed.report_data, report_data):
        raise MalformedEvidenceError(
            f"{backend}: the report carries report_data {parsed.report_data.hex()[:16]}..., not the "
            f"{report_data.hex()[:16]}... asked for: another request's report was returned; retry, and "
            "make sure no other process shares this report interface entry"
        )
    if vmpl is not None and parsed.vmpl != vmpl:
        raise MalformedEvidenceError(
            f"{backend}: asked for a report at VMPL {vmpl}, the report says {parsed.vmpl}"
        )
    return parsed
