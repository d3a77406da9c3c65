"""Argument types shared by the command line's modules (``blindbox`` and ``blindbox manifest``)."""

from __future__ import annotations

import argparse
import datetime as _dt


def parse_at(text: str) -> _dt.datetime:
    """An ISO 8601 date or date-time; no offset means UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date or date-time (e.g. 2025-06-01 or 2025-06-01T12:00:00Z), "
            f"found {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.timezone.utc)
