"""The README is the front page: short, every link inside the repository, its commands and its Python example as they
run today. Its headline numbers and its table of methods are generated, and held by
``tests/docs/test_benchmark_pages.py`` and ``tests/core/test_method_facts.py``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from transformers import PreTrainedModel

from peftkit.cli import build_parser

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def _anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as the docs site (Python-Markdown's toc) makes them."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower()) for heading in headings}


def test_the_readme_is_a_front_page():
    assert len(README.splitlines()) < 200
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "no dates: measurements and their dates are in docs/"
    assert not re.search(r"\bissue\b|not yet|#\d+\b", README, flags=re.IGNORECASE)


def test_every_link_resolves_inside_the_repository():
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert links
    for target in links:
        path, _, anchor = target.partition("#")
        assert "://" not in target and not path.startswith(("/", "..")), target
        assert (ROOT / path).is_file(), target
        if anchor:
            assert anchor in _anchors(ROOT / path), target


def test_the_two_commands_are_make_targets():
    assert "make demo" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.MULTILINE) and re.search(r"^test:", makefile, flags=re.MULTILINE)


def test_the_command_line_examples_parse():
    lines = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("peftkit ")]
    assert any(line.startswith("peftkit train --train") for line in lines)
    assert {shlex.split(line)[1] for line in lines} >= {"plan", "train", "eval"}
    parser = build_parser()
    for line in lines:
        parser.parse_args(shlex.split(line, comments=True)[1:])  # an unknown flag exits (SystemExit)


def test_the_python_example_runs(model_dir, tmp_path, monkeypatch, capsys):
    [example] = _blocks("python")
    assert "from peftkit import" in example
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(example.replace("path/to/model", str(model_dir)), scope)  # noqa: S102 - the README's own code
    assert isinstance(scope["merged"], PreTrainedModel) and not hasattr(scope["merged"], "peft_config")
    assert (tmp_path / "my-adapter" / "adapter_config.json").is_file()
    assert "trainable params" in capsys.readouterr().out


@pytest.mark.parametrize("extra", ["test", "docs"])
def test_the_extras_named_in_the_install_exist(extra):
    assert f"'.[{extra}]'" in README
    assert re.search(rf"^{extra} = \[", (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)
