"""A pinned publisher key makes the hosting untrusted (issue 18 §1): each attack performed, and refused.

Whoever serves the manifest (or any redirect on the way) holds every manifest the publisher ever
signed. These tests serve the wrong one -- an older release, another product, an expired or
future one, a v1 document -- and check that each is refused with a ManifestTrustError that says
what was expected and what was found; and that the rollback marks are kept like a trust input.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from blindbox.attest import sequence_state
from blindbox.attest.manifest import MAX_CLOCK_SKEW, SCHEMA, Manifest, sign_manifest
from blindbox.errors import ManifestError, ManifestStateWarning, ManifestTrustError

OLD, NEW = "aa" * 48, "bb" * 48
NAME = "Example transcription enclave"
INPUTS = {"ovmf_sha256": "ab" * 32, "vcpus": 4, "vcpu_type": "EPYC-Milan", "vmm": "qemu",
          "guest_features": "0x1"}
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
URL = "https://vendor.example/enclave/manifest.json"


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def release(version: str, sequence: int, digest: str, *, name: str = NAME, issued: dt.datetime | None = None,
            expires: dt.datetime | None = None, **members: Any) -> bytes:
    issued = issued or NOW - dt.timedelta(days=1)
    doc = {"schema": SCHEMA, "name": name, "version": version, "sequence": sequence,
           "issued": stamp(issued), "expires": stamp(expires or issued + dt.timedelta(days=90)),
           "measurements": [{"digest": digest, "inputs": INPUTS}], **members}
    return json.dumps(doc, indent=2).encode()


class Publisher:
    def __init__(self) -> None:
        self.key = ed25519.Ed25519PrivateKey.generate()
        self.pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes) -> bytes:
        return sign_manifest(data, self.key)

    def load(self, data: bytes, **kwargs: Any) -> Manifest:
        kwargs.setdefault("name", NAME)
        return Manifest.load(data, signature=self.sign(data), publisher_key=self.pem, **kwargs)


@pytest.fixture
def vendor() -> Publisher:
    return Publisher()


def state_file(publisher: Publisher, state: Path) -> Path:
    manifest = publisher.load(release("0", 1, OLD), at=NOW)  # at=: nothing recorded
    assert manifest.publisher_key_sha256 is not None
    return state / "blindbox" / "manifest-sequences" / f"{manifest.publisher_key_sha256}.json"


# ----------------------------------------------------------------------------- rollback


def test_rollback_to_an_older_release_is_refused(vendor: Publisher, _private_state_dir: Path) -> None:
    v100, v110 = release("1.0.0", 1, OLD), release("1.1.0", 2, NEW, policy={"min_tcb": "amd-recommended"})
    sig100 = vendor.sign(v100)
    assert vendor.load(v100).sequence == 1  # a client that saw 1.0.0 first
    current = vendor.load(v110)
    assert current.signed and current.measurements[0].hex == NEW
    # The hosting now serves the withdrawn 1.0.0 bytes with their genuine signature.
    with pytest.raises(ManifestTrustError) as info:
        Manifest.load(v100, signature=sig100, publisher_key=vendor.pem, name=NAME)
    message = str(info.value)
    assert "sequence: expected at least 2" in message and "found 1" in message and "rollback" in message
    mark = json.loads(state_file(vendor, _private_state_dir).read_text())
    assert mark["sequences"] == {NAME: 2}
    # The same release again is fine; a newer one raises the mark.
    vendor.load(v110)
    vendor.load(release("1.2.0", 5, NEW))
    with pytest.raises(ManifestTrustError, match="expected at least 5"):
        vendor.load(v110)


def test_the_mark_is_per_key_and_product(vendor: Publisher) -> None:
    vendor.load(release("9.0", 9, NEW))
    vendor.load(release("1.0", 1, OLD, name="Another product"), name="Another product")
    other = Publisher()
    other.load(release("1.0", 1, OLD))  # another key's history is its own
    with pytest.raises(ManifestTrustError, match="expected at least 9"):
        vendor.load(release("8.0", 8, NEW))


def test_min_sequence(vendor: Publisher) -> None:
    with pytest.raises(ManifestTrustError, match=r"\$\.sequence: expected at least 3 \(min_seq"):
        vendor.load(release("1.1.0", 2, NEW), min_sequence=3)
    assert vendor.load(release("1.2.0", 3, NEW), min_sequence=3).sequence == 3
    # Unsigned manifests are held to it as well.
    with pytest.raises(ManifestTrustError, match="min_sequence"):
        Manifest.load(release("1.1.0", 2, NEW), min_sequence=3)
    for bad in (-1, 2**53, "3", 1.0, True):
        with pytest.raises(ManifestError, match="min_sequence: expected an integer"):
            vendor.load(release("1.2.0", 3, NEW), min_sequence=bad)


# ----------------------------------------------------------------------------- identity


def test_another_product_of_the_same_publisher_is_refused(vendor: Publisher) -> None:
    internal = release("1.1.0-internal", 50, NEW, name="Internal debug build",
                       policy={"debug": "any", "vmpls": [0, 1, 2, 3]})
    with pytest.raises(ManifestTrustError) as info:
        vendor.load(internal)
    assert str(info.value).startswith(
        f"$.name: expected {NAME!r} (the product you asked for), found 'Internal debug build'")
    with pytest.raises(ManifestError, match=r"manifest name: expected the name of the product .* found none"):
        Manifest.load(internal, signature=vendor.sign(internal), publisher_key=vendor.pem)
    with pytest.raises(ManifestTrustError, match="the product you asked for"):
        Manifest.load(internal, name=NAME)  # checked when given, signed or not


def test_signature_is_domain_separated(vendor: Publisher) -> None:
    data = release("1.0.0", 1, OLD)
    bare = vendor.key.sign(data)  # the publisher's key signing the bytes alone, for something else
    with pytest.raises(ManifestTrustError, match="v1 signature over the bare bytes"):
        Manifest.load(data, signature=bare, publisher_key=vendor.pem, name=NAME)
    assert sign_manifest(data, vendor.key) != bare


# ----------------------------------------------------------------------------- freshness


def test_expired_manifest_is_refused(vendor: Publisher) -> None:
    old = release("1.0.0", 1, OLD, issued=NOW - dt.timedelta(days=100), expires=NOW - dt.timedelta(seconds=1))
    with pytest.raises(ManifestTrustError) as info:
        vendor.load(old)
    assert "$.expires: expected a manifest still valid at" in str(info.value)
    assert f"expired at {stamp(NOW - dt.timedelta(seconds=1))}" in str(info.value)
    # Offline checks of old material: at= inside the validity, and the mark is left alone.
    then = NOW - dt.timedelta(days=50)
    assert vendor.load(old, at=then).version == "1.0.0"
    with pytest.raises(ManifestTrustError, match="expired"):
        Manifest.load(old)  # unsigned manifests expire too


def test_future_issued_manifest_is_refused_beyond_the_skew(vendor: Publisher) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)  # not NOW: the suite may run for minutes
    ahead = release("2.0.0", 3, NEW, issued=now + MAX_CLOCK_SKEW + dt.timedelta(minutes=1))
    with pytest.raises(ManifestTrustError, match=r"\$\.issued: expected a time no later .* future"):
        vendor.load(ahead)
    slightly = release("2.0.0", 3, NEW, issued=now + dt.timedelta(minutes=2))
    assert vendor.load(slightly).sequence == 3


def test_at_checks_old_material_without_touching_the_mark(vendor: Publisher,
                                                          _private_state_dir: Path) -> None:
    vendor.load(release("3.0", 3, NEW))
    path = state_file(vendor, _private_state_dir)
    before = path.read_bytes()
    old = release("1.0", 1, OLD, issued=NOW - dt.timedelta(days=400), expires=NOW - dt.timedelta(days=300))
    assert vendor.load(old, at=NOW - dt.timedelta(days=350)).sequence == 1
    assert path.read_bytes() == before
    with pytest.raises(ManifestError, match="at: expected a timezone-aware datetime"):
        vendor.load(old, at=dt.datetime(2025, 1, 1))  # a naive datetime: the point of the test


# ----------------------------------------------------------------------------- v1


def test_v1_manifests_are_refused_with_how_to_re_sign(vendor: Publisher) -> None:
    v1 = json.dumps({"schema": "blindbox-manifest-v1", "name": NAME, "version": "1",
                     "measurements": [{"digest": OLD, "inputs": INPUTS}]}).encode()
    with pytest.raises(ManifestError) as info:
        Manifest.load(v1)
    assert not isinstance(info.value, ManifestTrustError)
    assert "found 'blindbox-manifest-v1': v1 manifests are no longer accepted" in str(info.value)
    assert "blindbox manifest sign" in str(info.value)
    # Signed the v1 way (over the bare bytes): a trust failure that says what to do.
    with pytest.raises(ManifestTrustError, match="v1 manifests are no longer accepted"):
        Manifest.load(v1, signature=vendor.key.sign(v1), publisher_key=vendor.pem, name=NAME)
    # Even with a v2 signature, the v1 document is refused.
    with pytest.raises(ManifestError, match="v1 manifests are no longer accepted"):
        vendor.load(v1)


# ----------------------------------------------------------------------------- the state is a trust input


def test_state_is_private_and_atomic(vendor: Publisher, _private_state_dir: Path) -> None:
    vendor.load(release("1", 4, NEW))
    path = state_file(vendor, _private_state_dir)
    for level in (path.parent.parent, path.parent):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    assert sequence_state.state_directory() == path.parent


@pytest.mark.parametrize("target", ["root", "directory", "file"])
def test_group_or_world_writable_state_is_refused(vendor: Publisher, _private_state_dir: Path,
                                                  target: str) -> None:
    vendor.load(release("1", 4, NEW))
    path = state_file(vendor, _private_state_dir)
    victim = {"root": path.parent.parent, "directory": path.parent, "file": path}[target]
    victim.chmod(0o666 if target == "file" else 0o777)
    with pytest.raises(ManifestTrustError) as info:
        vendor.load(release("1", 4, NEW))
    assert f"expected {victim} to be" in str(info.value) and "writable by group or others" in str(info.value)


def test_state_owned_by_another_user_is_refused(vendor: Publisher, _private_state_dir: Path) -> None:
    vendor.load(release("1", 4, NEW))
    path = state_file(vendor, _private_state_dir)
    if os.geteuid() != 0:
        pytest.skip("needs root (to give the state file to another user); the mode checks run without it")
    os.chown(path, 4242, 4242)
    with pytest.raises(ManifestTrustError, match=r"owned by uid 4242, not by this user"):
        vendor.load(release("1", 4, NEW))


def test_symlinked_or_special_state_file_is_refused(vendor: Publisher, _private_state_dir: Path,
                                                    tmp_path: Path) -> None:
    vendor.load(release("1", 4, NEW))
    path = state_file(vendor, _private_state_dir)
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(json.dumps({"format": sequence_state.FORMAT, "sequences": {NAME: 0},
                                     "publisher_key_sha256": path.stem}))
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(ManifestTrustError, match="a symbolic link is refused"):
        vendor.load(release("0", 1, OLD))
    path.unlink()
    os.mkfifo(path)  # a FIFO would block a plain open() forever
    with pytest.raises(ManifestTrustError, match="found it not a regular file"):
        vendor.load(release("0", 1, OLD))


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"format": "x"}', b"\xff",
                                     b'{"format": "blindbox-manifest-sequences-v1", "publisher_key_sha256": '
                                     b'"00", "sequences": {}}'])
def test_unreadable_state_fails_closed(vendor: Publisher, _private_state_dir: Path, content: bytes) -> None:
    vendor.load(release("1", 4, NEW))
    path = state_file(vendor, _private_state_dir)
    path.write_bytes(content)
    with pytest.raises(ManifestTrustError, match="the highest sequence seen is unknown"):
        vendor.load(release("0", 1, OLD))


def test_reset_by_removing_the_file(vendor: Publisher, _private_state_dir: Path) -> None:
    vendor.load(release("9", 9, NEW))
    with pytest.raises(ManifestTrustError):
        vendor.load(release("1", 1, OLD))
    state_file(vendor, _private_state_dir).unlink()  # the documented reset
    assert vendor.load(release("1", 1, OLD)).sequence == 1


def test_unwritable_state_home_warns_and_still_checks(vendor: Publisher,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # /sys refuses new directories for every user (EPERM or EACCES): the mark cannot be created.
    monkeypatch.setenv("XDG_STATE_HOME", "/sys/blindbox-test-state")
    with pytest.warns(ManifestStateWarning, match=r"cannot create the manifest rollback state directory "
                                                  r"/sys/blindbox-test-state/blindbox/manifest-sequences"):
        assert vendor.load(release("1", 4, NEW)).sequence == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ManifestStateWarning)
        with pytest.raises(ManifestTrustError, match="min_sequence"):
            vendor.load(release("1", 4, NEW), min_sequence=5)  # never a silent pass of the other rules


def test_failed_write_warns_and_the_recorded_mark_still_holds(vendor: Publisher, _private_state_dir: Path,
                                                             tmp_path: Path) -> None:
    """In a child process whose file writes fail (RLIMIT_FSIZE 0, for root too): a warning, not a pass."""
    vendor.load(release("5", 5, NEW))
    newer, older = release("6", 6, NEW), release("4", 4, OLD)
    for name, data in (("newer", newer), ("older", older)):
        (tmp_path / name).write_bytes(data)
        (tmp_path / f"{name}.sig").write_bytes(vendor.sign(data))
    (tmp_path / "key.pem").write_bytes(vendor.pem)
    script = f"""
