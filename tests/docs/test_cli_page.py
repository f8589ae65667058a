"""The docs' command-line reference is generated from the parser, so it cannot disagree with ``peftkit --help``."""

import argparse
import sys
from pathlib import Path

from peftkit.cli import build_parser

ROOT = Path(__file__).parents[2]


def test_the_docs_command_line_page_is_generated_from_the_parser():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from generate_cli import cli_markdown
    finally:
        sys.path.pop(0)
    text = cli_markdown()
    assert (ROOT / "docs" / "cli.md").read_text() == text, "run python docs/generate_cli.py"
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        assert f"## peftkit {name}\n" in text
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert all(f"`{flag}" in text for flag in action.option_strings), (name, action.option_strings)
