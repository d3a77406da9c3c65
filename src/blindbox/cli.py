"""The ``blindbox`` command line.

Each subcommand is a pair of functions: ``_add_<name>`` declares its arguments
and ``_cmd_<name>`` runs it and returns 0 or, for ``attest``, 1 when a check
failed. Every other outcome is an exception, and :func:`main` alone turns it
into the exit status (:data:`EXIT_STATUSES`, the same contract for every
command) and one line on stderr, with server- and file-supplied text escaped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from blindbox import __version__
from blindbox._argtypes import parse_at
from blindbox._text import redact_url, shown
from blindbox.errors import (
    AttestationError,
    ConfigurationError,
    ManifestTrustError,
    NotAnEnclaveError,
    OriginRefusedError,
    VerificationIncompleteError,
)
from blindbox.server.backends.errors import ReportBackendError
from blindbox.snp.certificate import AmdCertificate, load_all
from blindbox.snp.describe import describe, render_text
from blindbox.snp.product import Product
from blindbox.snp.report import AttestationReport, SigningKey
from blindbox.snp.verify import CertificateInput, verify_report

if TYPE_CHECKING:
    from blindbox.attest.evidence import Evidence
    from blindbox.attest.owner_policy import PolicyRequirements
    from blindbox.attest.policy import AttestationPolicy
    from blindbox.attest.verifier import Assessment, Attestation
    from blindbox.requests.attestor import Attestor
    from blindbox.requests.origin import Origin
    from blindbox.snp.roots import TrustRoots
    from blindbox.snp.verify import KdsSource

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNTRUSTED_INPUT = 3
EXIT_INCOMPLETE = 4
EXIT_INTERRUPTED = 130

#: The exit statuses of every ``blindbox`` command: one contract a script can rely on.
EXIT_STATUSES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "verified (measure, fixture: done; serve: stopped cleanly)"),
    (EXIT_REFUSED, "refused: the evidence is not genuine, the enclave runs other code, or a policy "
                   "or requirement is not met"),
    (EXIT_USAGE, "usage error or unreadable input"),
    (EXIT_UNTRUSTED_INPUT, "a trust input failed verification: the manifest's signature, identity, "
                           "freshness or rollback check"),
    (EXIT_INCOMPLETE, "could not complete: network, AMD KDS, offline cache miss, no usable report "
                      "interface (neither verified nor refused)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)
EXIT_EPILOG = "exit status (the same for every command):\n" + "\n".join(
    f"{code} {meaning}" for code, meaning in EXIT_STATUSES
)

#: Upper bound on any input file: a report is 1184 bytes, a PEM of ARK+ASK+ASVK ~7 KiB.
_MAX_INPUT = 64 * 1024

Handler = Callable[[argparse.Namespace], int]


class _UsageError(Exception):
    """Bad arguments or unreadable input: exit status 2."""


#: Exception type -> exit status, first match wins (subclasses before their bases). Network
#: failures that reach here untyped are "could not complete"; other OSErrors are unreadable input.
_EXIT_FOR: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    (KeyboardInterrupt, EXIT_INTERRUPTED),
    (_UsageError, EXIT_USAGE),
    (VerificationIncompleteError, EXIT_INCOMPLETE),
    (ManifestTrustError, EXIT_UNTRUSTED_INPUT),
    (ConfigurationError, EXIT_USAGE),
    (AttestationError, EXIT_REFUSED),
    (ReportBackendError, EXIT_INCOMPLETE),
    ((requests.RequestException, ConnectionError, TimeoutError, socket.gaierror), EXIT_INCOMPLETE),
    (OSError, EXIT_USAGE),
)


def exit_status(error: BaseException) -> int | None:
    """The exit status for ``error`` under :data:`EXIT_STATUSES`, or None for an unexpected error."""
    for kinds, status in _EXIT_FOR:
        if isinstance(error, kinds):
            return status
    return None


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, keeping the epilog's lines: one exit status a line, wrapped under itself."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            code, _, meaning = line.partition(" ")
            if code.isdigit():
                lines.append(textwrap.fill(meaning, width, initial_indent=f"{indent}  {code:<4} ",
                                           subsequent_indent=f"{indent}{'':7}"))
            else:
                lines.append(super()._fill_text(line, width, indent))
        return "\n".join(lines)


def _read_input(name: str, limit: int, what: str, *, evidence: bool = False) -> bytes:
    """Read at most ``limit`` bytes from a path (or stdin for ``-``); more is refused unread.

    Too much ``evidence`` (a report, a certificate) is evidence refused; too much of anything
    else is unreadable input.
    """
    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with Path(name).open("rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise _UsageError(f"cannot read {what} {name!r}: {exc.strerror or exc}") from None
    if len(data) > limit:
        refused = NotAnEnclaveError if evidence else _UsageError
        raise refused(f"{what}: expected at most {limit} bytes, found more in {name!r}")
    return data


def _chain_certificates(data: bytes) -> dict[str, CertificateInput]:
    """Sort a chain file's certificates into the ``ask``/``asvk``/``ark`` slots.

    These are only candidates: verify_report accepts an ASK/ASVK when a pinned
    ARK signed it and never takes an ARK from here as an anchor.
    """
    out: dict[str, CertificateInput] = {}
    for cert in load_all(data):
        if cert.common_name in ("SEV-VCEK", "SEV-VLEK"):
            kind = cert.common_name.removeprefix("SEV-")
            raise _UsageError(f"--chain: holds a {kind}; pass the signing certificate with --cert")
        if cert.subject_der == cert.issuer_der:
            role = "ark"
        elif cert.common_name.startswith("SEV-VLEK-"):
            role = "asvk"
        else:
            role = "ask"
        if role in out:
            raise _UsageError(f"--chain: expected at most one {role.upper()}, found several")
        out[role] = cert
    return out


def _kds_client(offline: bool) -> KdsSource:
    from blindbox.snp.kds import KdsClient  # the only module that touches the network

    return KdsClient(offline=offline, on_fetch=_say_fetching)


def _say_fetching(what: str, url: str) -> None:
    print(f"blindbox verify: fetching {what} from {url} (use --cert/--chain to verify offline)",
          file=sys.stderr)


def _subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser with the common exit-status epilog and its own name for error lines."""
    parser = sub.add_parser(name, epilog=EXIT_EPILOG, formatter_class=_HelpFormatter, **kwargs)
    parser.set_defaults(prog=parser.prog)
    return parser


