"""``blindbox serve``: run the enclave agent in front of an HTTP application.

Returns 0 after a clean stop (SIGTERM or SIGINT: stop accepting, finish
in-flight requests within the grace period). Everything else is a typed
error the ``blindbox`` entry point maps to its exit status: bad arguments or
an unreadable policy are :class:`~blindbox.errors.ConfigurationError` (2), no
usable report interface a
:class:`~blindbox.server.backends.errors.ReportBackendError` (4).
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import urllib.parse
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from blindbox._text import shown
from blindbox.attest.owner_policy import MAX_POLICY_BYTES, OwnerPolicy
from blindbox.errors import ConfigurationError
from blindbox.server.backends.base import ReportBackend
from blindbox.snp.report import SigningKey

if TYPE_CHECKING:
    from blindbox.snp.kds import KdsClient

_PROG = "blindbox serve"
_SIMULATED = ("WARNING: --backend simulator: this evidence is SIMULATED, signed by BlindBox's TEST keys, "
              "NOT by AMD hardware; it proves nothing about where this agent runs. Never use it in "
              "production.")


def add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **common: Any) -> None:
    """Register ``blindbox serve`` on the top-level subparsers."""
    parser = sub.add_parser(
        "serve", help="run the enclave agent: attested TLS in front of an HTTP application",
        description=(
            "Serves protocol v1 evidence and forwards every other request to --upstream over a TLS "
            "key made in memory at start, enforcing the data owner's authentication policy."
        ), **common,
    )
    parser.set_defaults(prog=parser.prog, handler=run_serve)
    parser.add_argument("--upstream", required=True, metavar="URL",
                        help="the application, http://HOST:PORT (inside the VM, e.g. http://127.0.0.1:8000)")
    parser.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT",
                        help="where to listen; port 0 picks a free port")
    parser.add_argument("--owner-policy", metavar="FILE",
                        help="the data-owner policy document to serve, bind and enforce")
    parser.add_argument("--backend", default="auto",
                        choices=("auto", "configfs-tsm", "sev-guest", "simulator"),
                        help="where reports come from; auto tries configfs-tsm, then /dev/sev-guest, "
                        "never the simulator")
    parser.add_argument("--name", action="append", default=[], metavar="DNS_OR_IP",
                        help="a name for the TLS certificate; repeatable (default: the listen address)")
    parser.add_argument("--kds", metavar="PRODUCT", choices=("milan", "genoa", "turin"),
                        help="when the host attaches no certificates, fetch the VCEK and chain for this "
                        "product from AMD KDS once at start and serve them with the evidence")
    parser.add_argument("--measurement", metavar="HEX", help="simulator only: the launch measurement")
    parser.add_argument("--roots-out", metavar="FILE",
                        help="simulator only: write the test roots clients must pass as roots=")
    parser.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish")


def _err(line: str) -> None:
    print(f"{_PROG}: {shown(line, limit=None)}", file=sys.stderr, flush=True)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"--listen: expected HOST:PORT (port 0-65535), found {shown(text)}")
    return host, int(port)


def parse_upstream(text: str) -> tuple[str, int]:
    """``http://HOST:PORT`` with no path, query or credentials."""
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (parts.scheme != "http" or not parts.hostname or port is None or parts.username is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ConfigurationError(f"--upstream: expected http://HOST:PORT, found {shown(text)}")
    return parts.hostname, port


def _load_policy(path: str) -> OwnerPolicy:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"--owner-policy: cannot read {shown(path)} ({exc.strerror})") from None
    return OwnerPolicy.from_json(data)


