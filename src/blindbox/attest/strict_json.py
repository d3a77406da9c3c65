"""Strict JSON for security documents: duplicate member names and NaN/Infinity are refused.

A document that two parsers could read differently (the first or the last of
two duplicate keys) is not a document BlindBox will act on. Integers are
bounded (:data:`MAX_INT_DIGITS`) and nesting deeper than the interpreter allows
is a ``ValueError`` like any other malformed input, so a caller that catches
``ValueError`` sees every refusal.
"""

from __future__ import annotations

import json
from typing import Any

#: The longest integer literal accepted: every integer in BlindBox documents fits in 64 bits.
MAX_INT_DIGITS = 20


def loads(text: str) -> Any:
    """Parse JSON; raises ValueError for duplicate members, NaN, Infinity, huge integers, bad JSON."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                          parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key[:40]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(literal.lstrip('-'))} digits; expected at most {MAX_INT_DIGITS}")
    return int(literal)
