"""Write the seed corpus (fuzz/corpus/<target>/) from the real vectors in tests/vectors/snp.

Run once (``python -m fuzz.make_corpus``); the result is committed. Inputs that found bugs are
added to the same directories by hand (``fuzz/run`` saves them under fuzz/findings/).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json

from blindbox.attest.evidence import Evidence
from blindbox.attest.manifest import SCHEMA, manifest_entry
from blindbox.attest.measure import measure
from blindbox.attest.owner_policy import EgressRule, OwnerPolicy
from blindbox.snp.certificate import load_all
from blindbox.snp.certtable import encode_cert_table
from blindbox.snp.product import Product
from fuzz.mutators import pem
from fuzz.targets import CORPUS, TARGETS, VECTORS


def _index() -> list[dict[str, object]]:
    return json.loads((VECTORS / "index.json").read_text())  # type: ignore[no-any-return]


def _chain(product: str, family: str) -> dict[str, bytes]:
    certs = load_all((VECTORS / "ca" / product / f"cert_chain_{family}.pem").read_bytes())
    return {("asvk" if family == "vlek" else "ask"): certs[0].der, "ark": certs[1].der}


def seeds() -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {name: [] for name in TARGETS}
    ders = [p.read_bytes() for p in sorted((VECTORS / "certs").glob("*.der"))]
    ders += [p.read_bytes() for p in sorted((VECTORS / "negative").glob("*.der"))]
    for product in ("milan", "genoa", "turin"):
        ders += [c.der for c in load_all((VECTORS / "ca" / product / "cert_chain_vcek.pem").read_bytes())]
        out["pem"].append((VECTORS / "ca" / product / "cert_chain_vlek.pem").read_bytes())
    out["der"] = ders[:6] + ders[-3:]
    out["x509"] = ders
    out["pem"] += [pem(d, 64, b"\r\n") for d in ders[:3]]
    out["report"] = [p.read_bytes() for p in sorted((VECTORS / "reports").glob("*.bin"))]
    for entry in _index():
        if not entry.get("key_cert") or not entry["verify"]["end_to_end"]:  # type: ignore[index]
            continue
        report = (VECTORS / str(entry["file"])).read_bytes()
        leaf = (VECTORS / str(entry["key_cert"])).read_bytes()
        family = "vlek" if entry["signing_key"] == "VLEK" else "vcek"
        chain = _chain(str(entry["product"]), family)
        certificates = {family: leaf, **chain}
        out["certtable"].append(encode_cert_table(certificates))
        doc = Evidence(report=report, certificates={k: pem(v).decode() for k, v in certificates.items()},
                       policy=OwnerPolicy(False).to_bytes() if len(out["evidence"]) % 3 == 0 else None)
        out["evidence"].append(doc.to_json())
    out["certtable"] = out["certtable"][:6]
    out["evidence"] = out["evidence"][:8]
    body = out["evidence"][0]
    out["exchange"] = [
        bytes([chunk]) + b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + body
        for chunk in (0, 4)
    ] + [b"\x02HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"]
    from blindbox.testing.platform import SoftwarePlatform

    platform = SoftwarePlatform()
    this = _dt.datetime(2025, 5, 1, tzinfo=_dt.timezone.utc)
    out["crl"] = [platform.crl(Product.MILAN, this_update=this, next_update=this + _dt.timedelta(days=60)),
                  platform.crl(Product.GENOA, "vlek", revoked=[0x1234, 2 ** 100], this_update=this,
                               next_update=this + _dt.timedelta(days=7))]
    owner = [OwnerPolicy(False), OwnerPolicy(True, bearer_token_sha256=[hashlib.sha256(b"t").hexdigest()],
                                             egress_allow=[EgressRule("api.example.com", [443, 8443]),
                                                           EgressRule("10.0.0.1", [53])])]
    out["owner_policy"] = [p.to_bytes() for p in owner]
    amdsev = VECTORS / "measure" / "ovmf_AmdSev_suffix.bin"
    out["measure"] = [amdsev.read_bytes(), (VECTORS / "measure" / "ovmf_OvmfX64_suffix.bin").read_bytes()]
    entry = manifest_entry(measure(amdsev, vcpus=2, vcpu_type="EPYC-Milan"))
    manifest = {"schema": SCHEMA, "name": "fuzz", "version": "1.0.0", "measurements": [entry],
                "policy": {"vmpls": [0], "min_tcb": "amd-recommended"},
                "owner_policy": {"sha256": owner[1].digest(), "authentication_required": True,
                                 "egress_subset_of": [{"host": "api.example.com", "ports": [443, 8443]},
                                                      {"host": "logs.example.com"}]}}
    out["manifest"] = [json.dumps(manifest, indent=2).encode(), json.dumps(manifest, sort_keys=True).encode()]
    out["kds_headers"] = [b"120", b"Wed, 21 Oct 2015 07:28:00 GMT", b"5", b"1024"]
    token = b"Authorization: Bearer fuzz-token\r\n"
    out["agent_request"] = [
        b"GET /.well-known/blindbox/attestation?nonce=" + b"A" * 43 + b" HTTP/1.1\r\nHost: e\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: e\r\n" + token + b"Content-Length: 5\r\n\r\nhello",
        b"POST /upload HTTP/1.1\r\nHost: e\r\n" + token + b"Transfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    ]
    return out


def main() -> None:
    for name, inputs in seeds().items():
        directory = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (directory / f"seed-{hashlib.sha256(data).hexdigest()[:16]}").write_bytes(data)
        print(f"{name}: {len(inputs)} seeds")


if __name__ == "__main__":
    main()
