"""Pages on what the methods reach: every method for one epoch on SST-2, APET's budget sweep and DEFT's sparsity
on a squared-ReLU model."""

from __future__ import annotations

from .common import Page, count, image, load, ratio, run, score, table, when

METHODS_SST2 = "methods_sst2.json"
LABELS = {"full": "full", "lora": "LoRA"}


def _methods_runs(record: dict) -> dict[str, list[tuple[str, dict]]]:
    """measured -> [(method, row)], the runs in time order, each with the references kept for it."""
    runs: dict[str, list[tuple[str, dict]]] = {}
    for method, row in [*((row["method"], row) for row in record["same_run_references"]), *record["rows"].items()]:
        runs.setdefault(row["measured"], []).append((method, row))
    order = {"full": 0, "lora": 1}
    return {measured: sorted(rows, key=lambda item: order.get(item[0], 2)) for measured, rows in sorted(runs.items())}


def _accuracy(row: dict) -> str:
    if "accuracies" in row:
        return f"{row['accuracy']:.4f} ± {row['accuracy_sd']:.4f}"
    return score(row["accuracy"])


def methods_sst2() -> Page:
    record = load(METHODS_SST2)
    runs, body = [], []
    for letter, (measured, rows) in zip("ABCDEFGHIJ", _methods_runs(record).items()):
        runs.append(run(f"{letter}: {', '.join(method for method, _ in rows)}", METHODS_SST2, rows[0][1],
                        machine=record["machine"]))
        seeds = next((row for _, row in rows if "accuracies" in row), None)
        if seeds:
            runs.append(run(f"{letter}′: dev accuracy over seeds {', '.join(map(str, seeds['seeds']))}", METHODS_SST2,
                            seeds, command=seeds["accuracy_command"], date=seeds["accuracy_measured"],
                            machine=record["machine"]))
        references = [name for name in ("full", "lora") if name in dict(rows)]
        times = [f"× {LABELS[name]}" for name in references]
        header = ["method", "trainable", "% of model", "dev accuracy" + (" (mean ± sd)" if seeds else ""), "s/step",
                  *times, "peak MiB", *times]
        lines = []
        for method, row in rows:
            ratios = {key: [ratio(row[key] / dict(rows)[name][key]) for name in references]
                      for key in ("step_seconds", "peak_mib")}
            lines.append([f"`{method}`", count(row["trainable"]), f"{100 * row['trainable'] / row['total']:.3f}",
                          _accuracy(row), f"{row['step_seconds']:.3f}", *ratios["step_seconds"],
                          f"{row['peak_mib']:,.0f}", *ratios["peak_mib"]])
        align = "lrrrr" + "r" * (2 * len(references) + 1)
        body += [f"## Run {letter}, {when(measured)}", "", *table(header, lines, align)]
        notes = []
        if seeds:
            notes.append(f"Dev accuracy from run {letter}′, per seed: " + "; ".join(
                f"`{method}` " + " / ".join(score(a) for a in row["accuracies"]) for method, row in rows
                if "accuracies" in row) + f". Step time and peak memory from run {letter}.")
        for method, row in rows:
            if row.get("density"):
                before, after = row["density"]
                notes.append(f"`{method}`: share of feed-forward activations above 3.2e-4 on the dev tokens "
                             f"{before:.4f} before training, {after:.4f} after ({after / before:.2f}×).")
        body += ["", *notes, ""] if notes else [""]
    best = max(record["rows"].items(), key=lambda item: item[1]["accuracy"])
    worst = min(record["rows"].items(), key=lambda item: item[1]["accuracy"])
    full = record["rows"]["full"]["accuracy"]
    return Page(
        "methods-sst2", "Every method for one epoch on SST-2",
        f"one epoch on SST-2: dev accuracy {score(worst[1]['accuracy'])} (`{worst[0]}`) to "
        f"{score(best[1]['accuracy'])} (`{best[0]}`); full fine-tuning {score(full)}",
        "What each method reaches with whole passes over a small task: "
        f"{'one epoch' if record['epochs'] == 1 else format(record['epochs'], 'g') + ' epochs'} over the 6,920 SST-2 "
        "training sentences on the bundled all-MiniLM-L6-v2 (batch 32, each method's default learning rate), "
        "each method in a fresh process so that the process's peak memory (VmHWM: model, data, training, "
        "evaluation) is its own, scored on the 872 dev sentences. Trainable counts include the classification head; "
        "s/step is the median training step. Rows measured in one run are shown together, with their step time "
        "and peak memory as ratios to full fine-tuning and LoRA where the run has them. `lora+deft` is LoRA with "
        "DEFT's density loss (w = 1).",
        runs, body[:-1])


