"""Test support: a software SEV-SNP platform whose roots are trusted only when passed explicitly.

Nothing in BlindBox's verification paths imports this package. Reports signed
here verify only with ``verify_report(..., roots=platform.roots_pem())``. The
default platform signs with the shared PUBLIC test keys that ship with
blindbox (anyone can sign what their roots accept: loopback tests only);
:meth:`SoftwarePlatform.generate` makes fresh random keys.
:class:`EnclaveServer` serves protocol v1 evidence from :class:`LiveEvidence`
(fresh per nonce) or :class:`RecordedEvidence` (a committed fixture).
"""

from blindbox.testing.evidence import DEMO_MEASUREMENT, LiveEvidence
from blindbox.testing.fixture import RecordedEvidence
from blindbox.testing.platform import DEFAULT_CSP_ID, SignedReport, SoftwarePlatform
from blindbox.testing.report import DEFAULT_CPUID, DEFAULT_TCB, ReportFields, default_chip_id
from blindbox.testing.server import EnclaveServer, Fault, RecordedRequest

__all__ = [
    "DEMO_MEASUREMENT",
    "EnclaveServer",
    "Fault",
    "LiveEvidence",
    "RecordedEvidence",
    "RecordedRequest",
    "DEFAULT_CPUID",
    "DEFAULT_CSP_ID",
    "DEFAULT_TCB",
    "ReportFields",
    "SignedReport",
    "SoftwarePlatform",
    "default_chip_id",
]
