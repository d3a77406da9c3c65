"""``blindbox manifest create | sign | verify``: the vendor's side of signed manifests.

Each command returns 0 (done / verified) or 1 (refused: a recomputed digest does not match, or
could not be recomputed); everything else is a typed error the ``blindbox`` entry point maps to
its exit status -- :class:`~blindbox.errors.ManifestTrustError` (signature, identity, freshness,
rollback), :class:`~blindbox.errors.ManifestError` and other
:class:`~blindbox.errors.ConfigurationError` (malformed or unreadable input).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import hmac
import json
import os
import sys
from pathlib import Path
from typing import Any

from blindbox._argtypes import parse_at
from blindbox._text import shown
from blindbox.attest import strict_json
from blindbox.attest.manifest import (
    MAX_MANIFEST_BYTES,
    SCHEMA,
    Manifest,
    _read_file,
    sign_manifest,
)
from blindbox.attest.measure import Measurement, measure
from blindbox.errors import ConfigurationError, ManifestError

#: Upper bound on a key, entry, policy or signature file given to these commands.
_MAX_SMALL_FILE = 64 * 1024
_HASH_CHUNK = 1024 * 1024


def add_manifest_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``blindbox manifest`` and its three actions on the top-level subparsers."""
    parser = sub.add_parser(
        "manifest",
        help="create, sign and verify enclave manifests (for enclave vendors)",
        description=(
            "A manifest names a product release, its accepted launch measurements (with the inputs "
            "that produce them), its appraisal policy, a validity period and a sequence number. "
            "Users pin the vendor's public key and the product name; see docs/manifest.md."
        ),
        epilog="exit status: 0 done or verified, 1 a digest did not recompute, 2 usage error or "
               "malformed input, 3 a signature, name, validity or sequence check failed",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create", help="write a v2 manifest from `blindbox measure --manifest` entries",
        description="Build a blindbox-manifest-v2 document and check it before writing it.",
    )
    create.add_argument("--entry", action="append", required=True, metavar="FILE",
                        help="a measurement entry written by `blindbox measure --manifest FILE`; repeatable")
    create.add_argument("--name", required=True, help="product name (what users pin with --manifest-name)")
    create.add_argument("--version", required=True, dest="release", metavar="VERSION",
                        help="release version, e.g. 1.1.0")
    create.add_argument("--sequence", required=True, type=int, metavar="N",
                        help="release sequence number: higher than every earlier release of this product")
    create.add_argument("--description", help="free text for people")
    create.add_argument("--issued", type=parse_at, metavar="ISO_DATE", help="issue time (default: now)")
    validity = create.add_mutually_exclusive_group(required=True)
    validity.add_argument("--expires", type=parse_at, metavar="ISO_DATE", help="expiry time")
    validity.add_argument("--valid-days", type=int, metavar="DAYS",
                          help="expire this many days after --issued")
    create.add_argument("--policy", metavar="FILE", help="JSON object of appraisal policy fields")
    create.add_argument("--owner-policy", metavar="FILE",
                        help="JSON object of data-owner policy requirements")
    create.add_argument("-o", "--output", required=True, metavar="FILE")
    create.add_argument("--force", action="store_true", help="overwrite an existing output file")
    create.set_defaults(handler=_cmd_create)

    sign = actions.add_parser(
        "sign", help="sign a manifest with the publisher's private key",
        description="Check the manifest, then write a detached signature over the v2 signing context "
                    "and its exact bytes.",
    )
    sign.add_argument("manifest", metavar="MANIFEST")
    sign.add_argument("--key", required=True, metavar="PEM",
                      help="unencrypted PEM private key (Ed25519, ECDSA P-256 or P-384)")
    sign.add_argument("-o", "--output", metavar="FILE", help="signature file (default: MANIFEST.sig)")
    sign.add_argument("--force", action="store_true", help="overwrite an existing signature file")
    sign.set_defaults(handler=_cmd_sign)

    verify = actions.add_parser(
        "verify", help="verify a signed manifest as a client would, optionally recomputing its digests",
        description=(
            "Verify the signature under the pinned publisher key, the product name, the validity "
            "period (at --at, default now) and the sequence (at least --min-sequence and, without "
            "--at, at least the highest verified before by this user; a higher one is recorded). "
            "The measurement inputs are claims until recomputed: --recompute FILE... recomputes "
            "every digest from the given firmware, kernel and initrd files (matched by SHA-256)."
        ),
    )
    verify.add_argument("manifest", metavar="MANIFEST", help="path or https:// URL")
    verify.add_argument("--signature", metavar="FILE_OR_URL",
                        help="detached signature (default: MANIFEST.sig)")
    verify.add_argument("--publisher-key", required=True, metavar="PEM", help="the publisher's public key")
    verify.add_argument("--manifest-name", required=True, metavar="NAME", help="the product you expect")
    verify.add_argument("--min-sequence", type=int, metavar="N", help="refuse a lower sequence")
    verify.add_argument("--at", type=parse_at, metavar="ISO_DATE",
                        help="check validity at this time (offline checks of old material; the recorded "
                             "sequence is then neither consulted nor raised)")
    verify.add_argument("--recompute", nargs="+", metavar="FILE",
                        help="recompute every digest from these input files (OVMF, kernels, initrds)")
    verify.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    verify.set_defaults(handler=_cmd_verify)