def apet_sweep() -> Page:
    record = load("apet_sweep.json")
    rows = [[f"{int(row['budget']):,}" if row["budget"].isdigit() else f"`{row['budget']}`", count(row["trained"]),
             score(row["accuracy"])] for row in record["rows"]]
    low, high = record["rows"][0], record["rows"][-1]
    return Page(
        "apet-sweep", "APET: accuracy against the parameter budget",
        f"APET on SST-2: dev accuracy {score(low['accuracy'])} at N = {low['trained']:,} to "
        f"{score(high['accuracy'])} at N = {high['trained']:,}",
        "APET trains N randomly chosen parameters (half inserted LoRA pairs or adapters, half whole backbone "
        "tensors; `peftkit train --method apet -o budget=N -o element_mask=true`); this sweep shows how accuracy "
        "grows with N. Each N: one epoch on the bundled SST-2 with all-MiniLM-L6-v2 (batch 32, APET's default "
        "learning rate), seed 0, in a fresh process, scored on the 872 dev sentences. The classification head is "
        "trained whole in every run and not counted in N; `match:lora` is LoRA's default configuration's count "
        "(r = 8 on query and value).",
        [run("four budgets", "apet_sweep.json")],
        ["## Dev accuracy", "", *table(["budget", "N trained", "dev accuracy"], rows, "lrr"), "",
         image("apet_sweep.png", "APET: SST-2 dev accuracy against N")],
        {"apet_sweep.png": "apet_sweep.png"})


def plm_sparsity() -> Page:
    record = load("plm_sparsity.json")
    settings, summary, base = record["settings"], record["summary"], record["pretrained"]
    lora, deft, change = summary["lora"], summary["deft"], summary["deft_vs_lora"]
    rows = [[label, f"{base[key]:{form}}", f"{lora[key]:{form}}", f"{deft[key]:{form}}", f"{change[key]:.3f}"]
            for label, key, form in (("density (non-zero share)", "density", ".4f"),
                                     ("down-projection rows a token needs, peak", "rows_needed_peak", ".4f"),
                                     ("dev loss", "dev_loss", ".3f"))]
    return Page(
        "plm-sparsity", "DEFT on a squared-ReLU model: sparser activations, fewer down-projection rows",
        f"DEFT leaves {change['density']:.2f}× LoRA's non-zero down-projection inputs and "
        f"{change['rows_needed_peak']:.2f}× the peak rows a token needs, at {change['dev_loss']:.3f}× its dev loss",
        f"DEFT's density loss should make a squared-ReLU model's feed-forward activations exactly zero more often, so "
        f"that a row-sparse down-projection reads fewer of its weight rows at inference. The model: {record['model']}, "
        f"pre-trained from scratch for {settings['pretrain_steps']} steps on the bundled SST-2 training sentences; "
        f"then LoRA (r 8, every linear layer) for {settings['steps']} steps on later sentences, without and with "
        f"DEFT's density loss (weight {settings['density_weight']:g}), seeds {settings['seeds'].replace(',', ', ')} "
        "(medians). Measured on the 872 SST-2 dev sentences. A squared ReLU gives exact zeros, so the density is the "
        "share of non-zero inputs of the down-projections; it is also the mean share of the down-projection's weight "
        "rows a token needs when only the rows of non-zero units are read (what a row-sparse inference kernel holds); "
        "the peak is the largest share any dev token needs.",
        [run("pre-training, LoRA, LoRA + DEFT", "plm_sparsity.json")],
        ["## Results", "", *table(["", "pre-trained", "LoRA", "LoRA + DEFT", "DEFT / LoRA"], rows, "lrrrr")])