def _say(*lines: str) -> None:
    """Print each line escaped (:func:`~blindbox._text.shown`): no control character a report,
    certificate, manifest, fixture or server chose reaches the terminal, and a newline inside a
    value is shown as ``\\x0a``, never taken as a new line."""
    for line in lines:
        print(shown(line, limit=None))


def _escaped(value: Any) -> Any:
    """``value`` (JSON-like) with every string escaped, for text rendered line by line."""
    if isinstance(value, str):
        return shown(value, limit=None)
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _subcommand(
        sub, "verify",
        help="check that a raw SEV-SNP report was signed by genuine AMD hardware",
        description=(
            "Verify a raw 1184-byte SEV-SNP attestation report: layout and must-be-zero fields, "
            "the VCEK/VLEK against the report (product, TCB, chip id), the chain to AMD's pinned "
            "roots, validity dates and the ECDSA signature. Without --cert the VCEK is fetched "
            "from AMD KDS (or its cache with --offline) and revocation is checked; with --cert "
            "no network is used and revocation is not checked."
        ),
    )
    parser.add_argument("report", metavar="REPORT", help="raw report file, or - for stdin")
    parser.add_argument("--cert", metavar="VCEK_OR_VLEK", help="the signing certificate (DER or PEM)")
    parser.add_argument("--chain", metavar="PEM",
                        help="ASK/ASVK (and ARK, never used as an anchor) as candidate intermediates")
    parser.add_argument("--at", metavar="ISO_DATE", type=parse_at,
                        help="check certificate validity at this time instead of now (UTC if no offset)")
    parser.add_argument("--offline", action="store_true",
                        help="use only cached KDS responses (when --cert is not given)")
    parser.add_argument("--product", choices=[p.value.lower() for p in Product],
                        help="product line; needed to fetch the VCEK of a v2 report (no CPUID)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    product = Product.from_name(args.product) if args.product else None
    parsed: AttestationReport | None = None
    try:
        raw = _read_input(args.report, _MAX_INPUT, "report", evidence=True)
        cert_data = _read_input(args.cert, _MAX_INPUT, "certificate", evidence=True) if args.cert else None
        chain_data = _read_input(args.chain, _MAX_INPUT, "chain", evidence=True) if args.chain else None
        parsed = AttestationReport.from_bytes(raw, product)
        certificates: dict[str, CertificateInput] = {}
        if chain_data is not None:
            certificates.update(_chain_certificates(chain_data))
        if cert_data is not None:
            leaf = AmdCertificate.load(cert_data)
            certificates["vlek" if leaf.common_name == "SEV-VLEK" else "vcek"] = leaf
        elif (parsed.product is None and parsed.signing_key is SigningKey.VCEK
              and not parsed.chip_id_masked):
            raise _UsageError(
                f"report: a v{parsed.version} report carries no CPUID, so its VCEK cannot be fetched "
                "without the product: pass --product milan|genoa|turin, or the VCEK with --cert"
            )
        kds = None if cert_data is not None else _kds_client(args.offline)
        verified = verify_report(parsed, certificates=certificates or None, at=args.at,
                                 kds=kds, product=product)
    except AttestationError as exc:
        if isinstance(exc, VerificationIncompleteError) and not args.cert:
            _add_hint(exc, "AMD KDS could not be used; pass the VCEK with --cert (and the ASK with --chain) "
                           "to verify offline")
        if args.json:
            failed = describe(parsed) if parsed is not None else {"report": None, "verification": None}
            error = {"type": type(exc).__name__, "message": str(exc), "exit_status": exit_status(exc)}
            print(json.dumps({"verified": False, **failed, "error": error}, indent=2))
        raise
    if args.json:
        print(json.dumps({"verified": True, **describe(verified)}, indent=2))
    else:
        print(render_text(_escaped(describe(verified))), end="")
    return EXIT_OK


def _add_attest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _subcommand(
        sub, "attest",
        help="attest a live server and show every check with what was expected and found",
        description=(
            "Connect to URL over TLS (no WebPKI: the key is trusted only if the evidence binds it), "
            "fetch its protocol v1 evidence on that connection with a fresh nonce, and run every check "
            "a SecureSession runs: genuine SEV-SNP evidence, the binding to this TLS key and nonce, the "
            "appraisal policy (from --measurement or --manifest, else the manifest named by "
            "BLINDBOX_MANIFEST) and the data-owner policy requirements. Each check is printed with its "
            "verdict; when the evidence is not genuine the others are listed as not evaluated. "
            "HTTPS_PROXY and NO_PROXY apply exactly as for a SecureSession (an HTTP CONNECT tunnel, "
            "attestation end to end through it); --no-proxy ignores them. Exit status 1 when any "
            "check failed."
        ),
    )
    parser.add_argument("url", metavar="URL", help="the server: https://host[:port] or host[:port]")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--manifest", metavar="FILE_OR_URL",
                        help="the enclave's manifest (a path or an https:// URL)")
    source.add_argument("--measurement", action="append", metavar="HEX",
                        help="an accepted launch measurement (96 hex characters); repeat for several")
    parser.add_argument("--manifest-signature", metavar="FILE_OR_URL",
                        help="detached signature of the manifest (needs --publisher-key)")
    parser.add_argument("--publisher-key", metavar="PEM",
                        help="the manifest publisher's public key (PEM file) the signature must verify under")
    parser.add_argument("--manifest-name", metavar="NAME",
                        help="the product the manifest must name (needed with --publisher-key; default: "
                             "BLINDBOX_MANIFEST_NAME)")
    parser.add_argument("--min-sequence", type=int, metavar="N",
                        help="refuse a manifest with a lower sequence")
    parser.add_argument("--roots", metavar="PEM",
                        help="trust these roots INSTEAD of AMD's (e.g. a SIMULATED fixture's roots.pem)")
    parser.add_argument("--no-nonce", action="store_true",
                        help="send no nonce: needed for recorded evidence (a fixture), which cannot "
                        "answer one (replay is then possible)")
    parser.add_argument("--expected-policy", metavar="DIGEST",
                        help="the data-owner policy's SHA-256 (64 hex) the server must serve")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="connection and evidence exchange timeout")
    parser.add_argument("--no-proxy", action="store_true",
                        help="connect directly, ignoring HTTPS_PROXY/NO_PROXY (and the other proxy "
                        "variables requests reads)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(handler=_cmd_attest)


_VERDICT_LABELS = {"pass": "pass", "warn": "WARN", "fail": "FAIL"}


def _cmd_attest(args: argparse.Namespace) -> int:
    from blindbox.requests.config import MANIFEST_ENV, build_expectations, build_roots, check_timeout
    from blindbox.requests.origin import Origin

    named = os.environ.get(MANIFEST_ENV, "").strip()
    if args.measurement is None and args.manifest is None and not named:
        raise _UsageError(
            "no expected launch measurement: pass --measurement HEX (repeatable) or --manifest "
            f"FILE_OR_URL, or set {MANIFEST_ENV} to a manifest's path or https:// URL"
        )
    try:
        origin = Origin.parse(args.url)
    except OriginRefusedError as exc:  # e.g. http://: what was typed, not what a server did
        raise _UsageError(str(exc)) from None
    timeout = check_timeout(args.timeout)
    key = _read_input(args.publisher_key, _MAX_INPUT, "publisher key") if args.publisher_key else None
    roots = build_roots(_read_input(args.roots, _MAX_INPUT, "roots")) if args.roots else None
    expectations = build_expectations(
        measurements=args.measurement, manifest=args.manifest, manifest_signature=args.manifest_signature,
        publisher_key=key, expected_policy=args.expected_policy, policy={}, caller="blindbox attest",
        timeout=timeout, manifest_name=args.manifest_name, min_sequence=args.min_sequence,
    )
    seen = _Seen()
    attestor = _assessing_attestor(seen, expectations.policy, roots, nonce=not args.no_nonce, timeout=timeout,
                                   requirements=expectations.requirements)
    header: dict[str, Any] = {
        "url": origin.url,
        "roots": {"amd": roots is None, "source": args.roots},
        "manifest": None if expectations.manifest is None else {
            "name": expectations.manifest.name, "version": expectations.manifest.version,
            "sha256": expectations.manifest.sha256, "signed": expectations.manifest.signed,
        },
    }
    try:
        assessment = _attest_live(origin, attestor, seen, timeout, use_proxy_env=not args.no_proxy)
    except VerificationIncompleteError as exc:
        if args.json:
            print(json.dumps({**header, "nonce": None, "checks": [], "passed": False, "attestation": None,
                              "error": str(exc)}, indent=2))
        raise
    nonce = seen.nonce
    if args.json:
        print(json.dumps({**header, "nonce": nonce.hex() if nonce is not None else None,
                          "checks": assessment.to_dict(), "passed": assessment.passed,
                          "attestation": assessment.summary()}, indent=2))
    else:
        _print_assessment(header, nonce, assessment, nonce_asked=attestor.use_nonce)
    return EXIT_OK if assessment.passed else EXIT_REFUSED


def _network_reason(error: BaseException) -> str:
    """What failed, said once: the first cause below requests' and urllib3's wrappers (whose own
    text nests reprs of connection objects)."""
    cause: BaseException = error
    while type(cause).__module__.partition(".")[0] in ("requests", "urllib3"):
        inner = cause.__cause__ or next((a for a in cause.args if isinstance(a, BaseException)), None)
        if inner is None:
            break
        cause = inner
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause)


