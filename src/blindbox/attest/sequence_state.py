"""The highest manifest ``sequence`` this user has verified, per publisher key and product.

A signed manifest stays valid until it expires, so without memory a client would accept an older
release that its publisher has since replaced. :func:`enforce` keeps a high-water mark in the
user's own state directory (``platformdirs.user_state_dir("blindbox")/manifest-sequences``, on
Linux ``$XDG_STATE_HOME/blindbox/...`` or ``~/.local/state/blindbox/...``): one file per publisher
key (named by its SPKI SHA-256) holding the highest sequence seen for each product name. A lower
sequence is refused with :class:`~blindbox.errors.ManifestTrustError`.

The state is a trust input, so it is read like one: every directory level is created 0700, and a
level or file that is not a directory/regular file, not owned by this user, or writable by group or
others is refused (never silently ignored); files are opened with ``O_NOFOLLOW|O_NONBLOCK`` and
checked after ``fstat``; updates happen under an exclusive lock and replace the file atomically.
When the state cannot be created or written (a read-only home) a
:class:`~blindbox.errors.ManifestStateWarning` says so and names the path: the manifest is still
checked against any mark already recorded, but later sessions lose this one. On Windows (no
``flock``, ``O_NOFOLLOW`` or owner ids) no mark is kept and every call warns so.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import stat
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import platformdirs

from blindbox._text import shown
from blindbox.attest import strict_json
from blindbox.errors import ManifestStateWarning, ManifestTrustError

log = logging.getLogger("blindbox.attest")

#: Sub-directory of the user state directory holding the marks.
STATE_SUBDIR = "manifest-sequences"
FORMAT = "blindbox-manifest-sequences-v1"
MAX_STATE_BYTES = 256 * 1024
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


def state_directory() -> Path:
    """Where the marks live (nothing is created)."""
    return Path(platformdirs.user_state_dir("blindbox")) / STATE_SUBDIR


def enforce(publisher_sha256: str, name: str, sequence: int) -> None:
    """Refuse ``sequence`` below the highest recorded for (publisher key, name); record a higher one."""
    if not _HEX64_RE.fullmatch(publisher_sha256):
        raise ValueError("publisher_sha256: expected 64 lowercase hex characters")
    directory = state_directory()
    if sys.platform == "win32":  # no flock, O_NOFOLLOW or owner ids to check: no mark is kept there
        _warn(f"the manifest rollback state is not kept on this platform; sequence {sequence} of "
              f"{shown(name)!r} is not recorded (pass min_sequence= to refuse older releases)")
        return
    import fcntl  # POSIX only

    try:
        _make_private_dirs(directory)
    except _Unwritable as exc:
        _warn(f"cannot create the manifest rollback state directory {directory} ({exc}); "
              f"sequence {sequence} of {shown(name)!r} is not recorded for later sessions")
        return
    path = directory / f"{publisher_sha256}.json"
    lock = _open_directory(directory)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marks = _read_marks(path, publisher_sha256)
        seen = marks.get(name, 0)
        if sequence < seen:
            raise ManifestTrustError(
                f"sequence: expected at least {seen} (the highest sequence of {shown(name)!r} verified "
                f"before under this publisher key, recorded in {path}), found {sequence}: an older "
                "release is being served (rollback); see docs/manifest.md to reset the mark if this is "
                "intended"
            )
        if sequence > seen:
            marks[name] = sequence
            try:
                _write_marks(directory, path, publisher_sha256, marks)
            except OSError as exc:
                _warn(f"cannot record sequence {sequence} of {shown(name)!r} in {path} "
                      f"({exc.strerror or exc}); later sessions will not know it was seen")
    finally:
        os.close(lock)


class _Unwritable(Exception):
    """The state directory cannot be created (read-only or missing home)."""


def _warn(message: str) -> None:
    log.warning("%s", message)
    warnings.warn(ManifestStateWarning(message), stacklevel=3)


def _make_private_dirs(directory: Path) -> None:
    """Create ``.../blindbox/manifest-sequences`` (each BlindBox level 0700) and check both levels."""
    ours = [directory.parent, directory]
    try:
        directory.parent.parent.mkdir(parents=True, exist_ok=True)
        for level in ours:
            try:
                level.mkdir(mode=0o700)
            except FileExistsError:
                pass
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.ENOENT):
            raise _Unwritable(exc.strerror or str(exc)) from None
        raise ManifestTrustError(
            f"rollback state: cannot create {directory} ({exc.strerror or exc})"
        ) from None
    for level in ours:
        _check_owner(os.lstat(level), level, stat.S_ISDIR, "a directory")


def _check_owner(info: os.stat_result, path: Path, kind: Callable[[int], bool], what: str) -> None:
    problem = None
    if not kind(info.st_mode):
        problem = f"not {what}"
    elif info.st_uid != os.geteuid():
        problem = f"owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})"
    elif info.st_mode & 0o022:
        problem = f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    if problem is not None:
        raise ManifestTrustError(
            f"rollback state: expected {path} to be {what} owned by this user and writable only by it, "
            f"found it {problem}; another user could lower the recorded sequences. Fix it "
            f"(chmod 700 / chown) or remove it (see docs/manifest.md)"
        )


def _open_directory(directory: Path) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ManifestTrustError(f"rollback state: cannot open {directory} ({exc.strerror or exc})") from None


def _read_marks(path: Path, publisher_sha256: str) -> dict[str, int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ManifestTrustError(
            f"rollback state: cannot open {path} ({exc.strerror or exc}); it must be a regular file "
            "owned by this user (a symbolic link is refused)"
        ) from None
    try:
        _check_owner(os.fstat(fd), path, stat.S_ISREG, "a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_STATE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"more than {MAX_STATE_BYTES} bytes")
        doc = strict_json.loads(data.decode("utf-8"))
        marks = doc.get("sequences") if isinstance(doc, dict) else None
        if (
            not isinstance(doc, dict)
            or set(doc) != {"format", "publisher_key_sha256", "sequences"}
            or doc["format"] != FORMAT
            or doc["publisher_key_sha256"] != publisher_sha256
            or not isinstance(marks, dict)
            or not all(type(v) is int and v >= 0 for v in marks.values())
        ):
            raise ValueError("not a BlindBox sequence file for this key")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestTrustError(
            f"rollback state: expected a {FORMAT} document in {path}, found an unreadable one ({exc}); "
            "the highest sequence seen is unknown, so nothing is accepted until it is removed "
            "(see docs/manifest.md)"
        ) from None
    return dict(marks)


def _write_marks(directory: Path, path: Path, publisher_sha256: str, marks: dict[str, int]) -> None:
    doc = {"format": FORMAT, "publisher_key_sha256": publisher_sha256, "sequences": marks}
    data = (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")
    temporary = directory / f".{publisher_sha256}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            with os.fdopen(fd, "wb", closefd=False) as handle:
                handle.write(data)
                handle.flush()
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
