"""Griffe extension: BlindBox docstrings use reST roles; render them as Markdown code.

``:class:`~blindbox.errors.NotAnEnclaveError``` becomes ```NotAnEnclaveError```
(the tilde keeps the last component, as in Sphinx), ``:func:`x.y``` becomes
```x.y```, ``:meth:`title <target>``` becomes ```title```, and a paragraph
ending in ``::`` (a reST literal block) ends in ``:``.
Docstrings in ``src/`` are not changed; only what mkdocstrings renders is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_LITERAL_BLOCK = re.compile(r"(\S)::$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    titled = re.fullmatch(r"(.+?)\s*<[^>]+>", target)  # :meth:`title <target>`
    if titled:
        return f"`{titled.group(1)}`"
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def convert(text: str) -> str:
    """The docstring with reST roles and literal-block markers turned into Markdown."""
    return _LITERAL_BLOCK.sub(r"\1:", _ROLE.sub(_role, text))


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
