"""Write docs/cli.md, the command-line reference, from the argparse parser of ``peftkit``
(``peftkit.cli.build_parser``): for each subcommand its usage and a table of its options.
Run: python docs/generate_cli.py"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from peftkit.cli import build_parser
from peftkit.recipes.training import TrainOptions

TARGET = Path(__file__).with_name("cli.md")
USAGE_WIDTH = 100  # fixed, so the page does not depend on the terminal it was written from
METHODS = "the registered methods: see [the table of methods](methods/index.md)"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    return [(name, helps.get(name, ""), sub) for name, sub in commands.choices.items()]


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def _text(text: str | None) -> str:
    """Help as argparse prints it (``%%`` is ``%``), with the list of methods as a link, fit for a table cell."""
    text = (text or "").replace("%%", "%").replace("{methods}", METHODS)
    return " ".join(text.split()).replace("|", "/")


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}` (positional)"
    if action.nargs == 0:
        return ", ".join(f"`{flag}`" for flag in action.option_strings)
    value = action.metavar or ("{" + ",".join(action.choices) + "}" if action.choices else action.dest.upper())
    return ", ".join(f"`{flag} {value}`" for flag in action.option_strings)


def _default(action: argparse.Action, defaults: dict) -> str:
    """The value an option takes when not given: argparse's default, or else (``peftkit train``, whose flags
    default to None so that a --config file can set them) the default of its ``TrainOptions`` field."""
    if action.required:
        return "required"
    if action.nargs == 0:
        return "off"
    if isinstance(action, argparse._AppendAction):
        return "repeatable"
    default = action.default if action.default is not None else defaults.get(action.dest)
    if default is None or default is False or default == argparse.SUPPRESS:
        return ""
    return f"`{default}`"


def _options(parser: argparse.ArgumentParser, defaults: dict) -> list[str]:
    lines = ["| option | default | what it does |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        lines.append(f"| {_flags(action)} | {_default(action, defaults)} | {_text(action.help)} |")
    return lines


def cli_markdown() -> str:
    parser = build_parser()
    commands = _subcommands(parser)
    lines = ["# Command line", "",
             "Generated from the parser in `peftkit/cli.py` by `python docs/generate_cli.py`; `peftkit COMMAND --help`",
             "prints the same. Bad input (a missing file or column, an option's value, a model folder that is not "
             "there)",
             "ends with one line, `peftkit: error: …`, and exit code 2, before any model loads; `peftkit --version`",
             "prints the version.", "",
             "| command | what it does |", "|---|---|",
             *(f"| [`peftkit {name}`](#peftkit-{name}) | {_text(help_text)} |" for name, help_text, _ in commands), ""]
    train_defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions)
                      if f.default is not dataclasses.MISSING}
    for name, help_text, sub in commands:
        lines += [f"## peftkit {name}", "", f"{_text(help_text)[:1].upper()}{_text(help_text)[1:]}."]
        if sub.description:
            lines += ["", _text(sub.description)]
        if name == "train":
            lines += ["", "`--config FILE` (YAML or JSON) takes the same options under their names with underscores "
                      "(`batch_size: 16`) and the method's settings under `adapter:`; flags given on the command "
                      "line override it."]
        lines += ["", "```text", _usage(sub), "```", "", *_options(sub, train_defaults if name == "train" else {}), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    TARGET.write_text(cli_markdown())
    print(f"wrote {TARGET}")
