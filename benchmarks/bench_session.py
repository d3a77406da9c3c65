"""How much does attestation cost a requests user? SecureSession vs requests.Session, side by side.

Run on demand (not part of the test suite)::

    python benchmarks/bench_session.py [--requests 400] [--firsts 60] [--breakdown] [--json OUT]

Both clients talk to the same local TLS app: a simulated enclave
(``blindbox.testing.EnclaveServer`` with live evidence and its echo app) in a
separate process, so the server does not share the client's GIL. Measured in
the same run, interleaved (one secure, one plain, ...), medians reported:

* steady state: ``GET /echo`` on a session whose connection is open
  (SecureSession vs ``requests.Session``), target ratio <= 1.10x;
* first request: a new SecureSession (TCP + TLS + evidence over the same
  connection + verification + pin) and its first ``GET /echo``, vs a new
  ``requests.Session`` making its first verified HTTPS request (TCP + TLS with
  certificate verification against a CA file holding the server's
  certificate), target ratio <= 1.3x;
* the floor beside them: the same plain first request plus only what
  attestation cannot skip -- the evidence round trip on that connection (the
  server signs a fresh report; read by the SDK's own exchange code) and the
  report's ECDSA P-384 verification -- so the floor ratio says how close to
  1.0x any client could come against this server on this machine;
* construction alone, and one-off cold numbers (first ever session in this
  process, with empty verification caches);
* with ``--breakdown``, after the measurements above (so that they carry no
  timing wrappers): where a first secure request's time goes, from perf
  counters around its stages (medians).

Both sessions keep requests' defaults (``trust_env`` on; ``REQUESTS_CA_BUNDLE``
and ``CURL_CA_BUNDLE`` are removed from this process's environment, since
requests would let them replace the plain client's ``verify=``).

The server is the enclave agent (``EnclaveServer`` runs on ``blindbox serve``'s
``Agent``), which sets TCP_NODELAY on its sockets: without it, Nagle's algorithm
meets the client's delayed ACK and every response takes about 40 ms for both
clients alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import requests
import urllib3
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

import blindbox.requests as br
from blindbox.attest.evidence import Evidence
from blindbox.requests.exchange import fetch_evidence
from blindbox.snp.certificate import AmdCertificate
from blindbox.snp.report import SIGNED_LENGTH

TARGET_STEADY = 1.10
TARGET_FIRST = 1.3


def _serve(conn: Connection) -> None:
    from blindbox.testing.evidence import LiveEvidence
    from blindbox.testing.server import EnclaveServer

    server = EnclaveServer(evidence=LiveEvidence.create())
    server.start()
    server.source.evidence(spki_der=server.identity.spki_der, nonce=None, faults=frozenset())  # warm keys
    conn.send((server.address, server.measurement, server.roots_pem, server.identity.cert_pem))
    conn.recv()
    server.stop()


def _breakdown(secure_session: Callable[[], br.SecureSession], rounds: int) -> list[tuple[str, float]]:
    """Median seconds per stage of ``rounds`` first secure requests, from wrappers around each stage."""
    import collections

    from blindbox.requests import attestor, connection, session

    spent: dict[str, list[float]] = collections.defaultdict(list)
    targets = [
        (session.SecureSession, "_attest_origin", "eager connect + attest"),
        (session.SecureSession, "merge_environment_settings", "environment"),
        (HTTPSConnection, "connect", "TCP + TLS handshake"),
        (connection, "fetch_evidence", "evidence exchange (server signs a fresh report)"),
        (attestor.Attestor, "verify", "verify_evidence (chain, ECDSA P-384, binding, policy)"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]

    def timed(label: str, fn: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label].append(time.perf_counter() - start)
        return wrapper

    for owner, name, label in targets:
        setattr(owner, name, timed(label, getattr(owner, name)))
    try:
        for _ in range(rounds):
            before = time.perf_counter()
            secure = secure_session()
            spent["SecureSession(...) in all"].append(time.perf_counter() - before)
            before = time.perf_counter()
            secure.get("/echo")
            spent["first GET on the attested connection"].append(time.perf_counter() - before)
            secure.close()
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    med = statistics.median
    whole = med(spent["SecureSession(...) in all"])
    setup = whole - med(spent["eager connect + attest"])
    rows = [("SecureSession setup (policy, roots, TLS context, adapter)", setup)]
    # Two lookups per round: the eager attestation's, then the first request's.
    rows += [("environment and proxy lookup: the eager attestation's", med(spent["environment"][0::2])),
             ("environment and proxy lookup: the first request's (environment unchanged)",
              med(spent["environment"][1::2]))]
    rows += [(label, med(spent[label])) for label in (
        "TCP + TLS handshake",
        "evidence exchange (server signs a fresh report)",
        "verify_evidence (chain, ECDSA P-384, binding, policy)", "first GET on the attested connection")]
    return rows


def _floor_request(session: requests.Session, url: str, host: str, key: ec.EllipticCurvePublicKey) -> None:
    """A plain first request plus only the evidence round trip and the report's ECDSA verification."""
    probe = PreparedRequest()
    probe.prepare(method="GET", url=url + "/echo")
    adapter = session.get_adapter(url)
    assert isinstance(adapter, HTTPAdapter)
    pool = adapter.get_connection_with_tls_context(probe, session.verify)
    assert isinstance(pool, HTTPSConnectionPool)
    conn = pool._get_conn()
    conn.connect()  # TCP + verified TLS, as the plain request below would do
    assert isinstance(conn, HTTPSConnection) and conn.sock is not None
    answer = fetch_evidence(conn.sock, host=host, nonce=secrets.token_bytes(32), timeout=10)
    raw = answer.evidence.report
    signature = encode_dss_signature(int.from_bytes(raw[0x2A0:0x2E8], "little"),
                                     int.from_bytes(raw[0x2E8:0x330], "little"))
    key.verify(signature, raw[:SIGNED_LENGTH], ec.ECDSA(hashes.SHA384()))
    pool._put_conn(conn)  # the request goes on the same connection, as SecureSession's does
    session.get(url + "/echo")


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="steady-state requests per client")
    parser.add_argument("--firsts", type=int, default=60, help="first requests (new sessions) per client")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the stages of a first secure request (after the measurements)")
    parser.add_argument("--json", metavar="OUT",
                        help="also write the medians and every sample (seconds) as JSON to this file")
    args = parser.parse_args()
    # Both clients keep requests' defaults (trust_env on). A CA bundle in the environment would
    # replace the plain client's verify= (requests gives it precedence), so it is removed here.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(name, None)

    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=_serve, args=(child,), daemon=True)
    process.start()
    address, measurement, roots, cert_pem = parent.recv()
    url = f"https://{address}"
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as handle:
        handle.write(cert_pem)
        ca_file = handle.name

    def plain_session() -> requests.Session:
        session = requests.Session()
        session.verify = ca_file  # a real certificate verification, as a plain HTTPS client does
        return session

    def secure_session() -> br.SecureSession:
        return br.SecureSession(address, measurements=[measurement], roots=roots)

    try:
        # Cold: the first SecureSession of this process (empty parse/verification caches).
        cold_secure = _time(lambda: secure_session().get("/echo"))
        cold_plain = _time(lambda: plain_session().get(url + "/echo"))

        # Steady state, interleaved.
        secure, plain = secure_session(), plain_session()
        for _ in range(20):
            secure.get("/echo")
            plain.get(url + "/echo")
        steady_secure, steady_plain = [], []
        for _ in range(args.requests):
            steady_secure.append(_time(lambda: secure.get("/echo")))
            steady_plain.append(_time(lambda: plain.get(url + "/echo")))
        assert len(secure.attestations) == 1

        # First request including attestation vs a plain first HTTPS request, interleaved.
        first_secure, first_plain, first_floor = [], [], []
        with plain_session() as session:
            evidence = Evidence.from_json(session.get(url + "/.well-known/blindbox/attestation").content)
        vcek_key = AmdCertificate.load(evidence.certificates["vcek"]).public_key()
        assert isinstance(vcek_key, ec.EllipticCurvePublicKey)

        def one_secure() -> None:
            with secure_session() as session:
                session.get("/echo")

        def one_plain() -> None:
            with plain_session() as session:
                session.get(url + "/echo")

        def one_floor() -> None:
            with plain_session() as session:
                _floor_request(session, url, address, vcek_key)

        for _ in range(args.firsts):
            first_secure.append(_time(one_secure))
            first_plain.append(_time(one_plain))
            first_floor.append(_time(one_floor))

        # Construction alone (TCP + TLS + evidence + verification), no request.
        attest_only = [_time(lambda: secure_session().close()) for _ in range(args.firsts)]
        stages = _breakdown(secure_session, args.firsts) if args.breakdown else []
    finally:
        parent.send("stop")
        process.join(timeout=10)
        os.unlink(ca_file)

    med = statistics.median
    steady_ratio = med(steady_secure) / med(steady_plain)
    first_ratio = med(first_secure) / med(first_plain)
    floor_ratio = med(first_floor) / med(first_plain)
    rows = [
        ("steady state: SecureSession GET", med(steady_secure)),
        ("steady state: requests.Session GET", med(steady_plain)),
        ("first request: new SecureSession + GET (attestation included)", med(first_secure)),
        ("first request: new requests.Session + GET (verified TLS)", med(first_plain)),
        ("floor: that plain first request + evidence round trip + ECDSA P-384 verify", med(first_floor)),
        ("SecureSession construction alone (connect + attest)", med(attest_only)),
        ("cold: first SecureSession + GET in this process", cold_secure),
        ("cold: first requests.Session + GET in this process", cold_plain),
    ]
    print(f"Python {platform.python_version()}, requests {requests.__version__}, urllib3 "
          f"{urllib3.__version__}, {os.cpu_count()} CPUs, {platform.machine()} {platform.system()}")
    print(f"{args.requests} steady requests and {args.firsts} first requests per client, medians\n")
    print("| measurement | median |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {_fmt(value)} |")
    verdict_steady = "met" if steady_ratio <= TARGET_STEADY else "NOT met"
    verdict_first = "met" if first_ratio <= TARGET_FIRST else "NOT met"
    print(f"| **steady-state ratio** | **{steady_ratio:.2f}x** (target <= {TARGET_STEADY:.2f}x: "
          f"{verdict_steady}) |")
    print(f"| **first-request ratio** | **{first_ratio:.2f}x** (target <= {TARGET_FIRST:.1f}x: "
          f"{verdict_first}) |")
    print(f"| floor ratio (nothing but the evidence round trip and the ECDSA check added) | "
          f"{floor_ratio:.2f}x |")
    if stages:
        print("\nWhere a first secure request's time goes (perf counters around each stage, medians):\n")
        print("| stage | median |")
        print("|---|---:|")
        for name, value in stages:
            print(f"| {name} | {_fmt(value)} |")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "benchmark": "bench_session",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "arch": platform.machine(), "cpus": os.cpu_count(), "system": platform.system(),
                "python": platform.python_version(), "requests": requests.__version__,
                "urllib3": urllib3.__version__, "loadavg_1min": os.getloadavg()[0],
            },
            "medians": [{"name": name, "seconds": value} for name, value in rows],
            "samples": {
                "steady_secure": steady_secure, "steady_plain": steady_plain,
                "first_secure": first_secure, "first_plain": first_plain, "first_floor": first_floor,
                "attest_only": attest_only,
            },
            "steady_ratio": steady_ratio, "target_steady": TARGET_STEADY,
            "first_ratio": first_ratio, "target_first": TARGET_FIRST, "floor_ratio": floor_ratio,
            "breakdown": [{"name": name, "seconds": value} for name, value in stages],
        }
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
