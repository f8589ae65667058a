"""Write the benchmark pages, docs/benchmarks/, from the result files in ``benchmarks/results/``: a page per
benchmark (``PAGES``; each names the command, machine and date of its runs, as recorded in its result files), the
plots they show copied into docs/benchmarks/img/, and docs/benchmarks/index.md, the table of contents with each
page's headline and the headline numbers (``headline_numbers()``), which also go on the README's front page,
between its marker comments (``readme()``).

Run: python docs/generate_benchmarks.py"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_pages import accuracy, bench, memory, recipes, speed, transfer  # noqa: E402
from benchmark_pages.common import GENERATOR, RESULTS, Page, load, table  # noqa: E402

TARGET = Path(__file__).resolve().parent / "benchmarks"
README = Path(__file__).resolve().parents[1] / "README.md"
README_START = "<!-- the headline numbers: written by python docs/generate_benchmarks.py -->"
README_END = "<!-- end of the headline numbers -->"
PAGES = [speed.lora_vs_peft, speed.gpu_lora, memory.memory_methods, speed.packing, speed.compile_step,
         speed.mixed_batch, speed.cli_startup, bench.bench_default, bench.bench_gpu, bench.methods,
         accuracy.methods_sst2, accuracy.apet_sweep, accuracy.plm_sparsity, transfer.scalearn_transfer,
         transfer.panda_transfer, recipes.maft_ner, recipes.few_shot_sst2, recipes.keyphrases_inspec, recipes.defaults]


@dataclass(frozen=True)
class Headline:
    """One headline number: peftkit against peft, what it is, where it was measured and the page that shows it."""

    name: str
    ratio: float
    claim: str
    setting: str
    page: str  # relative to docs/benchmarks/
    commands: tuple[str, ...]
    machine: str
    date: str


def _breadth() -> tuple[int, int, list[str], list[str]]:
    """(peftkit's methods on the default job, peft's method types, those peftkit has, those peft has not) — the
    peft types of the version the bench runs record."""
    import peft
    from generate_bench import bench_rows, bench_runs
    from peft.utils import PeftType

    import peftkit
    from peftkit.core.registry import quantized_forms

    peftkit.load_builtins()  # the quantised forms are known once the built-in methods have registered
    recorded = {record["environment"]["versions"]["peft"] for _, record in bench_runs()}
    if recorded != {peft.__version__}:
        raise RuntimeError(f"the bench runs record peft {recorded}, this environment has peft {peft.__version__}")
    forms = {name: method.name for name, (method, _) in quantized_forms().items()}
    methods = {forms.get(summary["method"], summary["method"]) for summary, _ in bench_rows().values()}
    types = {member.value.lower() for member in PeftType}
    return len(methods), len(types), sorted(methods & types), sorted(methods - types)


def headline_numbers() -> list[Headline]:
    """Speed, memory and breadth against peft, as measured: LoRA's training throughput and peak memory on a GPU
    (the same run), and the methods with a row on the default bench job against peft's method types."""
    gpu = load("gpu_lora.json")
    speed_ratio, memory_ratio = speed.gpu_lora_ratios().values()
    settings = gpu["settings"]
    setting = (f"LoRA r = {settings['lora_r']} on every projection of a {settings['model']}, "
               f"{settings['dtype']}, batch {' × '.join(map(str, settings['batch']))}")
    gpu, bench_page = speed.gpu_lora(), bench.methods()
    where = {"commands": tuple(r.command for r in gpu.runs), "machine": gpu.machines(), "date": gpu.dates()}
    methods, types, shared, own = _breadth()
    return [
        Headline("speed", speed_ratio, f"{speed_ratio:.2f}× peft's LoRA training throughput (tokens/s)", setting,
                 "gpu-lora.md", **where),
        Headline("memory", memory_ratio, f"{memory_ratio:.2f}× peft's peak GPU memory for the same LoRA training",
                 setting, "gpu-lora.md", **where),
        Headline("breadth", methods / types,
                 f"{methods} methods against peft's {types} method types ({methods / types:.2f}×): {len(shared)} of "
                 f"peft's and {len(own)} it does not have ({', '.join(own)})",
                 "each with a row on the default bench job (DoRA, rsLoRA and QLoRA counted as LoRA, as peft has "
                 "them)", "methods.md", tuple(r.command for r in bench_page.runs), bench_page.machines(),
                 bench_page.dates()),
    ]