def _attest_live(origin: Origin, attestor: Attestor, seen: _Seen, timeout: float, *,
                 use_proxy_env: bool) -> Assessment:
    """Attest ``origin`` on one connection opened exactly as a SecureSession opens it.

    The session's own adapter and proxy resolution (``HTTPS_PROXY``, ``NO_PROXY``,
    ``REQUESTS_CA_BUNDLE`` for an ``https://`` proxy) are used, so a CONNECT tunnel is
    attested end to end; ``use_proxy_env=False`` connects directly. Nothing but the
    evidence request is sent. Raises :class:`VerificationIncompleteError` when the server
    (or the proxy) cannot be reached or stops answering.
    """
    from requests.utils import select_proxy

    from blindbox.requests.adapter import AttestedAdapter

    environment = requests.Session()
    environment.trust_env = use_proxy_env
    settings = environment.merge_environment_settings(origin.url, {}, None, None, None)
    environment.close()
    adapter = AttestedAdapter(origin, attestor)
    try:
        adapter.connect_origin(settings["proxies"], timeout, verify=settings["verify"])
    except _Assessed:
        pass
    except NotAnEnclaveError as exc:  # no evidence to assess: no certificate, no (complete) answer
        seen.assessment = attestor.assess(exc, spki_der=None, nonce=seen.nonce)
    except AttestationError:  # a refusal, not a network failure (though also a RequestException)
        raise
    except requests.RequestException as exc:
        proxy = select_proxy(origin.url, settings["proxies"])
        via = f" through the proxy {redact_url(proxy)}" if proxy else ""  # never its credentials
        raise VerificationIncompleteError(
            f"cannot attest {origin.url}{via}: {type(exc).__name__}: {_network_reason(exc)}"
        ) from exc
    finally:
        adapter.close()
    if seen.assessment is None:
        raise VerificationIncompleteError(f"cannot attest {origin.url}: no evidence was assessed")
    return seen.assessment


