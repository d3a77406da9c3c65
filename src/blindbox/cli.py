"""The ``blindbox`` command line.

Each subcommand is a pair of functions: ``_add_<name>`` declares its arguments
and ``_cmd_<name>`` runs it and returns the exit status. Exit statuses:
0 success, 1 the evidence is not genuine (the error class and message go to
stderr), 2 usage error or unreadable input.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
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
    create.set_defaults(handler=_cmd_fixture_create)
    serve = actions.add_parser("serve", help="serve a recorded fixture over TLS on 127.0.0.1")
    serve.add_argument("directory", metavar="DIR")
    serve.add_argument("--app", metavar="MODULE:ATTR", help="WSGI app for non-evidence requests "
                       "(default: an echo app)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    serve.set_defaults(handler=_cmd_fixture_serve)


def _cmd_fixture_create(args: argparse.Namespace) -> int:
    from blindbox.testing.evidence import LiveEvidence  # test kit: loaded only here

    try:
        policy = _read_input(args.policy, _MAX_INPUT, "policy") if args.policy else None
        source = LiveEvidence.create(args.measurement, product=Product.from_name(args.product),
                                     policy=policy)
        root = source.record().save(args.output)
    except (_UsageError, ConfigurationError, OSError) as exc:
        print(f"blindbox fixture create: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote SIMULATED fixture to {root} (evidence signed by BlindBox test roots, NOT AMD)")
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
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
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
