"""Sphinx directive that documents the smtpproto-serve options from its parser.

``.. smtpproto-serve-options::`` renders the usage line and one ``option``
entry per argument, so the reference cannot drift from ``--help``.
"""

from __future__ import annotations

import argparse

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

# argparse wraps to the terminal width; a fixed width keeps builds identical.
HELP_WIDTH = 78


def _parser() -> argparse.ArgumentParser:
    from smtpproto_anyio._cli import build_parser

    parser = build_parser()
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=HELP_WIDTH)
    return parser


def _option_signature(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    if action.choices is not None:
        metavar = "{" + ",".join(str(choice) for choice in action.choices) + "}"
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


class ServeOptions(SphinxDirective):
    """Render the usage line and every option of ``smtpproto-serve``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        parser = _parser()
        # Drop the "usage: " prefix and the indentation argparse aligned with it.
        prefix = "usage: "
        usage = "\n".join(
            line.removeprefix(prefix).removeprefix(" " * len(prefix))
            for line in parser.format_usage().rstrip().splitlines()
        )
        result: list[nodes.Node] = [nodes.literal_block(usage, usage)]

        lines = StringList()
        source = "smtpproto_anyio._cli.build_parser"
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            help_text = (action.help or "") % {"prog": parser.prog}
            lines.append(f".. option:: {_option_signature(action)}", source)
            lines.append("", source)
            lines.append(f"   {_escape(help_text)}", source)
            lines.append("", source)
        container = nodes.container()
        self.state.nested_parse(lines, self.content_offset, container)
        result.extend(container.children)
        return result


def _escape(text: str) -> str:
    """Escape reStructuredText markup characters in plain help text."""
    for char in ("\\", "*", "`", "|", "_"):
        text = text.replace(char, "\\" + char)
    return text


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("smtpproto-serve-options", ServeOptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
