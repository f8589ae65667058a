"""The memory page: MEFT, QLoRA and LoRA against full fine-tuning, in one run."""

from __future__ import annotations

from .common import Page, count, load, ratio, run, table

SOURCE = "memory_methods.json"
REFERENCES = {"full": "× full", "lora-plain": "× plain LoRA", "lora": "× LoRA"}


def _ratios(row: dict, key: str, references: dict, names) -> list[str]:
    return [ratio(row[key] / references[name][key]) if key in references.get(name, {}) else "-" for name in names]


def memory_methods() -> Page:
    record = load(SOURCE)
    setups = record["setups"]
    main = {name: row for name, row in setups.items() if "run" not in row}
    rows = [[name, count(row["trainable"]), f"{row['saved_mib']:.1f}", *_ratios(row, "saved_mib", main, REFERENCES),
             f"{row['peak_growth_mib']:,.0f}", *_ratios(row, "peak_growth_mib", main, REFERENCES),
             f"{row['step_seconds']:.3f}", *_ratios(row, "step_seconds", main, ("full", "lora"))]
            for name, row in main.items()]
    body = ["## Full fine-tuning, LoRA and MEFT", "",
            *table(["setup", "trainable", "saved MiB", *REFERENCES.values(), "peak growth MiB", *REFERENCES.values(),
                    "s/step", "× full", "× LoRA"], rows, "lr" + "r" * 11)]
    runs = [run("full, LoRA, MEFT", SOURCE)]
    later = {name: row for name, row in setups.items() if "run" in row}
    for name, row in later.items():
        references = row["run"]["references"]
        runs.append(run(name, SOURCE, row["run"], machine=record["machine"]))
        body += ["", f"## `{name}`, in a run of its own", "",
                 "Its ratios are to the references measured in that run (peak growth, step time); what is saved "
                 "for backward is exact, the same in every run.", "",
                 *table(["setup", "trainable", "saved MiB", "peak growth MiB", *REFERENCES.values(), "s/step",
                         "× full", "× LoRA", "NF4 / fp32 linear weights"],
                        [[name, count(row["trainable"]), f"{row['saved_mib']:.1f}", f"{row['peak_growth_mib']:,.0f}",
                          *_ratios(row, "peak_growth_mib", references, REFERENCES), f"{row['step_seconds']:.3f}",
                          *_ratios(row, "step_seconds", references, ("full", "lora")),
                          f"{row['linear_weight_ratio']:.3f}"]], "lrrrrrrrrrr")]
    full = main["full"]
    meft = [row["peak_growth_mib"] / full["peak_growth_mib"] for name, row in main.items() if name.startswith("meft")]
    lora = main["lora"]["peak_growth_mib"] / full["peak_growth_mib"]
    quantized = next((row["linear_weight_ratio"] for row in setups.values() if row["linear_weight_ratio"]), None)
    headline = (f"MEFT's peak memory growth {min(meft):.2f}–{max(meft):.2f}× full fine-tuning's (LoRA "
                f"{lora:.2f}×)" + (f"; QLoRA stores linear weights in {quantized:.3f}× their float32 bytes"
                                   if quantized else ""))
    return Page(
        "memory-methods", "Memory: MEFT, QLoRA and LoRA against full fine-tuning", headline,
        "What each memory-saving method keeps while training, all against full fine-tuning in the same run: the "
        "bundled all-MiniLM-L6-v2 with a classification head, a batch of 32 × 128 real SST-2 tokens, float32, "
        "AdamW, each setup in a fresh process. Measured: the bytes saved for backward by one step (activations; "
        "parameters excluded), the growth of the process's peak resident memory over the training steps (glibc's "
        "mmap threshold fixed for every setup, so freed activation buffers go back to the system and the peak "
        "follows live memory), and the median step time. `lora-plain` is LoRA with `lean_training=False` (what "
        "peft's LoRA keeps); `lora` is peftkit's default, lean training. MEFT (variants 1–3) makes the layers "
        "reversible and keeps only the last layer's two streams, paying with one more forward pass per layer in "
        "backward; QLoRA stores the frozen linear weights in NF4 (4-bit codes with 8-bit block scales).",
        runs, body)
