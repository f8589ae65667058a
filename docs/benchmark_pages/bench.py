"""Pages made from ``peftkit bench`` runs (``benchmarks/results/bench-*/bench.json``): the default bench, the bench on
a GPU against peft, and every method's row on the default job over the four CPU runs."""

from __future__ import annotations

from generate_bench import bench_rows, bench_runs

from .common import Page, image, load, run, score, table

PLOTS = {"score_vs_parameters.png": "score against trainable parameters",
         "score_vs_memory.png": "score against peak memory"}


def _run(name: str, record: dict | None = None):
    return run(name, f"{name}/bench.json", record)


def _plots(name: str) -> tuple[list[str], dict[str, str]]:
    lines, images = [], {}
    for file, caption in PLOTS.items():
        images[f"{name}-{file}"] = f"{name}/{file}"
        lines += [image(f"{name}-{file}", f"{name}: {caption}"), ""]
    return lines[:-1], images


def _seconds(record: dict) -> float:
    """The runs' own time together (a bench cut off and resumed records only its last part as ``seconds``)."""
    return sum(r["seconds"] for r in record["runs"])


def _markdown_table(record: dict) -> list[str]:
    from peftkit.bench.report import markdown_table

    return markdown_table(record["summary"]).rstrip("\n").split("\n")


def _method_row(label: str, summary: dict, name: str) -> list[str]:
    if summary.get("score") is None:
        reason = summary.get("error", "did not run").replace("|", "/")
        return [f"`{label}`", "—", "—", "—", "—", "—", name, reason]
    ratios = summary["vs_full"]
    return [f"`{label}`", f"{summary['trainable']:,}", f"{summary['trainable_percent']:.3f}", score(summary["score"]),
            f"{ratios['step_seconds']:.2f}", f"{ratios['peak_mib']:.2f}", name, summary.get("merge_note") or ""]


def _full(record: dict) -> dict:
    return next(s for s in record["summary"] if s["row"] == "full")


def methods() -> Page:
    records = bench_runs()
    rows = bench_rows()
    full_score = {name: _full(record)["score"] for name, record in records}
    trained = [label for label, (summary, _) in rows.items() if summary.get("score") is not None]
    above = [label for label in trained if rows[label][0]["score"] > full_score[rows[label][1]]]
    settings = {key: {record["settings"][key] for _, record in records} for key in ("max_steps", "batch_size",
                                                                                    "max_length")}
    if any(len(values) > 1 for values in settings.values()):
        raise ValueError(f"the bench runs differ in their settings: {settings}")
    settings = {key: values.pop() for key, values in settings.items()}
    first = records[0][1]["runs"][0]
    share = settings["max_steps"] * settings["batch_size"] / first["train_examples"]
    body = ["## Full fine-tuning in each run", "",
            *table(["run", "score", "s/step", "peak MiB", "the runs' time"],
                   [[name, score(_full(record)["score"]), f"{_full(record)['step_seconds']:.3f}",
                     f"{_full(record)['peak_mib']:,.0f}", f"{_seconds(record) / 60:.1f} min"]
                    for name, record in records], "lrrrr"),
            "", "## Rows", "",
            *table(["method", "trainable", "% of model", "score", "s/step × full", "peak memory × full", "run", "note"],
                   [_method_row(label, summary, name) for label, (summary, name) in sorted(rows.items())],
                   "lrrrrrll")]
    images = {}
    for name, _ in records[1:]:
        lines, found = _plots(name)
        body += ["", f"## Plots: {name}", "", *lines]
        images.update(found)
    return Page(
        "methods", "Every method on the default bench job",
        f"{len(rows)} method rows on one job, each against full fine-tuning in its run: {len(trained)} trained, "
        f"{len(above)} above full fine-tuning's score",
        "Every method peftkit has, side by side under one small budget: the bundled all-MiniLM-L6-v2 fine-tuned on "
        f"the bundled SST-2 for {settings['max_steps']} steps of {settings['batch_size']} sentences "
        f"({settings['max_length']} tokens) at each method's default settings and learning "
        f"rate, scored by dev accuracy (872 sentences; the majority class is 0.509). That is {share:.0%} of an "
        "epoch: a comparison under a small fixed budget, not each method's best ([one epoch each](methods-sst2.md) "
        "for the methods measured so). The rows come from four runs of `peftkit bench`; a method's row from a later "
        "run replaces its row from an earlier one. Step time and peak memory are ratios to full fine-tuning measured "
        "in the same run. The first run's own page: [the default bench](bench-default.md).",
        [_run(name, record) for name, record in records], body, images)