# ------------------------------------------------------------------------------------- create


def _cmd_create(args: argparse.Namespace) -> int:
    issued = (args.issued or _dt.datetime.now(_dt.timezone.utc)).replace(microsecond=0)
    if args.valid_days is not None:
        if not 1 <= args.valid_days <= 3660:
            raise ConfigurationError(f"--valid-days: expected 1 to 3660 days, found {args.valid_days}")
        expires = issued + _dt.timedelta(days=args.valid_days)
    else:
        expires = args.expires.replace(microsecond=0)
    doc: dict[str, Any] = {"schema": SCHEMA, "name": args.name, "version": args.release}
    if args.description is not None:
        doc["description"] = args.description
    doc.update({
        "sequence": args.sequence,
        "issued": _timestamp(issued),
        "expires": _timestamp(expires),
        "measurements": [_read_json(path, "--entry") for path in args.entry],
    })
    if args.policy:
        doc["policy"] = _read_json(args.policy, "--policy")
    if args.owner_policy:
        doc["owner_policy"] = _read_json(args.owner_policy, "--owner-policy")
    data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    manifest = Manifest.load(data, at=issued)  # every rule a client applies, before anything is written
    _write_new(Path(args.output), data, args.force)
    print(f"wrote {args.output}: {shown(manifest.name)} {shown(manifest.version)}, sequence "
          f"{manifest.sequence}, valid {doc['issued']} to {doc['expires']}, "
          f"{len(manifest.measurements)} measurement(s); sign it with `blindbox manifest sign`")
    return 0


# ------------------------------------------------------------------------------------- sign


def _cmd_sign(args: argparse.Namespace) -> int:
    data = _read_file(args.manifest, MAX_MANIFEST_BYTES, "manifest")
    manifest = Manifest.load(data)  # never sign what a client would refuse (v1, expired, malformed)
    key_pem = _read_file(args.key, _MAX_SMALL_FILE, "--key")
    signature = sign_manifest(data, key_pem)
    output = Path(args.output or f"{args.manifest}.sig")
    _write_new(output, signature, args.force)
    print(f"signed {args.manifest} ({shown(manifest.name)} {shown(manifest.version)}, sequence "
          f"{manifest.sequence}, sha256 {manifest.sha256}); signature written to {output}")
    return 0


# ------------------------------------------------------------------------------------- verify


def _cmd_verify(args: argparse.Namespace) -> int:
    key = _read_file(args.publisher_key, _MAX_SMALL_FILE, "--publisher-key")
    manifest = Manifest.load(
        args.manifest, signature=args.signature or f"{args.manifest}.sig", publisher_key=key,
        name=args.manifest_name, min_sequence=args.min_sequence, at=args.at,
    )
    results = _recompute(manifest.measurements, args.recompute) if args.recompute else None
    passed = results is None or all(r["recomputed"] == "match" for r in results)
    summary = {
        "name": manifest.name, "version": manifest.version, "description": manifest.description,
        "sequence": manifest.sequence, "issued": _timestamp(manifest.issued),
        "expires": _timestamp(manifest.expires), "sha256": manifest.sha256,
        "publisher_key_sha256": manifest.publisher_key_sha256,
    }
    rows = results or [{"digest": m.hex, "recomputed": None} for m in manifest.measurements]
    if args.json:
        print(json.dumps({"verified": passed, "signed": True, "manifest": summary, "measurements": rows},
                         indent=2))
    else:
        _print_verified(manifest, rows, passed)
    return 0 if passed else 1


