"""A bench's summary per row, its Markdown table and its plots.

Per row (and per peft twin): trainable parameters (count, % of the model's), score (mean ± sd over
seeds), training step time (median over every step of every seed) and throughput (batch / median
step), peak memory (the largest over seeds), bytes saved for backward, inference latency of one batch
unmerged and merged (medians); ratios to full fine-tuning (and peftkit / peft with ``--vs-peft``).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from peftkit.core.errors import require_extra
from peftkit.recipes.training import FULL_FINE_TUNING

MIB = 2**20


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(records: list[dict]) -> list[dict]:
    """One summary per (row, implementation), in the records' order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["row"], record["implementation"]), []).append(record)
    summaries = []
    for (label, implementation), runs in groups.items():
        done = [run for run in runs if "error" not in run]
        summary = {"row": label, "implementation": implementation, "method": runs[0]["method"],
                   "options": runs[0]["options"], "seeds": [run["seed"] for run in done]}
        if not done:
            summaries.append({**summary, "error": runs[0]["error"]})
            continue
        scores = [run["score"] for run in done]
        step = statistics.median(s for run in done for s in run["step_seconds"])
        summary.update(
            trainable=done[0]["trainable"], total=done[0]["total"],
            trainable_percent=100 * done[0]["trainable"] / done[0]["total"],
            score=statistics.mean(scores), score_sd=statistics.stdev(scores) if len(scores) > 1 else 0.0,
            scores=scores, step_seconds=step, examples_per_second=done[0]["batch_size"] / step,
            peak_mib=max(run["peak_mib"] for run in done),
            activation_mib=_median(run["activation_bytes"] for run in done) / MIB,
            latency_unmerged_ms=1e3 * _median(run["latency_unmerged_s"] for run in done),
            latency_merged_ms=(1e3 * m if (m := _median(run["latency_merged_s"] for run in done)) is not None
                               else None),
            merge_note=done[0]["merge_note"])
        if len(done) < len(runs):
            summary["failed_seeds"] = [run["seed"] for run in runs if "error" in run]
        summaries.append(summary)
    _add_ratios(summaries)
    return summaries


def _add_ratios(summaries: list[dict]) -> None:
    full = next((s for s in summaries if s["method"] == FULL_FINE_TUNING and "error" not in s), None)
    ours = {s["row"]: s for s in summaries if s["implementation"] == "peftkit"}
    for summary in summaries:
        if "error" in summary:
            continue
        if full is not None:
            summary["vs_full"] = {key: summary[key] / full[key] for key in ("step_seconds", "peak_mib")}
        twin = ours.get(summary["row"])
        if summary["implementation"] == "peft" and twin is not None and "error" not in twin:
            twin["vs_peft"] = {key: twin[key] / summary[key] for key in
                               ("step_seconds", "peak_mib", "activation_mib", "latency_unmerged_ms")
                               if summary[key]}
            twin["vs_peft"]["score_difference"] = twin["score"] - summary["score"]


def _score(summary: dict) -> str:
    return f"{summary['score']:.4f}" + (f" ± {summary['score_sd']:.4f}" if len(summary["scores"]) > 1 else "")


def _ratio(summary: dict, group: str, key: str) -> str:
    value = summary.get(group, {}).get(key)
    return "-" if value is None else f"{value:.2f}"


def markdown_table(summaries: list[dict]) -> str:
    """The bench table: a row per method (and per peft twin); failed rows give their reason."""
    lines = ["| method | impl. | trainable | % | score | s/step | × full | ex/s | peak MiB | × full | "
             "activations MiB | latency ms unmerged / merged | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        if "error" in s:
            lines.append(f"| {s['row']} | {s['implementation']} | - | - | - | - | - | - | - | - | - | - | "
                         f"failed: {s['error']} |")
            continue
        merged = f"{s['latency_merged_ms']:.1f}" if s["latency_merged_ms"] is not None else "-"
        note = s["merge_note"] or ""
        if "vs_peft" in s:
            v = s["vs_peft"]
            note = (f"peftkit/peft: step {v.get('step_seconds', 0):.2f}×, peak {v.get('peak_mib', 0):.2f}×, "
                    f"activations {v.get('activation_mib', 0):.2f}×; score {v['score_difference']:+.4f}"
                    + (f"; {note}" if note else ""))
        lines.append(
            f"| {s['row']} | {s['implementation']} | {s['trainable']:,} | {s['trainable_percent']:.3f} | {_score(s)} | "
            f"{s['step_seconds']:.3f} | {_ratio(s, 'vs_full', 'step_seconds')} | {s['examples_per_second']:.1f} | "
            f"{s['peak_mib']:,.0f} | {_ratio(s, 'vs_full', 'peak_mib')} | {s['activation_mib']:.1f} | "
            f"{s['latency_unmerged_ms']:.1f} / {merged} | {note} |")
    return "\n".join(lines) + "\n"


def plot(summaries: list[dict], folder: Path, title: str) -> list[Path]:
    """Score against trainable parameters (log scale) and against peak memory, a point per row."""
    matplotlib = require_extra("matplotlib", "bench", "it draws peftkit bench's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [s for s in summaries if "error" not in s]
    files = []
    for key, label, name, log in (("trainable", "trainable parameters (log scale)", "score_vs_parameters.png", True),
                                  ("peak_mib", "peak memory (MiB)", "score_vs_memory.png", False)):
        figure, axes = plt.subplots(figsize=(8, 5.5))
        for s in done:
            marker = "*" if s["method"] == FULL_FINE_TUNING else ("s" if s["implementation"] == "peft" else "o")
            axes.scatter(s[key], s["score"], marker=marker, s=120 if marker == "*" else 40)
            name_shown = s["row"] + (" (peft)" if s["implementation"] == "peft" else "")
            axes.annotate(name_shown, (s[key], s["score"]), textcoords="offset points", xytext=(4, 3), fontsize=8)
        if log:
            axes.set_xscale("log")
        axes.set_xlabel(label)
        axes.set_ylabel("score (accuracy on the evaluation set)")
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = folder / name
        figure.savefig(path, dpi=120)
        plt.close(figure)
        files.append(path)
    return files


def write_report(run, environment: dict, output: Path, title: str, command: str) -> list[Path]:
    """``bench.json`` (the command, date, settings, environment, every record, the summaries), ``bench.md`` and
    the plots."""
    import dataclasses
    import datetime

    from peftkit.bench.runner import write_atomically

    summaries = summarise(run.records)
    table = markdown_table(summaries)
    write_atomically(output / "bench.json", {"title": title, "command": command,
                                              "date": datetime.date.today().isoformat(),
                                              "settings": dataclasses.asdict(run.settings),
                                              "seeds": run.seeds, "environment": environment,
                                              "seconds": run.seconds, "summary": summaries, "runs": run.records})
    (output / "bench.md").write_text(f"{title}\n\n{table}")
    return [output / "bench.json", output / "bench.md", *plot(summaries, output, title)]
