"""Shared test helpers: where the real SEV-SNP vectors live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "snp"


def load_index() -> list[dict[str, Any]]:
    """The vectors' index.json (expected values for every real report)."""
    return json.loads((VECTORS / "index.json").read_text())


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"SEV-SNP vectors not found at {VECTORS}")
    return VECTORS
