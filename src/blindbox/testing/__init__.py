"""Test support: a software SEV-SNP platform whose roots are trusted only when passed explicitly.

Nothing in BlindBox's verification paths imports this package. Reports signed
here verify only with ``verify_report(..., roots=platform.roots_pem())``.
"""

from blindbox.testing._keys import DEFAULT_SEED
from blindbox.testing.platform import DEFAULT_CSP_ID, SignedReport, SoftwarePlatform
from blindbox.testing.report import DEFAULT_CPUID, DEFAULT_TCB, ReportFields, default_chip_id

__all__ = [
    "DEFAULT_CPUID",
    "DEFAULT_CSP_ID",
    "DEFAULT_SEED",
    "DEFAULT_TCB",
    "ReportFields",
    "SignedReport",
    "SoftwarePlatform",
    "default_chip_id",
]
