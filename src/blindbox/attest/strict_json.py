"""Strict JSON for security documents: duplicate member names and NaN/Infinity are refused.

A document that two parsers could read differently (the first or the last of
two duplicate keys) is not a document BlindBox will act on.
"""

from __future__ import annotations

import json
from typing import Any


def loads(text: str) -> Any:
    """Parse JSON; raises ValueError for duplicate members, NaN or Infinity (and bad JSON)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