class _Assessed(AttestationError):
    """Ends the connection after an assessment that failed (the CLI reports every check)."""


@dataclass
class _Seen:
    """What ``blindbox attest``'s attestor sent and found."""

    nonce: bytes | None = None
    assessment: Assessment | None = None


def _assessing_attestor(seen: _Seen, policy: AttestationPolicy, roots: TrustRoots | None, *, nonce: bool,
                        timeout: float, requirements: PolicyRequirements | None) -> Attestor:
    """A session's attestor that runs every check (``assess``) where a session stops at the first
    failure, recording in ``seen`` the nonce it sent and the assessment it made. (Built here, so
    that the other commands do not import the requests layer.)"""
    from blindbox.requests.attestor import Attestor
    from blindbox.requests.exchange import Deadline

    class AssessingAttestor(Attestor):
        def new_nonce(self) -> bytes | None:
            seen.nonce = super().new_nonce()
            return seen.nonce

        def verify(self, evidence: Evidence, *, spki_der: bytes, nonce: bytes | None,
                   deadline: Deadline | None = None) -> Attestation:
            if deadline is not None:
                deadline.check("verification")
            seen.assessment = self.assess(evidence, spki_der=spki_der, nonce=nonce)
            attestation = seen.assessment.attestation
            if attestation is None:
                raise _Assessed("evidence assessed: a check failed")
            return attestation

    return AssessingAttestor(policy, roots, nonce=nonce, timeout=timeout, requirements=requirements)


