"""Enclave manifests: what an enclave vendor publishes so users can decide which enclave to trust.

A manifest (``docs/manifest.md``, schema ``docs/manifest.schema.json``) names
the accepted launch measurements, each with the sev-snp-measure inputs that
produce it (so anyone can recompute it), the appraisal policy, and the
requirements on the enclave's data-owner policy. :meth:`Manifest.load` reads
it from a file, JSON text or bytes, a dict, or an ``https://`` URL (WebPKI
verified, size-bounded); with ``publisher_key=`` pinned, a detached signature
over the exact bytes is verified **before** anything is parsed. Every failure
is a :class:`~blindbox.errors.ManifestError` naming the JSON path, what was
expected and what was found. Unknown members are refused: a manifest is a
security document and is never read partially.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urljoin

import requests
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from blindbox._http import read_bounded
from blindbox.attest import strict_json
from blindbox.attest.measure import Measurement
from blindbox.attest.owner_policy import PolicyRequirements, check_host
from blindbox.attest.policy import AttestationPolicy
from blindbox.errors import ConfigurationError, ManifestError

SCHEMA = "blindbox-manifest-v1"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SIGNATURE_BYTES = 1024
MAX_MEASUREMENTS = 1024
MAX_NAME_LENGTH = 128
MAX_VERSION_LENGTH = 64
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = 10.0

Source = str | os.PathLike[str] | bytes | Mapping[str, Any]
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

_TOP_MEMBERS = ("schema", "name", "version", "measurements", "policy", "owner_policy")
_TOP_REQUIRED = ("schema", "name", "version", "measurements")
_ENTRY_MEMBERS = ("digest", "inputs")
_INPUT_MEMBERS = (
    "ovmf_sha256", "ovmf_name", "ovmf_hash", "vcpus", "vcpu_type", "vmm",
    "kernel_sha256", "initrd_sha256", "append", "guest_features",
)
_INPUT_REQUIRED = ("ovmf_sha256", "vcpus", "vmm", "guest_features")
_OWNER_MEMBERS = ("sha256", "authentication_required", "egress_subset_of")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_HEX96_RE = re.compile(r"[0-9a-f]{96}")
_FEATURES_RE = re.compile(r"0x(?:0|[1-9a-f][0-9a-f]{0,15})")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HASH_FOR_CURVE = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}


@dataclass(frozen=True)
class Manifest:
    """A validated enclave manifest. Build one with :meth:`Manifest.load`.

    ``sha256`` identifies the exact bytes read (``None`` when loaded from a
    dict); ``signed`` tells whether a pinned publisher key verified them.
    """

    name: str
    version: str
    measurements: tuple[Measurement, ...]
    sha256: str | None
    signed: bool
    _policy: AttestationPolicy = field(repr=False)
    _requirements: PolicyRequirements | None = field(repr=False)

    @classmethod
    def load(
        cls,
        source: Source,
        *,
        signature: bytes | str | os.PathLike[str] | None = None,
        publisher_key: str | bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Manifest:
        """Load and validate a manifest.

        ``source`` is a file path, an ``https://`` URL, JSON text (a string
        starting with ``{``) or bytes, or an already-parsed dict. With
        ``publisher_key`` (PEM of an Ed25519, ECDSA P-256 or P-384 public key),
        ``signature`` (raw signature bytes, or a path or ``https://`` URL of the
        detached signature file) must verify over the manifest's exact bytes,
        else :class:`~blindbox.errors.ManifestError`; a dict cannot be verified
        and is refused then.
        """
        if isinstance(source, Mapping):
            if publisher_key is not None or signature is not None:
                raise ManifestError(
                    "$: expected the manifest's bytes, path or URL when a signature is to be checked "
                    "(a signature covers exact bytes), found an already-parsed dict"
                )
            return _from_document(dict(source), sha256=None, signed=False)
        raw = _read_source(source, timeout)
        if publisher_key is not None:
            key = _load_publisher_key(publisher_key)
            if signature is None:
                raise ManifestError(
                    "signature: expected a detached signature over the manifest (a publisher key is "
                    "pinned), found none"
                )
            _verify_signature(raw, _read_signature(signature, timeout), key)
        elif signature is not None:
            raise ManifestError(
                "publisher_key: expected the publisher's pinned public key to check the given signature "
                "against, found none (an unchecked signature proves nothing)"
            )
        try:
            text = raw.decode("utf-8")
            doc = strict_json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ManifestError(f"$: expected a UTF-8 JSON object, found invalid JSON ({exc})") from None
        return _from_document(doc, sha256=hashlib.sha256(raw).hexdigest(), signed=publisher_key is not None)

    def attestation_policy(self) -> AttestationPolicy:
        """The appraisal policy: the accepted measurements plus the manifest's ``policy`` member."""
        return self._policy

    def policy_requirements(self) -> PolicyRequirements | None:
        """The requirements on the enclave's data-owner policy, or None when the manifest sets none."""
        return self._requirements

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data (valid under ``docs/manifest.schema.json``)."""
        policy = {k: v for k, v in self._policy.to_dict().items() if k != "measurements"}
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "name": self.name,
            "version": self.version,
            "measurements": [manifest_entry(m) for m in self.measurements],
            "policy": policy,
        }
        if self._requirements is not None:
            doc["owner_policy"] = _requirements_to_dict(self._requirements)
        return doc


def manifest_entry(measurement: Measurement) -> dict[str, Any]:
    """The manifest ``measurements`` item for ``measurement``: its digest and the inputs that produce it."""
    inputs: dict[str, Any] = {
        "ovmf_sha256": measurement.ovmf_sha256,
        "vcpus": measurement.vcpus,
        "vmm": measurement.vmm,
        "guest_features": f"0x{measurement.guest_features:x}",
    }
    optional = {
        "ovmf_name": measurement.ovmf_name,
        "ovmf_hash": measurement.ovmf_hash,
        "vcpu_type": measurement.vcpu_type,
        "kernel_sha256": measurement.kernel_sha256,
        "initrd_sha256": measurement.initrd_sha256,
        "append": measurement.append,
    }
    inputs.update((name, value) for name, value in optional.items() if value is not None)
    return {"digest": measurement.hex, "inputs": inputs}


def sign_manifest(data: bytes, private_key: PrivateKey | str | bytes) -> bytes:
    """A detached signature over the exact manifest bytes ``data``, for vendors.

    ``private_key`` is an Ed25519 or ECDSA P-256/P-384 key (object, or
    unencrypted PEM). ECDSA signatures are DER, hashed with SHA-256 (P-256) or
    SHA-384 (P-384) -- what ``openssl dgst -sha256 -sign`` writes.
    """
    if not isinstance(data, bytes):
        raise ConfigurationError(f"data: expected the manifest's bytes, found {type(data).__name__}")
    key: Any = private_key
    if isinstance(private_key, (str, bytes)):
        pem = private_key.encode("ascii") if isinstance(private_key, str) else private_key
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigurationError(
                f"private_key: expected an unencrypted PEM private key, found an unreadable one ({exc})"
            ) from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _HASH_FOR_CURVE:
        return key.sign(data, ec.ECDSA(_HASH_FOR_CURVE[key.curve.name]()))
    raise ConfigurationError(
        f"private_key: expected an Ed25519 or ECDSA P-256/P-384 key, found {_key_kind(key)}"
    )


# ------------------------------------------------------------------------------------- reading


def _read_source(source: object, timeout: float) -> bytes:
    if isinstance(source, bytes):
        raw = source
    elif isinstance(source, str) and _SCHEME_RE.match(source):
        raw = _fetch(source, MAX_MANIFEST_BYTES, "manifest", timeout)
    elif isinstance(source, str) and source.lstrip().startswith("{"):
        raw = source.encode("utf-8", "surrogatepass")
    elif isinstance(source, (str, os.PathLike)):
        raw = _read_file(source, MAX_MANIFEST_BYTES, "manifest")
    else:
        raise ManifestError(
            "manifest: expected a path, an https:// URL, JSON text or bytes, or a dict, "
            f"found {type(source).__name__}"
        )
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest: expected at most {MAX_MANIFEST_BYTES} bytes, found {len(raw)}")
    return raw


def _read_signature(signature: object, timeout: float) -> bytes:
    if isinstance(signature, bytes):
        raw = signature
    elif isinstance(signature, str) and _SCHEME_RE.match(signature):
        raw = _fetch(signature, MAX_SIGNATURE_BYTES, "signature", timeout)
    elif isinstance(signature, (str, os.PathLike)):
        raw = _read_file(signature, MAX_SIGNATURE_BYTES, "signature")
    else:
        raise ManifestError(
            "signature: expected raw signature bytes, a path or an https:// URL, "
            f"found {type(signature).__name__}"
        )
    if not raw or len(raw) > MAX_SIGNATURE_BYTES:
        raise ManifestError(f"signature: expected 1 to {MAX_SIGNATURE_BYTES} bytes, found {len(raw)}")
    return raw


def _read_file(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ManifestError(f"{what}: cannot read {os.fspath(path)!r} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise ManifestError(f"{what}: expected at most {limit} bytes, found more in {os.fspath(path)!r}")
    return data


def _fetch(url: str, limit: int, what: str, timeout: float) -> bytes:
    """GET ``url`` over WebPKI-verified HTTPS, following at most a few https-only redirects."""
    for _ in range(MAX_REDIRECTS + 1):
        if not url.lower().startswith("https://"):
            raise ManifestError(
                f"{what} URL: expected https:// (fetched with WebPKI-verified TLS), found {url!r}"
            )
        try:
            response = requests.get(
                url, timeout=timeout, stream=True, allow_redirects=False, verify=True,
                headers={"Accept": "application/json, */*"},
            )
        except requests.RequestException as exc:
            raise ManifestError(f"{what}: fetching {url} failed ({type(exc).__name__}: {exc})") from None
        with response:
            if response.is_redirect:
                url = urljoin(url, response.headers["Location"])
                continue
            if response.status_code != 200:
                raise ManifestError(
                    f"{what}: expected HTTP 200 from {url}, found HTTP {response.status_code}"
                )
            try:
                body = read_bounded(response, limit, chunk_size=64 * 1024)
            except requests.RequestException as exc:
                raise ManifestError(f"{what}: reading {url} failed ({type(exc).__name__}: {exc})") from None
            if body is None:
                raise ManifestError(f"{what}: expected at most {limit} bytes from {url}, found more; refused")
            return body
    raise ManifestError(f"{what}: expected at most {MAX_REDIRECTS} redirects, found more (last: {url})")



# ------------------------------------------------------------------------------------- signatures


def _load_publisher_key(pem: object) -> PublicKey:
    if isinstance(pem, str):
        pem = pem.encode("ascii", "replace")
    if not isinstance(pem, bytes):
        raise ManifestError(f"publisher_key: expected a PEM public key, found {type(pem).__name__}")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ManifestError(
            f"publisher_key: expected a PEM SubjectPublicKeyInfo, found an unreadable one ({exc})"
        ) from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _HASH_FOR_CURVE:
        return key
    raise ManifestError(
        f"publisher_key: expected an Ed25519 or ECDSA P-256/P-384 public key, found {_key_kind(key)}"
    )


def _verify_signature(data: bytes, signature: bytes, key: PublicKey) -> None:
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            algorithm = "Ed25519"
            key.verify(signature, data)
        else:
            algorithm = f"ECDSA {key.curve.name}"
            key.verify(signature, data, ec.ECDSA(_HASH_FOR_CURVE[key.curve.name]()))
    except InvalidSignature:
        raise ManifestError(
            f"signature: expected a valid {algorithm} signature over the manifest's exact bytes by the "
            f"pinned publisher key (SPKI SHA-256 {hashlib.sha256(spki).hexdigest()}), found an invalid one"
        ) from None


def _key_kind(key: object) -> str:
    curve = getattr(key, "curve", None)
    return f"{type(key).__name__}{f' ({curve.name})' if curve is not None else ''}"


# ------------------------------------------------------------------------------------- validation


def _from_document(doc: object, *, sha256: str | None, signed: bool) -> Manifest:
    top = _object(doc, "$", _TOP_MEMBERS, _TOP_REQUIRED)
    if top["schema"] != SCHEMA:
        _fail("$.schema", f"{SCHEMA!r} (this BlindBox reads v1 manifests only)", top["schema"])
    name = _text(top["name"], "$.name", MAX_NAME_LENGTH)
    version = _text(top["version"], "$.version", MAX_VERSION_LENGTH)
    entries = top["measurements"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_MEASUREMENTS:
        _fail("$.measurements", f"an array of 1 to {MAX_MEASUREMENTS} measurements", entries)
    measurements = tuple(_measurement(entry, f"$.measurements[{i}]") for i, entry in enumerate(entries))
    seen: set[bytes] = set()
    for index, measurement in enumerate(measurements):
        if measurement.digest in seen:
            _fail(f"$.measurements[{index}].digest", "a digest not listed before", measurement.hex)
        seen.add(measurement.digest)
    policy_fields = top.get("policy", {})
    if not isinstance(policy_fields, dict):
        _fail("$.policy", "an object (appraisal policy fields)", policy_fields)
    if "measurements" in policy_fields:
        raise ManifestError(
            "$.policy.measurements: expected no such member (accepted measurements are $.measurements), "
            "found one"
        )
    try:
        policy = AttestationPolicy.from_dict({**policy_fields, "measurements": [m.hex for m in measurements]})
    except (ConfigurationError, TypeError, ValueError) as exc:
        # AttestationPolicy's messages start with the field they are about ("policy: ..." for the whole).
        text = str(exc)
        raise ManifestError(f"$.{text}" if text.startswith("policy:") else f"$.policy.{text}") from None
    requirements = None
    if "owner_policy" in top:
        requirements = _requirements(top["owner_policy"], "$.owner_policy")
    return Manifest(
        name=name,
        version=version,
        measurements=measurements,
        sha256=sha256,
        signed=signed,
        _policy=policy,
        _requirements=requirements,
    )


def _measurement(value: object, path: str) -> Measurement:
    entry = _object(value, path, _ENTRY_MEMBERS, _ENTRY_MEMBERS)
    digest = entry["digest"]
    if not isinstance(digest, str) or not _HEX96_RE.fullmatch(digest):
        _fail(f"{path}.digest", "96 lowercase hex characters (a SHA-384 launch digest)", digest)
    where = f"{path}.inputs"
    inputs = _object(entry["inputs"], where, _INPUT_MEMBERS, _INPUT_REQUIRED)
    for name in ("ovmf_sha256", "kernel_sha256", "initrd_sha256"):
        if name in inputs and (not isinstance(inputs[name], str) or not _HEX64_RE.fullmatch(inputs[name])):
            _fail(f"{where}.{name}", "64 lowercase hex characters (a SHA-256 digest)", inputs[name])
    if "ovmf_hash" in inputs and (
        not isinstance(inputs["ovmf_hash"], str) or not _HEX96_RE.fullmatch(inputs["ovmf_hash"])
    ):
        _fail(f"{where}.ovmf_hash", "96 lowercase hex characters (OVMF hash seed)", inputs["ovmf_hash"])
    if type(inputs["vcpus"]) is not int:
        _fail(f"{where}.vcpus", "an integer", inputs["vcpus"])
    for name in ("vmm", "vcpu_type", "ovmf_name", "append"):
        if name in inputs and not isinstance(inputs[name], str):
            _fail(f"{where}.{name}", "a string", inputs[name])
    for name in ("initrd_sha256", "append"):
        if name in inputs and "kernel_sha256" not in inputs:
            raise ManifestError(
                f"{where}.kernel_sha256: expected a measured kernel when {name} is given, found none"
            )
    features = inputs["guest_features"]
    if not isinstance(features, str) or not _FEATURES_RE.fullmatch(features):
        _fail(f"{where}.guest_features", "a lowercase hex string such as '0x1' (no leading zeros)", features)
    try:
        return Measurement(
            digest=bytes.fromhex(digest),
            ovmf_sha256=inputs["ovmf_sha256"],
            vcpus=inputs["vcpus"],
            vmm=inputs["vmm"],
            guest_features=int(features, 16),
            vcpu_type=inputs.get("vcpu_type"),
            kernel_sha256=inputs.get("kernel_sha256"),
            initrd_sha256=inputs.get("initrd_sha256"),
            append=inputs.get("append"),
            ovmf_name=inputs.get("ovmf_name"),
            ovmf_hash=inputs.get("ovmf_hash"),
        )
    except ConfigurationError as exc:
        raise ManifestError(f"{where}.{exc}") from None


def _requirements(value: object, path: str) -> PolicyRequirements:
    doc = _object(value, path, _OWNER_MEMBERS, ())
    if not doc:
        _fail(path, f"at least one of {', '.join(_OWNER_MEMBERS)}", "an empty object")
    digest = doc.get("sha256")
    if "sha256" in doc and (not isinstance(digest, str) or not _HEX64_RE.fullmatch(digest)):
        _fail(f"{path}.sha256", "64 lowercase hex characters (SHA-256 of the policy bytes)", digest)
    auth = doc.get("authentication_required")
    if "authentication_required" in doc and type(auth) is not bool:
        _fail(f"{path}.authentication_required", "true or false", auth)
    destinations: list[str | tuple[str, int]] | None = None
    if "egress_subset_of" in doc:
        destinations = []
        items = doc["egress_subset_of"]
        if not isinstance(items, list):
            _fail(f"{path}.egress_subset_of", "an array of {host, ports?} objects", items)
        hosts: set[str] = set()
        for index, item in enumerate(items):
            where = f"{path}.egress_subset_of[{index}]"
            rule = _object(item, where, ("host", "ports"), ("host",))
            host = rule["host"]
            if not isinstance(host, str) or host in hosts:
                _fail(f"{where}.host", "a host name not listed before", host)
            try:
                check_host(host, f"{where}.host")
            except ConfigurationError as exc:
                raise ManifestError(str(exc)) from None
            hosts.add(host)
            if "ports" not in rule:
                destinations.append(host)
                continue
            ports = rule["ports"]
            if not isinstance(ports, list) or not ports:
                _fail(f"{where}.ports", "a non-empty array of port numbers", ports)
            seen_ports: set[int] = set()  # a set, not ports[:index]: linear in the number of ports
            for port_index, port in enumerate(ports):
                if type(port) is not int or not 1 <= port <= 65535 or port in seen_ports:
                    _fail(f"{where}.ports[{port_index}]", "a port from 1 to 65535 not listed before", port)
                seen_ports.add(port)
                destinations.append((host, port))
    try:
        return PolicyRequirements(
            exact_digest=digest, authentication_required=auth, egress_subset_of=destinations
        )
    except ConfigurationError as exc:
        raise ManifestError(f"{path}: {exc}") from None


def _requirements_to_dict(requirements: PolicyRequirements) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if requirements.exact_digest is not None:
        out["sha256"] = requirements.exact_digest
    if requirements.authentication_required is not None:
        out["authentication_required"] = requirements.authentication_required
    if requirements.egress_subset_of is not None:
        by_host: dict[str, list[int] | None] = {}
        for host, port in requirements.egress_destinations():
            if port is None:
                by_host[host] = None
            else:
                ports = by_host.setdefault(host, [])
                if ports is not None:
                    ports.append(port)
        out["egress_subset_of"] = [
            {"host": host} if ports is None else {"host": host, "ports": ports}
            for host, ports in by_host.items()
        ]
    return out


def _object(value: object, path: str, members: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, "an object", value)
    unknown = sorted(set(value) - set(members))
    if unknown:
        raise ManifestError(
            f"{path}.{unknown[0]}: expected no such member (allowed here: {', '.join(members)}), found one; "
            "a manifest is never read partially"
        )
    for name in required:
        if name not in value:
            raise ManifestError(f"{path}.{name}: expected this required member, found none")
    return value


def _text(value: object, path: str, limit: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit or _CONTROL_RE.search(value):
        _fail(path, f"a string of 1 to {limit} characters without control characters", value)
    return value


def _fail(path: str, expected: str, found: object) -> NoReturn:
    raise ManifestError(f"{path}: expected {expected}, found {_describe(found)}")


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


