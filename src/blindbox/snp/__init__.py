"""Pure SEV-SNP knowledge: report ABI, TCB, policy bits, AMD roots, chain, signature.

Nothing here touches the network except :mod:`blindbox.snp.kds`.
"""

from blindbox.snp.certificate import AmdCertificate
from blindbox.snp.chain import CertificateChain
from blindbox.snp.extensions import KdsExtensions
from blindbox.snp.guest_policy import GuestPolicy
from blindbox.snp.kds import KdsClient
from blindbox.snp.platform_info import PlatformInfo
from blindbox.snp.product import Product
from blindbox.snp.report import AttestationReport, FirmwareVersion, SignerInfo, SigningKey
from blindbox.snp.roots import TrustRoots, amd_roots, load_roots
from blindbox.snp.tcb import TcbVersion
from blindbox.snp.verify import VerifiedReport, verify_report

__all__ = [
    "AmdCertificate",
    "AttestationReport",
    "CertificateChain",
    "FirmwareVersion",
    "GuestPolicy",
    "KdsClient",
    "KdsExtensions",
    "PlatformInfo",
    "Product",
    "SignerInfo",
    "SigningKey",
    "TcbVersion",
    "TrustRoots",
    "VerifiedReport",
    "amd_roots",
    "load_roots",
    "verify_report",
]