import resource, signal, sys, warnings
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
from blindbox.attest.manifest import Manifest
from blindbox.errors import ManifestTrustError
d = {str(tmp_path)!r}
key = open(d + "/key.pem", "rb").read()
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    m = Manifest.load(d + "/newer", signature=d + "/newer.sig", publisher_key=key, name={NAME!r})
print("loaded", m.sequence, [type(w.message).__name__ + ": " + str(w.message) for w in seen])
try:
    Manifest.load(d + "/older", signature=d + "/older.sig", publisher_key=key, name={NAME!r})
except ManifestTrustError as exc:
    print("refused", exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "XDG_STATE_HOME": str(_private_state_dir)}, check=False)
    assert result.returncode == 0, result.stderr
    assert "loaded 6 " in result.stdout
    assert "ManifestStateWarning: cannot record sequence 6 of" in result.stdout
    assert "later sessions will not know it was seen" in result.stdout
    assert "refused sequence: expected at least 5" in result.stdout
    assert json.loads(state_file(vendor, _private_state_dir).read_text())["sequences"] == {NAME: 5}


# ------------------------------------------------------------------ fetch (issue 18 §9, issue 10 §3)


@responses.activate
def test_malformed_redirect_location_is_a_manifest_error() -> None:
    for location in ("https://[::1/m.json", "https://[vendor.example]/m", "https://vendor.example:99999/m",
                     "https://vendor.example:port/m"):
        responses.get(URL, status=302, headers={"Location": location})
        with pytest.raises(ManifestError, match=r"^manifest: (fetching https://vendor\.example failed "
                                                r"\(ValueError: \S.*\)|expected a valid redirect "
                                                r"Location from https://vendor\.example, found)"):
            Manifest.load(URL)
        responses.reset()