def bench_default() -> Page:
    record = load("bench-default/bench.json")
    settings, first = record["settings"], record["runs"][0]
    share = settings["max_steps"] * settings["batch_size"] / first["train_examples"]
    lora = next(s for s in record["summary"] if s["row"] == "lora")
    plots, images = _plots("bench-default")
    return Page(
        "bench-default", "peftkit bench: the default bench",
        f"every default method and full fine-tuning in {_seconds(record) / 60:.1f} minutes; LoRA "
        f"{lora['vs_full']['step_seconds']:.2f}× full fine-tuning's step time, {lora['vs_full']['peak_mib']:.2f}× its "
        "peak memory",
        "What `peftkit bench` does with no options, on a CPU: every default method and full fine-tuning (the "
        f"reference, first) on the bundled all-MiniLM-L6-v2 and SST-2, {settings['max_steps']} steps of "
        f"{settings['batch_size']} ({share:.0%} of an epoch; a comparison under a small fixed budget, not each "
        f"method's best), {settings['max_length']} tokens, seed {', '.join(map(str, record['seeds']))}, each method "
        "in a worker process of its own so that the process's peak memory is its own. Per method: trainable "
        "parameters, dev accuracy, median step time and throughput, peak memory (process VmHWM), the bytes saved for "
        "backward and the latency of one eval batch unmerged and merged; step time and peak memory also as ratios "
        "to full fine-tuning in the same run. Every method's row on this job, those of other runs included: "
        "[every method on the default job](methods.md).",
        [_run("bench-default", record)],
        ["## Results", "", *_markdown_table(record), "", "## Plots", "", *plots], images)


def bench_gpu() -> Page:
    record = load("bench-gpu/bench.json")
    settings = record["settings"]
    twins = {s["row"]: s["vs_peft"] for s in record["summary"] if "vs_peft" in s}
    peaks = [v["peak_mib"] for v in twins.values()]
    plots, images = _plots("bench-gpu")
    return Page(
        "bench-gpu", "peftkit bench on a GPU, against peft",
        f"peftkit / peft step time {twins['lora']['step_seconds']:.2f}× (LoRA), {twins['dora']['step_seconds']:.2f}× "
        f"(DoRA); peak memory {min(peaks):.2f}–{max(peaks):.2f}× over {len(twins)} methods",
        "`peftkit bench` on a CUDA GPU in bfloat16 with `--vs-peft`: each method next to Hugging Face peft's "
        "implementation of it where peft has one (a twin row; the peftkit / peft ratios are in the note column). The "
        "model is Llama-shaped (the 1.1B TinyLlama shape: 22 layers, hidden 2048, grouped-query attention) with "
        "random weights and MiniLM's tokenizer, written by `python benchmarks/llama_model.py --output "
        f"/tmp/peftkit-llama-1b`, with a classification head on SST-2: {settings['max_steps']} steps of "
        f"{settings['batch_size']}, {settings['max_length']} tokens. Random weights, so the scores are near chance; "
        "the columns to read are memory, speed and the peftkit / peft ratios. Peak memory is "
        "`torch.cuda.max_memory_allocated`, reset per method. Its runs took "
        f"{_seconds(record):.0f} s together.",
        [_run("bench-gpu", record)],
        ["## Results", "", *_markdown_table(record), "", "## Plots", "", *plots], images)