def _backend(args: argparse.Namespace) -> ReportBackend:
    simulator_only = [flag for flag, value in (("--measurement", args.measurement),
                                                ("--roots-out", args.roots_out)) if value is not None]
    if args.backend != "simulator":
        if simulator_only:
            raise ConfigurationError(f"{', '.join(simulator_only)}: only with --backend simulator")
        from blindbox.server.backends import ConfigfsTsmBackend, SevGuestBackend, probe_backend

        if args.backend == "auto":
            result = probe_backend()
            _err(result.describe())
            return result.backend
        chosen = ConfigfsTsmBackend() if args.backend == "configfs-tsm" else SevGuestBackend()
        _err(f"report backend: {chosen.name} ({chosen.probe()})")
        return chosen
    if args.measurement is None or args.roots_out is None:
        raise ConfigurationError("--backend simulator needs --measurement HEX and --roots-out FILE")
    from blindbox.testing.backend import SimulatedBackend  # test kit: loaded only when asked for

    simulated = SimulatedBackend.create(args.measurement)
    Path(args.roots_out).write_text(simulated.roots_pem, encoding="ascii")
    _err(_SIMULATED)
    _err(f"wrote the simulator's TEST roots to {args.roots_out}")
    return simulated


def kds_certificates(product: str, backend: ReportBackend, kds: KdsClient) -> dict[str, str]:
    """VCEK (for this chip and TCB), ASK and ARK from AMD KDS, as PEM, for a backend that attaches none.

    Fetched once, at start; a backend whose table has certificates needs none (empty result).
    """
    from blindbox.server.evidence import certificates_pem
    from blindbox.snp.certificate import pem_encode
    from blindbox.snp.product import Product
    from blindbox.snp.report import AttestationReport

    raw = backend.get_report(bytes(64))
    if certificates_pem(raw):
        return {}
    report = AttestationReport.from_bytes(raw.report)
    if report.signing_key is not SigningKey.VCEK:
        raise ConfigurationError("--kds: the reports are signed by a VLEK, which AMD KDS does not serve; "
                                 "the host must attach it (certificate table)")
    chosen = Product[product.upper()]
    vcek = kds.vcek(chosen, report.chip_id, report.reported_tcb)
    ask, ark = kds.cert_chain(chosen, report.signing_key)
    return {name: pem_encode(cert.der) for name, cert in (("vcek", vcek), ("ask", ask), ("ark", ark))}


def run_serve(args: argparse.Namespace) -> int:
    """Start the agent, print ``listening on https://HOST:PORT``, serve until SIGTERM/SIGINT."""
    from blindbox.server.agent import Agent
    from blindbox.server.auth import Authenticator
    from blindbox.server.connection import Site
    from blindbox.server.evidence import EvidenceService
    from blindbox.server.tls import TlsIdentity

    host, port = parse_listen(args.listen)
    upstream = parse_upstream(args.upstream)
    if not (isinstance(args.grace, float) and 0 <= args.grace <= 3600):
        raise ConfigurationError(f"--grace: expected 0..3600 seconds, found {args.grace!r}")
    policy = _load_policy(args.owner_policy) if args.owner_policy else None
    backend = _backend(args)
    certificates: dict[str, str] = {}
    if args.kds:
        from blindbox.snp.kds import KdsClient

        kds = KdsClient(on_fetch=lambda what, url: _err(f"fetching {what} from {url}"))
        certificates = kds_certificates(args.kds, backend, kds)
    names = args.name or [host]
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not name or len(name) > 253 or not all(c.isalnum() or c in "-." for c in name):
                raise ConfigurationError(f"--name: expected a DNS name or IP address, found {shown(name)}") \
                    from None
    identity = TlsIdentity.generate(names)
    evidence = EvidenceService(backend, spki_der=identity.spki_der,
                               policy=policy.to_bytes() if policy else None, certificates=certificates)
    evidence.document(None)  # the nonce-less report, made now: a backend failure stops the start
    if policy is None:
        _err("no --owner-policy: serving no policy; anyone who can reach this port reaches the upstream")
    else:
        auth = "required" if policy.authentication_required else "not required"
        _err(f"owner policy {policy.digest()} (authentication {auth})")
    site = Site(evidence=evidence, auth=Authenticator(policy), upstream=upstream)
    agent = Agent(identity, site, host=host, port=port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        bound_host, bound_port = agent.address
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        _err(f"listening on https://{shown_host}:{bound_port} (upstream http://{upstream[0]}:{upstream[1]})")
        agent.serve_forever()
        _err("stopping: finishing in-flight requests")
        finished = agent.stop(args.grace)
        _err("stopped" if finished else f"stopped; requests still running after {args.grace} s were cut")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