def _print_assessment(header: dict[str, Any], nonce: bytes | None, assessment: Assessment, *,
                      nonce_asked: bool) -> None:
    """The table, through :func:`_say`: manifest text and the server's error text are chosen by others."""
    from blindbox.attest.verifier import NOT_EVALUATED

    lines = [f"blindbox attest {header['url']}"]
    if header["roots"]["amd"]:
        lines.append("roots: AMD's pinned roots")
    else:
        lines.append(f"roots: {header['roots']['source']} -- NOT AMD's: a pass shows only that these roots "
                     "vouch for the evidence (e.g. a SIMULATED fixture), not that AMD hardware produced it")
    manifest = header["manifest"]
    if manifest is not None:
        signed = "signature verified" if manifest["signed"] else "unsigned"
        lines.append(f"manifest: {manifest['name']} {manifest['version']} "
                     f"(sha256 {manifest['sha256'] or 'n/a'}, {signed})")
    if nonce is not None:
        lines.append(f"nonce: {nonce.hex()}")
    else:
        lines.append("nonce: " + ("not sent (no evidence request was made)" if nonce_asked
                                  else "none (replayed evidence would pass)"))
    rows = assessment.verdicts()
    width = max(len("CHECK"), *(len(check.name) for check, _ in rows))
    labels = [_VERDICT_LABELS.get(verdict, verdict) for _, verdict in rows]
    label_width = max(len("VERDICT"), *(len(label) for label in labels))
    indent = " " * (label_width + width + 4)
    lines += ["", f"{'VERDICT':<{label_width}}  {'CHECK':<{width}}  EXPECTED / FOUND"]
    for (check, verdict), label in zip(rows, labels, strict=True):
        lines.append(f"{label:<{label_width}}  {check.name:<{width}}  expected  {check.expected}")
        if verdict != NOT_EVALUATED:
            lines.append(f"{indent}found     {check.found}")
        if verdict == "fail" and check.reason:
            lines.append(f"{indent}why       {check.reason}")
        if verdict == "warn" and check.warning:
            lines.append(f"{indent}warning   {check.warning}")
    summary = assessment.summary()
    if summary is not None:
        lines += ["", "attestation:"]
        key_width = max(len(key) for key in summary)
        lines += [f"  {key:<{key_width}}  {value}" for key, value in summary.items()]
    failed = [check.name for check in assessment.failures]
    skipped = len(rows) - assessment.evaluated
    warned = sum(verdict == "warn" for _, verdict in rows)
    if assessment.passed:
        result = f"PASS: all {len(rows)} checks passed" + (f" ({warned} with a warning)" if warned else "")
    else:
        result = f"FAIL: {len(failed)} of {len(rows)} checks failed ({', '.join(failed)})"
        if skipped:
            result += f", {skipped} not evaluated"
    lines += ["", f"result: {result}"]
    _say(*lines)


