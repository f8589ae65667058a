"""torchao, matplotlib and nltk are extras (qlora, bench, keyphrases): without one, what needs it stops with one line
naming the extra to install; everything else works. A package is made missing by ``sys.modules[name] = None``."""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from peftkit import MissingExtraError, PeftkitError
from peftkit.cli import main
from peftkit.core.errors import require_extra
from peftkit.core.mechanics.quantization import is_nf4, quantize_nf4

ROOT = Path(__file__).parents[1]
EXTRAS = {"torchao": "qlora", "matplotlib": "bench", "nltk": "keyphrases"}


def _uninstall(monkeypatch, package: str) -> None:
    """Import ``package`` or any module of it now fails, as if it were not installed."""
    for name in [name for name in sys.modules if name == package or name.startswith(f"{package}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


def _one_line_naming(error: BaseException, package: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert f"{package} is not installed" in message
    assert f"pip install 'peftkit[{EXTRAS[package]}]'" in message


def test_the_extras_hold_the_optional_packages_and_core_does_not():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for package, extra in EXTRAS.items():
        assert package not in core
        assert [requirement for requirement in extras[extra] if requirement.startswith(package)]
    [every] = extras["all"]
    assert set(re.fullmatch(r"peftkit\[(.*)\]", every).group(1).split(",")) == set(EXTRAS.values())
    assert "peftkit[all]" in extras["test"]  # the test suite exercises every extra


def test_a_missing_package_is_a_one_line_peftkit_error_that_is_also_an_import_error(monkeypatch):
    _uninstall(monkeypatch, "nltk")
    with pytest.raises(MissingExtraError) as error:
        require_extra("nltk", "keyphrases", "keyphrase scoring stems words with its Porter stemmer")
    assert isinstance(error.value, PeftkitError) and isinstance(error.value, ImportError)
    _one_line_naming(error.value, "nltk")


def test_require_extra_returns_the_module_when_it_is_there():
    assert require_extra("torch", "any", "a test") is torch


def test_qlora_without_torchao(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    _uninstall(monkeypatch, "torchao")
    assert not is_nf4(model[0].weight)  # plain weights are still told apart without torchao
    with pytest.raises(MissingExtraError) as error:
        quantize_nf4(model)
    _one_line_naming(error.value, "torchao")


def test_keyphrases_without_nltk_stop_on_import(monkeypatch):
    """The recipe imports the scoring module before it trains, so the error comes first."""
    _uninstall(monkeypatch, "nltk")
    for name in ("peftkit.tasks.keyphrases", "peftkit.recipes.keyphrases"):
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingExtraError) as error:
        importlib.import_module("peftkit.recipes.keyphrases")
    _one_line_naming(error.value, "nltk")


def test_bench_without_matplotlib_stops_before_it_runs_anything(monkeypatch, tmp_path, capsys):
    _uninstall(monkeypatch, "matplotlib")
    output = tmp_path / "bench"
    assert main(["bench", "--methods", "lora", "--max-steps", "1", "--output", str(output)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("peftkit: error: matplotlib is not installed")
    assert "pip install 'peftkit[bench]'" in line
    assert not (output / "runs").exists()


def test_bench_plots_without_matplotlib(monkeypatch, tmp_path):
    from peftkit.bench.report import plot

    _uninstall(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError) as error:
        plot([], tmp_path, "title")
    _one_line_naming(error.value, "matplotlib")
