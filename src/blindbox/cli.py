"""The ``blindbox`` command line.

Each subcommand is a pair of functions: ``_add_<name>`` declares its arguments
and ``_cmd_<name>`` runs it and returns the exit status. Exit statuses:
0 success, 1 the evidence is not genuine (the error class and message go to
stderr) or, for ``attest``, any check failed, 2 usage error or unreadable input.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blindbox import __version__
from blindbox.errors import AttestationError, ConfigurationError, NotAnEnclaveError
from blindbox.snp.certificate import AmdCertificate, load_all
from blindbox.snp.describe import describe, render_text
from blindbox.snp.product import Product
from blindbox.snp.report import AttestationReport
from blindbox.snp.verify import CertificateInput, verify_report

if TYPE_CHECKING:
    from blindbox.attest.evidence import Evidence
    from blindbox.attest.verifier import Assessment
    from blindbox.requests.attestor import Attestor
    from blindbox.requests.origin import Origin
    from blindbox.snp.verify import KdsSource

EXIT_OK = 0
EXIT_NOT_GENUINE = 1
EXIT_USAGE = 2

#: Upper bound on any input file: a report is 1184 bytes, a PEM of ARK+ASK+ASVK ~7 KiB.
_MAX_INPUT = 64 * 1024

Handler = Callable[[argparse.Namespace], int]


class _UsageError(Exception):
    """Bad arguments or unreadable input: exit status 2."""


def _read_input(name: str, limit: int, what: str) -> bytes:
    """Read at most ``limit`` bytes from a path (or stdin for ``-``); more is refused unread."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with Path(name).open("rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise _UsageError(f"cannot read {what} {name!r}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise NotAnEnclaveError(f"{what}: expected at most {limit} bytes, found more in {name!r}")
    return data


def _parse_at(text: str) -> _dt.datetime:
    """An ISO 8601 date or date-time; no offset means UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date or date-time (e.g. 2025-06-01 or 2025-06-01T12:00:00Z), "
            f"found {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.timezone.utc)


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

    return KdsClient(offline=offline)


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "verify",
        help="check that a raw SEV-SNP report was signed by genuine AMD hardware",
        description=(
            "Verify a raw 1184-byte SEV-SNP attestation report: layout and must-be-zero fields, "
            "the VCEK/VLEK against the report (product, TCB, chip id), the chain to AMD's pinned "
            "roots, validity dates and the ECDSA signature. Without --cert the VCEK is fetched "
            "from AMD KDS (or its cache with --offline) and revocation is checked; with --cert "
            "no network is used and revocation is not checked."
        ),
        epilog="exit status: 0 genuine, 1 not genuine, 2 usage error or unreadable file",
    )
    parser.add_argument("report", metavar="REPORT", help="raw report file, or - for stdin")
    parser.add_argument("--cert", metavar="VCEK_OR_VLEK", help="the signing certificate (DER or PEM)")
    parser.add_argument("--chain", metavar="PEM",
                        help="ASK/ASVK (and ARK, never used as an anchor) as candidate intermediates")
    parser.add_argument("--at", metavar="ISO_DATE", type=_parse_at,
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
        raw = _read_input(args.report, _MAX_INPUT, "report")
        cert_data = _read_input(args.cert, _MAX_INPUT, "certificate") if args.cert else None
        chain_data = _read_input(args.chain, _MAX_INPUT, "chain") if args.chain else None
        parsed = AttestationReport.from_bytes(raw, product)
        certificates: dict[str, CertificateInput] = {}
        if chain_data is not None:
            certificates.update(_chain_certificates(chain_data))
        if cert_data is not None:
            leaf = AmdCertificate.load(cert_data)
            certificates["vlek" if leaf.common_name == "SEV-VLEK" else "vcek"] = leaf
        kds = None if cert_data is not None else _kds_client(args.offline)
        verified = verify_report(parsed, certificates=certificates or None, at=args.at,
                                 kds=kds, product=product)
    except _UsageError as exc:
        print(f"blindbox verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigurationError as exc:
        print(f"blindbox verify: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AttestationError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        if args.json:
            failed = describe(parsed) if parsed is not None else {"report": None, "verification": None}
            error = {"type": type(exc).__name__, "message": str(exc)}
            print(json.dumps({"verified": False, **failed, "error": error}, indent=2))
        return EXIT_NOT_GENUINE
    if args.json:
        print(json.dumps({"verified": True, **describe(verified)}, indent=2))
    else:
        print(render_text(describe(verified)), end="")
    return EXIT_OK


def _add_attest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "attest",
        help="attest a live server and show every check with what was expected and found",
        description=(
            "Connect to URL over TLS (no WebPKI: the key is trusted only if the evidence binds it), "
            "fetch its protocol v1 evidence on that connection with a fresh nonce, and run every check "
            "a SecureSession runs: genuine SEV-SNP evidence, the binding to this TLS key and nonce, the "
            "appraisal policy (from --measurement or --manifest, else the manifest named by "
            "BLINDBOX_MANIFEST) and the data-owner policy requirements. Each check is printed with its "
            "verdict; when the evidence is not genuine the others are listed as not evaluated."
        ),
        epilog="exit status: 0 every check passed (warnings allowed), 1 a check failed or the server "
               "could not be reached, 2 usage error or unreadable input",
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
    parser.add_argument("--roots", metavar="PEM",
                        help="trust these roots INSTEAD of AMD's (e.g. a SIMULATED fixture's roots.pem)")
    parser.add_argument("--no-nonce", action="store_true",
                        help="send no nonce (recorded evidence cannot answer one; replay is then possible)")
    parser.add_argument("--expected-policy", metavar="DIGEST",
                        help="the data-owner policy's SHA-256 (64 hex) the server must serve")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="connection and evidence exchange timeout")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(handler=_cmd_attest)


_VERDICT_LABELS = {"pass": "pass", "warn": "WARN", "fail": "FAIL"}


def _cmd_attest(args: argparse.Namespace) -> int:
    from blindbox.requests.attestor import Attestor
    from blindbox.requests.config import MANIFEST_ENV, build_expectations, build_roots, check_timeout
    from blindbox.requests.exchange import ExchangeTimeout
    from blindbox.requests.origin import Origin

    try:
        named = os.environ.get(MANIFEST_ENV, "").strip()
        if args.measurement is None and args.manifest is None and not named:
            raise _UsageError(
                "no expected launch measurement: pass --measurement HEX (repeatable) or --manifest "
                f"FILE_OR_URL, or set {MANIFEST_ENV} to a manifest's path or https:// URL"
            )
        origin = Origin.parse(args.url)
        timeout = check_timeout(args.timeout)
        key = _read_input(args.publisher_key, _MAX_INPUT, "publisher key") if args.publisher_key else None
        roots = build_roots(_read_input(args.roots, _MAX_INPUT, "roots")) if args.roots else None
        expectations = build_expectations(
            measurements=args.measurement, manifest=args.manifest, manifest_signature=args.manifest_signature,
            publisher_key=key, expected_policy=args.expected_policy, policy={}, caller="blindbox attest",
            timeout=timeout,
        )
    except (_UsageError, ConfigurationError, AttestationError) as exc:
        print(f"blindbox attest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    attestor = Attestor(expectations.policy, roots, nonce=not args.no_nonce, timeout=timeout,
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
        spki_der, nonce, evidence = _fetch_live_evidence(origin, attestor, timeout)
    except (OSError, ExchangeTimeout) as exc:
        message = f"cannot attest {origin.url}: {type(exc).__name__}: {exc}"
        print(f"blindbox attest: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({**header, "nonce": None, "checks": [], "passed": False, "attestation": None,
                              "error": message}, indent=2))
        return EXIT_NOT_GENUINE
    assessment = attestor.assess(evidence, spki_der=spki_der, nonce=nonce)
    if args.json:
        print(json.dumps({**header, "nonce": nonce.hex() if nonce is not None else None,
                          "checks": assessment.to_dict(), "passed": assessment.passed,
                          "attestation": assessment.summary()}, indent=2))
    else:
        _print_assessment(header, nonce, assessment)
    return EXIT_OK if assessment.passed else EXIT_NOT_GENUINE


def _fetch_live_evidence(origin: Origin, attestor: Attestor, timeout: float,
                         ) -> tuple[bytes | None, bytes | None, Evidence | NotAnEnclaveError]:
    """(SPKI, nonce sent, evidence or why there is none) from one TLS connection trusted by nobody yet.

    Raises OSError/ExchangeTimeout when the server cannot be reached or stops answering.
    """
    from blindbox.attest.binding import spki_of_certificate
    from blindbox.requests.exchange import fetch_evidence

    nonce = attestor.new_nonce()
    with socket.create_connection((origin.host, origin.port), timeout=timeout) as raw, \
            attestor.context.wrap_socket(raw, server_hostname=origin.host) as sock:
        cert_der = sock.getpeercert(binary_form=True)
        try:
            if not cert_der:
                raise NotAnEnclaveError("TLS: the server presented no certificate")
            spki_der = spki_of_certificate(cert_der)
        except NotAnEnclaveError as exc:
            return None, nonce, exc
        try:
            response = fetch_evidence(sock, host=origin.host_header, nonce=nonce, timeout=timeout)
        except NotAnEnclaveError as exc:
            return spki_der, nonce, exc
        return spki_der, nonce, response.evidence


def _print_assessment(header: dict[str, Any], nonce: bytes | None, assessment: Assessment) -> None:
    from blindbox.attest.verifier import NOT_EVALUATED

    out = sys.stdout
    print(f"blindbox attest {header['url']}", file=out)
    if header["roots"]["amd"]:
        print("roots: AMD's pinned roots", file=out)
    else:
        print(f"roots: {header['roots']['source']} -- NOT AMD's: a pass shows only that these roots vouch "
              "for the evidence (e.g. a SIMULATED fixture), not that AMD hardware produced it", file=out)
    manifest = header["manifest"]
    if manifest is not None:
        print(f"manifest: {manifest['name']} {manifest['version']} (sha256 {manifest['sha256'] or 'n/a'}, "
              f"{'signature verified' if manifest['signed'] else 'unsigned'})", file=out)
    print(f"nonce: {nonce.hex() if nonce is not None else 'none (replayed evidence would pass)'}", file=out)
    rows = assessment.verdicts()
    width = max(len("CHECK"), *(len(check.name) for check, _ in rows))
    labels = [_VERDICT_LABELS.get(verdict, verdict) for _, verdict in rows]
    label_width = max(len("VERDICT"), *(len(label) for label in labels))
    indent = " " * (label_width + width + 4)
    print(f"\n{'VERDICT':<{label_width}}  {'CHECK':<{width}}  EXPECTED / FOUND", file=out)
    for (check, verdict), label in zip(rows, labels, strict=True):
        print(f"{label:<{label_width}}  {check.name:<{width}}  expected  {check.expected}", file=out)
        if verdict != NOT_EVALUATED:
            print(f"{indent}found     {check.found}", file=out)
        if verdict == "fail" and check.reason:
            print(f"{indent}why       {check.reason}", file=out)
        if verdict == "warn" and check.warning:
            print(f"{indent}warning   {check.warning}", file=out)
    summary = assessment.summary()
    if summary is not None:
        print("\nattestation:", file=out)
        key_width = max(len(key) for key in summary)
        for key, value in summary.items():
            print(f"  {key:<{key_width}}  {value}", file=out)
    failed = [check.name for check in assessment.failures]
    skipped = len(rows) - assessment.evaluated
    warned = sum(verdict == "warn" for _, verdict in rows)
    if assessment.passed:
        result = f"PASS: all {len(rows)} checks passed" + (f" ({warned} with a warning)" if warned else "")
    else:
        result = f"FAIL: {len(failed)} of {len(rows)} checks failed ({', '.join(failed)})"
        if skipped:
            result += f", {skipped} not evaluated"
    print(f"\nresult: {result}", file=out)


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
    parser = sub.add_parser(
        "measure",
        help="compute the SEV-SNP launch measurement of a guest image (sev-snp-measure)",
        description=(
            "Compute the launch digest an SEV-SNP guest will report, from its OVMF (and optional "
            "direct-boot kernel, initrd and command line). An OVMF without SEV-SNP metadata is "
            "refused. --manifest writes a manifest measurement entry recording every input."
        ),
        epilog="exit status: 0 measured, 2 usage error or unmeasurable input",
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

    try:
        result = measure(args.ovmf, vcpus=args.vcpus, vcpu_type=args.vcpu_type, vmm=args.vmm,
                         kernel=args.kernel, initrd=args.initrd, append=args.append,
                         guest_features=args.guest_features)
        entry = manifest_entry(result)
        if args.manifest:
            Path(args.manifest).write_text(json.dumps(entry, indent=2) + "\n")
    except (ConfigurationError, OSError) as exc:
        print(f"blindbox measure: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(entry, indent=2) if args.json else result.hex)
    return EXIT_OK


def _add_fixture(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "fixture",
        help="create or serve a recorded, SIMULATED enclave fixture for tests and CI",
        description=(
            "Recorded fixtures replay SIMULATED SEV-SNP evidence signed by BlindBox's test roots "
            "(never AMD's). Clients trust them only when given the fixture's roots.pem "
            "explicitly, and must use nonce=False since a recording answers no fresh nonce."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="write a recorded fixture directory")
    create.add_argument("--measurement", required=True, metavar="HEX",
                        help="launch measurement the simulated enclave reports (96 hex characters)")
    create.add_argument("--product", choices=[p.value.lower() for p in Product], default="milan")
    create.add_argument("--policy", metavar="FILE",
                        help="data-owner policy document whose exact bytes the evidence binds")
    create.add_argument("-o", "--output", required=True, metavar="DIR")
    create.add_argument("--shared-test-keys", action="store_true",
                        help="sign with blindbox's shared PUBLIC test keys instead of fresh random keys "
                        "(anyone can then sign evidence that the fixture's roots accept)")
    create.set_defaults(handler=_cmd_fixture_create)
    serve = actions.add_parser("serve", help="serve a recorded fixture over TLS on 127.0.0.1")
    serve.add_argument("directory", metavar="DIR")
    serve.add_argument("--app", metavar="MODULE:ATTR", help="WSGI app for non-evidence requests "
                       "(default: an echo app)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    serve.set_defaults(handler=_cmd_fixture_serve)


def _cmd_fixture_create(args: argparse.Namespace) -> int:
    from blindbox.testing import LiveEvidence, SoftwarePlatform  # test kit: loaded only here

    try:
        policy = _read_input(args.policy, _MAX_INPUT, "policy") if args.policy else None
        platform = SoftwarePlatform() if args.shared_test_keys else SoftwarePlatform.generate()
        source = LiveEvidence.create(args.measurement, product=Product.from_name(args.product),
                                     policy=policy, platform=platform)
        root = source.record().save(args.output)
    except (_UsageError, ConfigurationError, OSError) as exc:
        print(f"blindbox fixture create: {exc}", file=sys.stderr)
        return EXIT_USAGE
    keys = ("blindbox's shared PUBLIC test keys: anyone can sign evidence its roots accept"
            if args.shared_test_keys else "fresh random test keys made for this fixture")
    print(f"wrote SIMULATED fixture to {root} (evidence signed by {keys}; NOT AMD)")
    print(f"trust it in tests with roots={root / 'roots.pem'} and nonce=False")
    return EXIT_OK


def _cmd_fixture_serve(args: argparse.Namespace) -> int:
    from blindbox.testing.fixture import RecordedEvidence  # test kit: loaded only here
    from blindbox.testing.server import EnclaveServer

    try:
        app = _load_app(args.app) if args.app else None
        server = EnclaveServer(app, evidence=RecordedEvidence.load(args.directory), port=args.port)
    except (_UsageError, ValueError, OSError) as exc:
        print(f"blindbox fixture serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"serving SIMULATED enclave fixture {args.directory} at {server.url} "
          f"(measurement {server.measurement}); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
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
    )
    parser.add_argument("--version", action="version", version=f"blindbox {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_verify(sub)
    _add_attest(sub)
    _add_measure(sub)
    _add_fixture(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``blindbox`` command line and return its exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    return handler(args)