def _load_app(spec: str) -> Any:
    """Import ``module:attr`` (a WSGI app) for ``fixture serve --app``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise _UsageError(f"--app: expected module:attribute, found {spec!r}")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise _UsageError(f"--app {spec!r}: {exc}") from None


def _add_measure(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _subcommand(
        sub, "measure",
        help="compute the SEV-SNP launch measurement of a guest image (sev-snp-measure)",
        description=(
            "Compute the launch digest an SEV-SNP guest will report, from its OVMF (and optional "
            "direct-boot kernel, initrd and command line). An OVMF without SEV-SNP metadata is "
            "refused (exit status 2). --manifest writes a manifest measurement entry recording every input."
        ),
    )
    parser.add_argument("--ovmf", required=True, metavar="FILE", help="OVMF firmware image")
    parser.add_argument("--kernel", metavar="FILE", help="kernel for measured direct boot")
    parser.add_argument("--initrd", metavar="FILE", help="initrd (needs --kernel)")
    parser.add_argument("--append", metavar="CMDLINE", help="kernel command line (needs --kernel)")
    parser.add_argument("--vcpus", required=True, type=int, metavar="N", help="number of vCPUs")
    parser.add_argument("--vcpu-type", metavar="TYPE",
                        help="QEMU vCPU model, e.g. EPYC-Milan (required for --vmm qemu)")
    parser.add_argument("--vmm", choices=["qemu", "ec2", "gce"], default="qemu")
    parser.add_argument("--guest-features", metavar="X", type=lambda v: int(v, 0), default=0x1,
                        help="VMSA SEV features, e.g. 0x1 (default) or 0x21")
    parser.add_argument("--manifest", metavar="OUT",
                        help="write a manifest measurement entry (JSON) with the inputs to OUT")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the hex")
    parser.set_defaults(handler=_cmd_measure)


def _cmd_measure(args: argparse.Namespace) -> int:
    from blindbox.attest.manifest import manifest_entry
    from blindbox.attest.measure import measure

    result = measure(args.ovmf, vcpus=args.vcpus, vcpu_type=args.vcpu_type, vmm=args.vmm,
                     kernel=args.kernel, initrd=args.initrd, append=args.append,
                     guest_features=args.guest_features)
    entry = manifest_entry(result)
    if args.manifest:
        Path(args.manifest).write_text(json.dumps(entry, indent=2) + "\n")
    print(json.dumps(entry, indent=2) if args.json else result.hex)
    return EXIT_OK


def _add_fixture(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _subcommand(
        sub, "fixture",
        help="create or serve a recorded, SIMULATED enclave fixture for tests and CI",
        description=(
            "Recorded fixtures replay SIMULATED SEV-SNP evidence signed by BlindBox's test roots "
            "(never AMD's). Clients trust them only when given the fixture's roots.pem "
            "explicitly, and must use nonce=False (blindbox attest --no-nonce) since a recording "
            "answers no fresh nonce."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = _subcommand(actions, "create", help="write a recorded fixture directory")
    create.add_argument("--measurement", required=True, metavar="HEX",
                        help="launch measurement the simulated enclave reports (96 hex characters)")
    create.add_argument("--product", choices=[p.value.lower() for p in Product], default="milan")
    create.add_argument("--policy", metavar="FILE",
                        help="data-owner policy document whose exact bytes the evidence binds")
    create.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="the fixture directory; an existing file or non-empty directory is "
                        "refused unless --force")
    create.add_argument("--force", action="store_true",
                        help="write into an existing non-empty directory, replacing the fixture's files")
    create.add_argument("--shared-test-keys", action="store_true",
                        help="sign with blindbox's shared PUBLIC test keys instead of fresh random keys "
                        "(anyone can then sign evidence that the fixture's roots accept)")
    create.set_defaults(handler=_cmd_fixture_create)
    serve = _subcommand(actions, "serve", help="serve a recorded fixture over TLS on 127.0.0.1")
    serve.add_argument("directory", metavar="DIR")
    serve.add_argument("--app", metavar="MODULE:ATTR", help="WSGI app for non-evidence requests "
                       "(default: an echo app)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    serve.set_defaults(handler=_cmd_fixture_serve)


def _check_output(path: Path, force: bool) -> None:
    """Refuse to overwrite: an existing file always, a non-empty directory unless ``force``."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise _UsageError(f"-o {str(path)!r}: expected a directory to create, found an existing file")
    if path.is_dir() and not force and any(path.iterdir()):
        raise _UsageError(
            f"-o {str(path)!r}: the directory exists and is not empty; pass --force to write the "
            "fixture into it (its fixture files are replaced)"
        )


