"""The repository stands on its own: no file refers to a folder outside the checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Built so that this file does not match itself.
OUTSIDE = ".." + "/shared"
SIBLING = "shared" + "/vectors"


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (git ls-files failed): the tracked-file scan needs git")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_file_refers_to_a_sibling_folder() -> None:
    offenders = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        data = path.read_bytes()
        if OUTSIDE.encode() in data or SIBLING.encode() in data:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"files that refer to a folder outside the repository: {offenders}"


def test_vectors_are_in_the_repository() -> None:
    from .conftest import VECTORS

    assert VECTORS.is_relative_to(ROOT)
    assert (VECTORS / "index.json").is_file()
    assert (VECTORS / "SOURCES.md").is_file()
    assert len(list((VECTORS / "reports").glob("*.bin"))) == 21
