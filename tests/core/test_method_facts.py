"""A method's facts live on its registration; the command line's help, the bench's rows and the docs' table of
methods are made from the registry, so they cannot disagree with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peftkit.bench.rows import bench_rows, default_methods
from peftkit.core.errors import ConfigError
from peftkit.core.registry import (
    canonical_name,
    default_learning_rate,
    method_by_name,
    method_form,
    method_variants,
    quantized_forms,
    registered_methods,
)
from peftkit.recipes.training import TrainOptions, base_quantization, learning_rate_for, method_config

ROOT = Path(__file__).parents[2]


def test_every_method_carries_a_description_and_a_learning_rate():
    for name, method in registered_methods().items():
        assert method.description and "\n" not in method.description, name
        assert 0 < method.learning_rate < 1, name


def test_one_name_per_method_in_the_command_line_its_module_and_its_peft_type():
    for name, method in registered_methods().items():
        assert name == method.config_cls.peft_type.lower(), name
        module = method.config_cls.__module__
        assert module in (f"peftkit.methods.{name}", f"peftkit.methods.{name}.layers"), (name, module)
        assert not set(method.aliases) & set(registered_methods()), name


def test_earlier_names_stand_for_the_method_and_are_listed_nowhere():
    assert canonical_name("adapter") == "bottleneck" and method_by_name("ptuning").name == "p_tuning"
    assert canonical_name("qlora") == "qlora" and canonical_name("bogus") == "bogus"
    assert TrainOptions(method="prompt").method == "prompt_tuning"
    assert [row.method for row in bench_rows(["adapter", "ln"])] == ["full", "bottleneck", "ln_tuning"]
    aliases = {alias for method in registered_methods().values() for alias in method.aliases}
    assert aliases == {"adapter", "bone", "lite", "ln", "prefix", "prompt", "ptuning"}
    table = (ROOT / "docs" / "methods" / "index.md").read_text()
    assert not any(f"`{alias}`" in table for alias in aliases)


def test_learning_rates_come_from_the_registration():
    assert learning_rate_for("lora") == 1e-3 and learning_rate_for("lora", "causal-lm") == 2e-4
    assert learning_rate_for("qlora") == 2e-3 and learning_rate_for("qlora", "causal-lm") == 2e-4
    assert learning_rate_for("ia3") == 2e-2 and learning_rate_for("ia3", "causal-lm") == 2e-2
    assert learning_rate_for("full") == 5e-5
    with pytest.raises(ConfigError, match="unknown method 'lroa'"):
        default_learning_rate("lroa")


def test_quantised_forms_and_variants_resolve_to_their_method():
    method, form = method_form("qlora")
    assert method.name == "lora" and form.quantization == "nf4" and base_quantization("qlora") == "nf4"
    assert base_quantization("lora") is None and base_quantization("full") is None
    assert set(quantized_forms()) == {"qlora"} and set(method_variants()) == {"dora", "rslora"}
    config = method_config("qlora", {}, "SEQ_CLS", Path("."), ["a", "b"])
    assert (config.r, config.lora_alpha, config.target_modules) == (8, 16, "all-linear")  # LoRA's train_defaults


def test_the_bench_rows_are_every_registered_name():
    names = set(default_methods())
    assert names == {"full", *registered_methods(), *quantized_forms(), *method_variants()}
    dora = next(row for row in bench_rows(["dora"]) if row.label == "dora")
    assert dora.method == "lora" and dora.options == {"use_dora": True}


def test_train_help_lists_every_method_with_its_description():
    done = subprocess.run([sys.executable, "-m", "peftkit", "train", "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100000"})  # one line per option: no breaks at hyphens
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and done.stderr == ""
    for name, method in registered_methods().items():
        assert f"{name} ({' '.join(method.description.split())})" in text, name
    assert "qlora (QLoRA" in text and "full (every weight" in text


def test_the_docs_table_of_methods_is_generated_from_the_registry():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from generate_methods import methods_markdown
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "methods" / "index.md").read_text() == methods_markdown(), \
        "run python docs/generate_methods.py"


def test_every_registered_method_has_a_generated_docs_page_listed_in_the_site_nav():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from generate_methods import method_pages, mkdocs_yml
    finally:
        sys.path.pop(0)
    pages = method_pages()
    assert set(pages) == {f"{name}.md" for name in registered_methods()}
    folder = ROOT / "docs" / "methods"
    assert {p.name for p in folder.glob("*.md")} == {*pages, "index.md"}, "run python docs/generate_methods.py"
    for name, text in pages.items():
        assert (folder / name).read_text() == text, f"docs/methods/{name}: run python docs/generate_methods.py"
    site = (ROOT / "mkdocs.yml").read_text()
    assert site == mkdocs_yml(site), "mkdocs.yml's list of method pages: run python docs/generate_methods.py"


def test_the_bench_results_have_a_row_for_every_bench_name():
    # the pages made from them are held by tests/docs/test_benchmark_pages.py
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from generate_bench import bench_rows as documented_rows
    finally:
        sys.path.pop(0)
    assert set(documented_rows()) == set(default_methods()) - {"full"}


def test_the_readme_table_of_methods_is_generated_and_has_a_row_for_every_method():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from generate_methods import README_END, README_START, readme
    finally:
        sys.path.pop(0)
    text = (ROOT / "README.md").read_text()
    assert text == readme(text), "README.md's table of methods: run python docs/generate_methods.py"
    table = text[text.index(README_START):text.index(README_END)]
    rows = re.findall(r"^\| (.+?) \| `([a-z_0-9]+)` \| (yes|no|—) \|$", table, flags=re.MULTILINE)
    assert sorted(name for _, name, _ in rows) == sorted({"full", *registered_methods(), *quantized_forms()})
    for title, name, _ in rows:
        if name != "full":
            page = re.fullmatch(r"\[.+\]\((docs/[a-z0-9_/]+\.md)\)", title).group(1)
            assert (ROOT / page).is_file(), (name, page)