def _cmd_fixture_create(args: argparse.Namespace) -> int:
    from blindbox.testing import LiveEvidence, SoftwarePlatform  # test kit: loaded only here

    output = Path(args.output)
    _check_output(output, args.force)
    policy = _read_input(args.policy, _MAX_INPUT, "policy") if args.policy else None
    platform = SoftwarePlatform() if args.shared_test_keys else SoftwarePlatform.generate()
    source = LiveEvidence.create(args.measurement, product=Product.from_name(args.product),
                                 policy=policy, platform=platform)
    root = source.record().save(output)
    keys = ("blindbox's shared PUBLIC test keys: anyone can sign evidence its roots accept"
            if args.shared_test_keys else "fresh random test keys made for this fixture")
    _say(f"wrote SIMULATED fixture to {root} (evidence signed by {keys}; NOT AMD)",
         f"trust it in tests with roots={root / 'roots.pem'} and nonce=False "
         "(blindbox attest --roots ... --no-nonce)")
    return EXIT_OK


def _cmd_fixture_serve(args: argparse.Namespace) -> int:
    from blindbox.testing.fixture import RecordedEvidence  # test kit: loaded only here
    from blindbox.testing.server import EnclaveServer

    app = _load_app(args.app) if args.app else None
    server = EnclaveServer(app, evidence=RecordedEvidence.load(args.directory), port=args.port)
    _say(f"serving SIMULATED enclave fixture {args.directory} at {server.url} "
         f"(measurement {server.measurement}); Ctrl-C to stop")
    sys.stdout.flush()
    server.serve_forever()  # until Ctrl-C: main() says so and exits 130
    return EXIT_OK


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _subcommand(
        sub, "demo",
        help="attest a local SIMULATED enclave, send it data, and show two refusals",
        description=(
            "Starts a local enclave simulated by BlindBox's test kit (evidence signed by TEST "
            "roots, not AMD), talks to it through SecureSession, prints what was verified, then "
            "shows NotAnEnclaveError and InvalidEnclaveCode. Needs no network and no hardware."
        ),
    )
    parser.add_argument("--transcribe", action="store_true",
                        help="run the confidential audio transcription example instead (needs the "
                        "examples extra: pip install -e '.[examples]')")
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.transcribe:
        from blindbox.testing import transcribe_demo  # test kit: loaded only here

        return transcribe_demo.run(sys.stdout, sys.stderr)
    from blindbox.testing.demo import run  # test kit: loaded only here

    return run(sys.stdout)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindbox",
        description="Send data only to genuine, attested AMD SEV-SNP confidential VMs.",
        epilog=EXIT_EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"blindbox {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_verify(sub)
    _add_attest(sub)
    _add_measure(sub)
    _add_fixture(sub)
    _add_demo(sub)
    from blindbox._manifest_cli import add_manifest_parser

    add_manifest_parser(sub)
    from blindbox._serve_cli import add_serve_parser

    add_serve_parser(sub, epilog=EXIT_EPILOG, formatter_class=_HelpFormatter)
    return parser


