"""Write the method pages of the docs from the method registry: docs/methods/index.md, the table of methods, and
docs/methods/NAME.md, one page per registered method (its docstring, options, defaults and its row on the default
bench job), the list of those pages in mkdocs.yml's nav, and the compact table of methods on the README's front page
(between its marker comments). Each method's registration carries its description, default learning rate, variants
and quantised forms. Run: python docs/generate_methods.py"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import json
import re
import sys
import tokenize
from pathlib import Path

import peftkit
from peftkit.core.config import PeftConfig, TargetedConfig
from peftkit.core.registry import Method, registered_methods
from peftkit.recipes.training import FULL_FINE_TUNING, FULL_LEARNING_RATE

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PAGES = DOCS / "methods"
TARGET = PAGES / "index.md"
MKDOCS = ROOT / "mkdocs.yml"
NAV_START = "      # the method pages: written by python docs/generate_methods.py"
NAV_END = "      # end of the method pages"
README = ROOT / "README.md"
README_START = "<!-- the table of methods: written by python docs/generate_methods.py -->"
README_END = "<!-- end of the table of methods -->"

sys.path.insert(0, str(DOCS))
try:
    from generate_bench import bench_rows  # noqa: E402
finally:
    sys.path.pop(0)


def _title(method: Method) -> tuple[str, str]:
    """(the method's name as written in its field, the rest of its description)."""
    name, _, what = method.description.partition(": ")
    return (name, what) if what else (method.name, method.description)


def methods_markdown() -> str:
    peftkit.load_builtins()
    lines = ["# Methods", "",
             "Generated from the method registry by `python docs/generate_methods.py`; `peftkit train --help` lists",
             "the same. `--method NAME` takes each name below; `peftkit bench` also runs the variants as rows.",
             "Each name links to the method's page: what it computes, its options and its row on the default",
             "bench job.", "",
             "| `--method` | config | peft type | what it is | default lr | variants, quantised forms | "
             "peft reads it |",
             "|---|---|---|---|---:|---|---|"]
    for name, method in sorted(registered_methods().items()):
        forms = [f"`{variant}` ({', '.join(f'{k}={v}' for k, v in options.items())})"
                 for variant, options in method.variants.items()]
        forms += [f"`{form_name}` ({form.description}, lr {form.learning_rate:g})"
                  for form_name, form in method.quantized.items()]
        lines.append(f"| [`{name}`]({name}.md) | `{method.config_cls.__name__}` | {method.config_cls.peft_type} | "
                     f"{method.description} | {method.learning_rate:g} | {'; '.join(forms) or '—'} | "
                     f"{'yes' if method.peft_reads else 'no'} |")
    lines += [f"| `{FULL_FINE_TUNING}` | — | — | every weight of the model trains (the reference) | "
              f"{FULL_LEARNING_RATE:g} | — | — |", "",
              "Every registered method is tested without a test of its own: `tests/methods/test_contract.py` runs it "
              "on tiny",
              "BERT, GPT-2, Llama and T5 models — it applies or refuses in one line; the plan names the injected "
              "layers and",
              "counts exactly what trains; save → load, merge (or a one-line refusal), `disable_adapter` and "
              "`delete_adapter`",
              "give the outputs they must; peft reads its files and peftkit reads peft's, where peft has the type. "
              "Most",
              "methods apply to BERT-, GPT-2-, Llama-, T5- and BART-style models; one that does not apply to a model "
              "says so",
              "in one line (LLaMA-Adapter needs a Llama, Mistral or GPT-2 model, CPT a causal LM). MEFT works on "
              "BERT-family",
              "encoders and Llama-family decoders, VL-PET on T5-, BART- and BERT-style models, QLoRA on every "
              "`nn.Linear`",
              "whose size is a multiple of 64.", ""]
    return "\n".join(lines)


# --- one page per method -------------------------------------------------------------------------------------------

def _field_comments(cls: type) -> dict[str, str]:
    """The comment on (or just above) each field's line in the class body that declares it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for name in cls.__dict__.get("__annotations__", {}):
        for number, line in enumerate(lines, start=1):
            if re.match(rf"    {re.escape(name)}\s*:", line):
                above, row = [], number - 1
                while row in comments and lines[row - 1].strip().startswith("#"):
                    above.insert(0, comments[row])
                    row -= 1
                text = " ".join(above + ([comments[number]] if number in comments else []))
                if text:
                    found[name] = text
                break
    return found


def _owner(cls: type, name: str) -> type:
    """The class of ``cls``'s bases that declares field ``name`` first."""
    return next(base for base in reversed(cls.__mro__) if name in base.__dict__.get("__annotations__", {}))


def _type_text(annotation) -> str:
    """A field's annotation, its alternatives joined by "or" (no pipes: they would cut a Markdown table's row)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip())
    return " or ".join(f"`{part}`" for part in parts)


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    return f"`{value!r}`".replace("|", "/")


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _docstring(obj) -> str:
    text = inspect.getdoc(obj) or ""
    if isinstance(obj, type) and text.startswith(f"{obj.__name__}("):  # the dataclass's generated signature
        return ""
    return text


def _options(method: Method) -> list[str]:
    config_cls = method.config_cls
    shared = {f.name for f in dataclasses.fields(TargetedConfig)}
    own = [f for f in dataclasses.fields(config_cls) if f.name not in shared]
    comments: dict[str, str] = {}
    for base in config_cls.__mro__:
        if base is not object:
            comments = {**_field_comments(base), **comments}
    lines = ["## Options", ""]
    if _docstring(config_cls):
        lines += [_docstring(config_cls), ""]
    lines += ["| option | type | default | note |", "|---|---|---|---|"]
    for field in own:
        lines.append(f"| `{field.name}` | {_type_text(field.type)} | {_default_text(field)} | "
                     f"{_cell(comments.get(field.name, ''))} |")
    common = [f"`{f.name}`" for f in dataclasses.fields(PeftConfig)]
    targeting = [f"`{f.name}`" for f in dataclasses.fields(TargetedConfig) if f.name not in
                 {g.name for g in dataclasses.fields(PeftConfig)}]
    lines.append("")
    if issubclass(config_cls, TargetedConfig):
        lines.append(f"It also takes the targeting options of every method that wraps modules ({', '.join(targeting)}: "
                     "see [Concepts](../concepts.md#targets)) and the options of every config "
                     f"({', '.join(common)}).")
    else:
        lines.append(f"It also takes the options of every config ({', '.join(common)}).")
    return lines + [""]


def _bench(method: Method, rows: dict[str, tuple[dict, str]]) -> list[str]:
    labels = [method.name, *method.variants, *method.quantized]
    found = [(label, *rows[label]) for label in labels if label in rows]
    if not found:
        return []
    lines = ["## On the default bench job", "",
             "All-MiniLM-L6-v2 fine-tuned on the bundled SST-2 for 50 steps of 32 at the method's default settings "
             "and learning rate, scored by dev accuracy (majority class 0.509); step time and peak memory as ratios to "
             "full fine-tuning in the same run. Every method's row and how the runs were made: "
             "[Benchmarks](../benchmarks/methods.md).", ""]
    for label, summary, run in found:
        date = json.loads((ROOT / "benchmarks" / "results" / run / "bench.json").read_text())["date"]
        where = f"`{label}` (run {run}, {date})"
        if summary.get("score") is None:
            lines.append(f"- {where}: did not run on this job: {summary.get('error', 'no result')}")
            continue
        ratios = summary["vs_full"]
        note = f"; {summary['merge_note']}" if summary.get("merge_note") else ""
        lines.append(f"- {where}: {summary['trainable']:,} trainable parameters ({summary['trainable_percent']:.3f} % "
                     f"of the model), dev accuracy {summary['score']:.4f}, step time {ratios['step_seconds']:.2f}× "
                     f"and peak memory {ratios['peak_mib']:.2f}× full fine-tuning's{note}")
    return lines + [""]


def _facts(method: Method) -> list[str]:
    config_cls = method.config_cls
    rates = f"{method.learning_rate:g}"
    if method.task_learning_rates:
        per_task = sorted(method.task_learning_rates.items())
        rates += " (" + ", ".join(f"{task}: {rate:g}" for task, rate in per_task) + ")"
    if method.peft_reads:
        reads = "yes: peft loads its adapter files, and peftkit loads peft's"
        if method.peft_module_types:
            reads += f" (peft's form wraps {', '.join(t.__name__ for t in method.peft_module_types)} only)"
    else:
        reads = "no: peft has no such method; the files have peft's layout and peftkit reads them"
    source = Path(inspect.getsourcefile(importlib.import_module(config_cls.__module__))).relative_to(ROOT)
    rows = [("`--method`", f"`{method.name}`"),
            ("config", f"`{config_cls.__name__}` (`from peftkit import {config_cls.__name__}`)"),
            ("peft type", f"`{config_cls.peft_type}`"),
            ("peft reads it", reads),
            ("adds", "virtual tokens before the input (prompt learning)" if method.prompt_cls is not None
             else f"a layer around each targeted module ({method.supported_types()}){method.layers_note}"),
            ("default learning rate", rates)]
    if method.train_defaults:
        rows.append(("`peftkit train` sets", ", ".join(f"`{k}={v!r}`" for k, v in method.train_defaults.items())))
    if method.variants:
        rows.append(("variants (bench rows)", "; ".join(
            f"`{variant}`: " + ", ".join(f"`{k}={v!r}`" for k, v in options.items())
            for variant, options in method.variants.items())))
    if method.quantized:
        rows.append(("quantised forms", "; ".join(f"`{name}`: {form.description} (lr {form.learning_rate:g})"
                                                   for name, form in method.quantized.items())))
    rows.append(("output unchanged at the start", "yes" if method.unchanged_at_start else "no"))
    rows.append(("source", f"`{source.as_posix()}`"))
    return ["| | |", "|---|---|", *(f"| {key} | {_cell(value)} |" for key, value in rows), ""]


def _usage(method: Method) -> list[str]:
    name, config = method.name, method.config_cls.__name__
    settings = ", ".join(f"{k}={v!r}" for k, v in method.train_defaults.items())
    plan, train = f"peftkit plan --method {name}", f"peftkit train --method {name} --train my.csv"
    width = len(train) + 2
    return ["## Use it", "", "```bash",
            f"{plan:<{width}}# which modules it would hit, changing nothing",
            f"{train:<{width}}# its options with -o KEY=VALUE",
            "```", "", "```python",
            f"from peftkit import {config}, get_peft_model", "",
            f"model = get_peft_model(model, {config}({settings}))",
            "model.print_trainable_parameters()",
            "```", ""]


def method_page(method: Method, rows: dict[str, tuple[dict, str]]) -> str:
    title, what = _title(method)
    lines = [f"# {title}", "", "Generated by `python docs/generate_methods.py` from the method's registration and "
             "docstrings.", "", f"**{what[:1].upper()}{what[1:]}.**", "", *_facts(method)]
    module = importlib.import_module(method.config_cls.__module__)
    if _docstring(module):
        lines += ["## How it works", "", _docstring(module), ""]
    lines += _options(method) + _bench(method, rows) + _usage(method)
    return "\n".join(lines)


def method_pages() -> dict[str, str]:
    """File name under docs/methods/ -> the page, for every registered method."""
    peftkit.load_builtins()
    rows = bench_rows()
    return {f"{name}.md": method_page(method, rows) for name, method in sorted(registered_methods().items())}


def mkdocs_yml(text: str) -> str:
    """mkdocs.yml with its list of method pages made from the registry."""
    peftkit.load_builtins()
    start, end = text.index(NAV_START), text.index(NAV_END)
    entries = [f"      - {json.dumps(_title(method)[0], ensure_ascii=False)}: methods/{name}.md"
               for name, method in sorted(registered_methods().items())]
    return text[:start] + "\n".join([NAV_START, *entries]) + "\n" + text[end:]


def readme_methods_table() -> str:
    """The README's table of methods: one row per registered method, quantised form and full fine-tuning, with its
    ``--method`` name, whether peft reads its adapters, and a link to its page (paths relative to the repository;
    a quantised form links to its guide, docs/guides/NAME.md, where there is one, else to its method's page)."""
    peftkit.load_builtins()
    rows = []
    for name, method in registered_methods().items():
        reads = "yes" if method.peft_reads else "no"
        rows.append((name, f"[{_title(method)[0]}](docs/methods/{name}.md)", reads))
        for form_name, form in method.quantized.items():
            guide = DOCS / "guides" / f"{form_name}.md"
            page = guide.relative_to(ROOT).as_posix() if guide.is_file() else f"docs/methods/{name}.md"
            rows.append((form_name, f"[{form.description.partition(': ')[0]}]({page})", reads))
    return "\n".join(["| method | `--method` | peft reads it |", "|---|---|---|",
                      *(f"| {title} | `{name}` | {reads} |" for name, title, reads in sorted(rows)),
                      f"| full fine-tuning (the reference) | `{FULL_FINE_TUNING}` | — |"])


def readme(text: str) -> str:
    """README.md with its table of methods made from the registry."""
    start, end = text.index(README_START), text.index(README_END)
    return text[:start] + "\n".join([README_START, readme_methods_table()]) + "\n" + text[end:]


if __name__ == "__main__":
    TARGET.write_text(methods_markdown())
    pages = method_pages()
    for stale in set(p.name for p in PAGES.glob("*.md")) - set(pages) - {TARGET.name}:
        (PAGES / stale).unlink()
    for name, text in pages.items():
        (PAGES / name).write_text(text)
    MKDOCS.write_text(mkdocs_yml(MKDOCS.read_text()))
    README.write_text(readme(README.read_text()))
    print(f"wrote {TARGET}, {len(pages)} method pages in {PAGES}, their nav in {MKDOCS} and the table in {README}")
