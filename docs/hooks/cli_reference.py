"""mkdocs hook: the command-line reference is generated from ``blindbox``'s argparse parser.

``docs/cli.md`` holds the hand-written introduction and the marker
``<!-- cli-reference -->``, which this hook replaces at build time with the exit
statuses (from ``blindbox.cli.EXIT_STATUSES``, the epilog of every ``--help``)
and every command, subcommand and option, so the page cannot drift from
``blindbox --help``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

MARKER = "<!-- cli-reference -->"
_WIDTH = "88"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _argument_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str | None:
    if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
        return None
    # argparse's own spelling, as in --help: "-o DIR, --output DIR", "--product {milan,genoa,turin}".
    invocation = parser._get_formatter()._format_action_invocation(action)
    names = ", ".join(f"`{part}`" for part in invocation.split(", "))
    notes = []
    if action.required and action.option_strings:
        notes.append("required")
    if (action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0
            and not isinstance(action, argparse._VersionAction)):
        notes.append(f"default `{action.default}`")
    text = (action.help or "").replace("%(prog)s", "blindbox")
    if notes:
        text = f"{text} ({'; '.join(notes)})" if text else "; ".join(notes).capitalize()
    return f"| {names} | {_cell(text)} |"


def _exit_statuses(level: int) -> list[str]:
    """The one exit-status contract, as a table (every command's ``--help`` ends with it)."""
    from blindbox.cli import EXIT_STATUSES

    rows = [f"| {code} | {_cell(meaning[0].upper() + meaning[1:])} |" for code, meaning in EXIT_STATUSES]
    return [f"{'#' * level} Exit statuses", "",
            "The same for every command, so a script can tell a refusal from a failure to check:", "",
            "| status | meaning |", "|---|---|", *rows, ""]


def _section(parser: argparse.ArgumentParser, title: str, summary: str | None, level: int) -> list[str]:
    lines = [f"{'#' * level} `{title}`", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ".", ""]
    if parser.description:
        lines += [parser.description, ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    rows = [row for action in parser._actions if (row := _argument_row(parser, action)) is not None]
    if rows:
        lines += ["| argument | meaning |", "|---|---|", *rows, ""]
    from blindbox.cli import EXIT_EPILOG

    if parser.epilog == EXIT_EPILOG:
        lines += ["Exit status: see [Exit statuses](#exit-statuses).", ""]
    elif parser.epilog:
        lines += [parser.epilog[0].upper() + parser.epilog[1:] + ".", ""]
    sub = _subparsers(parser)
    if sub is not None:
        helps = {choice.dest: choice.help for choice in sub._choices_actions}
        for name, child in sub.choices.items():
            lines += _section(child, f"{title} {name}", helps.get(name), level + 1)
    return lines


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The reference for ``parser`` (default: ``blindbox``'s own), as Markdown."""
    if parser is None:
        from blindbox.cli import _build_parser

        parser = _build_parser()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH  # argparse wraps usage to the terminal width
    try:
        return "\n".join(_exit_statuses(2) + _section(parser, parser.prog, None, 2))
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown: str, *, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != "cli.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/cli.md: the marker {MARKER} is missing")
    return markdown.replace(MARKER, render())