@responses.activate
def test_presigned_url_secrets_never_reach_messages_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    from blindbox.requests.config import build_expectations

    secret_url = "https://bucket.example/m.json?X-Amz-Signature=s3cr3t&token=t0k3n#frag"
    responses.get("https://bucket.example/m.json", status=403)
    caplog.set_level("DEBUG")
    messages = []
    for source in (secret_url,
                   "https://user:hunter2@bucket.example/m.json?token=t0k3n",  # not mocked: refused
                   "http://user:hunter2@bucket.example/m.json?token=t0k3n"):  # not https: no request
        with pytest.raises(ManifestError) as info:
            Manifest.load(source)
        messages.append(str(info.value))
        with pytest.raises(ManifestError) as again:
            build_expectations(measurements=None, manifest=source, manifest_signature=None,
                               publisher_key=None, expected_policy=None, policy={}, caller="test")
        messages.append(str(again.value))
    assert "https://bucket.example, found HTTP 403" in messages[0]
    for text in [*messages, caplog.text]:
        for secret in ("hunter2", "s3cr3t", "t0k3n", "frag", "user"):
            assert secret not in text, text


def test_many_ports_are_checked_in_linear_time() -> None:
    """Issue 18 §9: the duplicate-port check rescanned the list (tens of thousands of ports: tens of s)."""
    import time

    ports = list(range(1, 65536))
    owner = {"egress_subset_of": [{"host": "api.example.com", "ports": ports}]}
    def compact(members: dict[str, Any]) -> bytes:
        return json.dumps(json.loads(release("1", 1, OLD, **members)), separators=(",", ":")).encode()

    data = compact({"owner_policy": owner})
    assert len(data) < 1024 * 1024
    started = time.monotonic()
    manifest = Manifest.load(data)
    requirements = manifest.policy_requirements()
    assert requirements is not None and len(requirements.egress_destinations()) == 65535
    from blindbox.attest.owner_policy import EgressRule, OwnerPolicy

    requirements.check(OwnerPolicy(False, egress_allow=[EgressRule("api.example.com", list(range(1, 2000)))])
                       .to_bytes())
    owner["egress_subset_of"][0]["ports"] = [*ports, 65535]
    with pytest.raises(ManifestError, match=r"ports\[65535\]: expected a port from 1 to 65535 not listed"):
        Manifest.load(compact({"owner_policy": owner}))
    assert time.monotonic() - started < 10  # generous: linear work takes well under a second


@responses.activate
def test_a_loaded_presigned_url_is_logged_without_its_token(caplog: pytest.LogCaptureFixture) -> None:
    from blindbox.requests.config import build_expectations

    responses.get("https://bucket.example/ok.json", body=release("1", 1, OLD))
    caplog.set_level("DEBUG", logger="blindbox.requests")
    loaded = build_expectations(measurements=None, manifest="https://bucket.example/ok.json?token=t0k3n",
                                manifest_signature=None, publisher_key=None, expected_policy=None, policy={},
                                caller="test")
    assert loaded.manifest is not None and loaded.manifest.name == NAME
    assert "from manifest=https://bucket.example (sha256" in caplog.text
    assert "t0k3n" not in caplog.text
