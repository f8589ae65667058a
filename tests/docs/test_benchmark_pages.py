"""The benchmark pages (docs/benchmarks/) are made from the result files in benchmarks/results/: each committed page
and plot equals what ``python docs/generate_benchmarks.py`` writes, every result file has a page, and every run a
page reports names its command, machine and date."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = ROOT / "docs" / "benchmarks"
REGENERATE = "run python docs/generate_benchmarks.py"


@pytest.fixture(scope="module")
def generator():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import generate_benchmarks
    finally:
        sys.path.remove(str(ROOT / "docs"))
    return generate_benchmarks


@pytest.fixture(scope="module")
def pages(generator):
    return [make() for make in generator.PAGES]


@pytest.fixture(scope="module")
def files(generator):
    return generator.generated()


def test_every_committed_page_and_plot_is_the_generators_output(files):
    committed = {path.relative_to(PAGES).as_posix() for path in PAGES.rglob("*") if path.is_file()}
    assert committed == set(files), REGENERATE
    for name, content in files.items():
        on_disk = (PAGES / name).read_bytes() if isinstance(content, bytes) else (PAGES / name).read_text()
        assert on_disk == content, f"docs/benchmarks/{name}: {REGENERATE}"


def test_every_result_file_has_a_page(generator, pages):
    shown = {source for page in pages for source in page.sources}
    assert set(generator.result_files()) <= shown
    assert "gpu_lora.json" in shown and "bench-gpu/bench.json" in shown
    assert not list((ROOT / "benchmarks" / "results").glob("*.txt")), "results are JSON files"


def test_every_run_names_its_command_machine_and_date(pages):
    for page in pages:
        assert page.runs, page.slug
        for run in page.runs:
            assert run.command.startswith(("python benchmarks/", "peftkit ")), (page.slug, run)
            assert run.machine, (page.slug, run)
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}( \d{2}:\d{2} UTC)?", run.date), (page.slug, run)
            assert (ROOT / "benchmarks" / "results" / run.source).is_file(), (page.slug, run)


def test_pages_link_only_to_pages_and_plots_of_the_docs(files):
    for name, content in files.items():
        if not name.endswith(".md"):
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", content):
            assert "://" not in target, (name, target)
            assert (PAGES / target.split("#")[0]).is_file(), (name, target)
        assert not re.search(r"\bissue\b|not yet|re-measured", content, re.IGNORECASE), name


def test_the_headline_numbers_are_speed_memory_and_breadth_against_peft(generator, files):
    headlines = generator.headline_numbers()
    assert [h.name for h in headlines] == ["speed", "memory", "breadth"]
    for headline in headlines:
        assert headline.ratio > 0 and headline.commands and headline.machine and headline.date
        assert (PAGES / headline.page).is_file()
        assert f"{headline.ratio:.2f}×" in headline.claim
        assert headline.claim in files["index.md"]


def test_the_readme_shows_the_headline_numbers_as_generated(generator):
    text = (ROOT / "README.md").read_text()
    assert text == generator.readme(text), f"README.md's headline numbers: {REGENERATE}"
    block = text[text.index(generator.README_START):text.index(generator.README_END)]
    for headline in generator.headline_numbers():
        assert f"[{headline.claim}](docs/benchmarks/{headline.page})" in block
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|torch \d", block), "no dates or versions on the front page"


def test_bench_rows_stay_importable_from_generate_bench(generator):
    from generate_bench import bench_rows

    rows = bench_rows()
    summary, run = rows["lora"]
    assert summary["row"] == "lora" and run == "bench-default" and "full" not in rows