def _print_verified(manifest: Manifest, rows: list[dict[str, Any]], passed: bool) -> None:
    out = sys.stdout
    print(f"manifest: {shown(manifest.name)} {shown(manifest.version)} (sequence {manifest.sequence}, "
          f"valid {_timestamp(manifest.issued)} to {_timestamp(manifest.expires)})", file=out)
    print(f"sha256: {manifest.sha256}", file=out)
    print(f"signature: verified under the pinned publisher key (SPKI SHA-256 "
          f"{manifest.publisher_key_sha256})", file=out)
    print("measurements:", file=out)
    for row in rows:
        status = row["recomputed"]
        if status is None:
            text = "inputs are claims (not recomputed; use --recompute FILE...)"
        elif status == "match":
            text = "recomputed from the given files: match"
        elif status == "mismatch":
            text = f"recomputed from the given files: MISMATCH (recomputed {row['found']})"
        else:
            text = f"NOT recomputed: no given file has SHA-256 {', '.join(row['missing'])}"
        print(f"  {row['digest']}  {text}", file=out)
    print(f"result: {'VERIFIED' if passed else 'REFUSED: a digest did not recompute'}", file=out)


def _recompute(measurements: tuple[Measurement, ...], paths: list[str]) -> list[dict[str, Any]]:
    """Each entry recomputed from the files whose SHA-256 its inputs name (never trusting the claim)."""
    by_digest = {_sha256_file(path): path for path in paths}
    rows: list[dict[str, Any]] = []
    for claimed in measurements:
        wanted = {"ovmf": claimed.ovmf_sha256, "kernel": claimed.kernel_sha256,
                  "initrd": claimed.initrd_sha256}
        missing = sorted(d for d in wanted.values() if d is not None and d not in by_digest)
        if missing:
            rows.append({"digest": claimed.hex, "recomputed": "not-recomputed", "missing": missing})
            continue
        found = measure(
            by_digest[claimed.ovmf_sha256], vcpus=claimed.vcpus, vcpu_type=claimed.vcpu_type,
            vmm=claimed.vmm, kernel=_path_for(claimed.kernel_sha256, by_digest),
            initrd=_path_for(claimed.initrd_sha256, by_digest), append=claimed.append,
            guest_features=claimed.guest_features, ovmf_hash=claimed.ovmf_hash,
        )
        # measure() hashes its own copy of each file: compare those too (a file changed meanwhile).
        same = hmac.compare_digest(found.digest, claimed.digest) and all(
            getattr(found, name) == getattr(claimed, name)
            for name in ("ovmf_sha256", "kernel_sha256", "initrd_sha256")
        )
        row: dict[str, Any] = {"digest": claimed.hex, "recomputed": "match" if same else "mismatch"}
        if not same:
            row["found"] = found.hex
        rows.append(row)
    return rows


def _path_for(digest: str | None, by_digest: dict[str, str]) -> str | None:
    return None if digest is None else by_digest[digest]


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ConfigurationError(f"--recompute: cannot read {path!r} ({exc.strerror or exc})") from None
    return digest.hexdigest()


# ------------------------------------------------------------------------------------- helpers


def _timestamp(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_json(path: str, what: str) -> Any:
    data = _read_file(path, _MAX_SMALL_FILE, what)
    try:
        return strict_json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(
            f"{what} {path!r}: expected a UTF-8 JSON document, found invalid JSON ({exc})"
        ) from None


def _write_new(path: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to ``path``; an existing file is refused unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise ConfigurationError(f"{path}: already exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot write ({exc.strerror or exc})") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)