def _error_line(error: BaseException) -> str:
    """What went wrong, on one line: the error's class (unless a usage error) and its message."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, _UsageError):
        return str(error)
    return f"{type(error).__name__}: {error}"


_HINTS = "_blindbox_cli_hints"


def _add_hint(exc: BaseException, hint: str) -> None:
    """Attach a line of advice that :func:`main` prints after the error line (BlindBox's own text)."""
    setattr(exc, _HINTS, (*getattr(exc, _HINTS, ()), hint))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``blindbox`` command line and return its exit status (:data:`EXIT_STATUSES`).

    Every failure a command raises becomes its exit status here, and one line on stderr with
    everything a server or file chose escaped; Ctrl-C is 130 and "interrupted", never a traceback.
    An error of no known kind is a bug, raised as is.
    """
    prog = "blindbox"
    try:
        parser = _build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits on --help, --version and usage errors
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        prog = args.prog
        handler: Handler = args.handler
        return handler(args)
    except (Exception, KeyboardInterrupt) as exc:
        status = exit_status(exc)
        if status is None:
            raise
        print(f"{prog}: {shown(_error_line(exc), limit=None)}", file=sys.stderr, flush=True)
        for hint in getattr(exc, _HINTS, ()):
            print(f"{prog}: {hint}", file=sys.stderr, flush=True)
        return status