def _hardware(machine: str) -> str:
    """A machine in a few words, without software versions: "one NVIDIA H200", "a CPU (x86_64, 2 cores)"."""
    words = []
    for one in machine.split("; "):
        parts = [part for part in one.split(", ") if not part.startswith(("torch ", "python "))]
        words.append(f"a CPU ({', '.join(parts[:-1])})" if parts[-1] == "CPU" else f"one {', '.join(parts)}")
    return " and ".join(dict.fromkeys(words))


def readme_headlines() -> str:
    """The README's headline numbers: each claim linked to its page (paths relative to the repository), grouped by
    the setting and the machine they were measured on."""
    groups: dict[tuple[str, str], list[Headline]] = {}
    for headline in headline_numbers():
        groups.setdefault((headline.setting, _hardware(headline.machine)), []).append(headline)
    claims = {key: "; ".join(f"**{h.name.capitalize()}**: [{h.claim}](docs/benchmarks/{h.page})" for h in group)
              for key, group in groups.items()}
    return "\n".join(f"- {claims[setting, hardware]} — {setting}; on {hardware}." for setting, hardware in claims)


def readme(text: str) -> str:
    """README.md with its headline numbers made from the result files."""
    start, end = text.index(README_START), text.index(README_END)
    return text[:start] + "\n".join([README_START, readme_headlines()]) + "\n" + text[end:]


def index_markdown(pages: list[Page]) -> str:
    headlines = headline_numbers()
    lines = ["# Benchmarks", "",
             "Every number on these pages is generated from the result files in `benchmarks/results/`, each recorded "
             "with the command that produced it, the machine and the date; timings and memory are ratios to a "
             "reference measured in the same run wherever the run has one.", "",
             "## Headline numbers", "",
             *table(["", "peftkit against peft", "measured on", "machine", "date"],
                    [[h.name, f"[{h.claim}]({h.page})", h.setting, h.machine, h.date] for h in headlines],
                    "lllll"),
             "", "## Pages", "",
             *table(["page", "headline", "machine", "date"],
                    [[f"[{page.title}]({page.slug}.md)", page.headline, page.machines(), page.dates()]
                     for page in pages], "llll"),
             "", f"*Generated by `{GENERATOR}`; edit the result files or the generator, not this page.*"]
    return "\n".join(lines) + "\n"


def generated() -> dict[str, str | bytes]:
    """Every file of docs/benchmarks/ (path relative to it -> its text or, for a plot, its bytes)."""
    pages = [make() for make in PAGES]
    files: dict[str, str | bytes] = {"index.md": index_markdown(pages)}
    for page in pages:
        files[f"{page.slug}.md"] = page.markdown()
        for name, source in page.images.items():
            files[f"img/{name}"] = (RESULTS / source).read_bytes()
    return files


def result_files() -> list[str]:
    """The result files a page must show: every JSON file in ``benchmarks/results/`` and every bench run's."""
    return sorted([p.name for p in RESULTS.glob("*.json")] +
                  [f"{p.parent.name}/bench.json" for p in RESULTS.glob("*/bench.json")])


def main() -> None:
    files = generated()
    if TARGET.is_dir():
        shutil.rmtree(TARGET)
    for name, content in files.items():
        path = TARGET / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    README.write_text(readme(README.read_text()))
    print(f"wrote {len(files)} files in {TARGET} and the headline numbers in {README}")


if __name__ == "__main__":
    main()
