"""Pages on the cost of training and serving against Hugging Face peft: LoRA's step on CPU and GPU, torch.compile,
many adapters in one batch, and the command line's start-up."""

from __future__ import annotations

import statistics

from .common import Page, count, load, ratio, run, table

LORA_VS_PEFT = {"MiniLM": "lora_vs_peft_minilm_dropout0.json", "SmolLM2": "lora_vs_peft_smollm2_dropout0.json"}


def _lora_vs_peft_ratios(record: dict) -> dict[str, tuple[float, float, float]]:
    """measure -> (peftkit / peft, peftkit, peft)"""
    def of(values: dict, key: str) -> float:
        return statistics.median(values[key]) if isinstance(values[key], list) else values[key]

    out = {}
    for measure, key, scale in (("step", "step_seconds", 1), ("peak", "peak_growth_mib", 1),
                                ("saved", "saved_for_backward_bytes", 2**20)):
        ours, theirs = of(record[key], "peftkit") / scale, of(record[key], "peft") / scale
        out[measure] = (ours / theirs, ours, theirs)
    return out


def lora_vs_peft() -> Page:
    records = {label: load(name) for label, name in LORA_VS_PEFT.items()}
    ratios = {label: _lora_vs_peft_ratios(record) for label, record in records.items()}
    header = ["peftkit / peft"] + [f"{records[label]['model']}, {' × '.join(map(str, records[label]['batch']))}"
                                   for label in records]
    rounds = {label: len(record["step_seconds"]["peftkit"]) for label, record in records.items()}
    memory_runs = {label: len(record["peak_growth_mib"]["peftkit"]) for label, record in records.items()}
    def cells(measure: str, form: str, unit: str, extra: dict[str, str] | None = None) -> list[str]:
        return [f"{ratios[label][measure][0]:.2f} ({ratios[label][measure][1]:{form}} vs "
                f"{ratios[label][measure][2]:{form}} {unit}{extra[label] if extra else ''})" for label in records]

    rows = [["training step time, median", *cells("step", ".3f", "s",
                                                  {k: f", {n} steps each" for k, n in rounds.items()})],
            ["peak memory growth, median", *cells("peak", ",.0f", "MiB",
                                                  {k: f", {n} processes each" for k, n in memory_runs.items()})],
            ["saved for backward in one step", *cells("saved", ",.0f", "MiB")],
            ["trainable parameters", *(f"{count(r['trainable_parameters']['peftkit'])} vs "
                                       f"{count(r['trainable_parameters']['peft'])}" for r in records.values())]]
    minilm, smollm = ratios["MiniLM"], ratios["SmolLM2"]
    settings = records["MiniLM"]["settings"]
    return Page(
        "lora-vs-peft", "LoRA training step: peftkit against peft on a CPU",
        f"LoRA step {ratio(minilm['step'][0])}× peft's time and {ratio(minilm['peak'][0])}× its peak memory growth "
        f"on MiniLM; {ratio(smollm['step'][0])}× and {ratio(smollm['peak'][0])}× on SmolLM2-135M",
        "One LoRA training step (forward, backward, AdamW step) by peftkit and by Hugging Face peft on the same model "
        f"and batch in the same run: LoRA r = {settings['r']}, alpha {settings['lora_alpha']} on every linear layer, "
        f"lora_dropout {settings['lora_dropout']:g} (peft's default). The bundled all-MiniLM-L6-v2 with a "
        "classification head on SST-2 sentences (the model's own dropout 0.1 on hidden states and attention), and "
        "SmolLM2-135M-Instruct as a causal LM on the same sentences (`--lm`). Step time is the median over "
        "interleaved rounds (peft, peftkit, peftkit, peft, …); peak memory is the growth of the process's peak "
        "resident memory (VmHWM, reset after set-up) over the training steps, each implementation in fresh "
        "processes taking turns, median; saved for backward is what autograd keeps for backward in one step (exact). "
        "peftkit trains with lean training, its default: the same forward and backward maths with less kept for "
        "backward. LoRA is the method most adapters are trained with, so its cost against the reference "
        "implementation is the first thing to know.",
        [run(label, name) for label, name in LORA_VS_PEFT.items()],
        ["## peftkit / peft", "", *table(header, rows, "lll")])


GPU_LABELS = {"peft": "peft LoRA (its default: float32 adapters)", "peftkit": "peftkit LoRA",
              "peft-bf16": "peft LoRA, bfloat16 adapters (its best for speed)",
              "peft-bf16-ckpt": "peft LoRA, bfloat16 adapters, gradient checkpointing (its best for memory)",
              "peftkit-ckpt": "peftkit LoRA, gradient checkpointing", "qlora": "peftkit QLoRA (NF4, torchao)",
              "full": "full fine-tuning"}


def gpu_lora_ratios() -> dict[str, float]:
    setups = load("gpu_lora.json")["setups"]
    ours, theirs = setups["peftkit"], setups["peft"]
    return {"tokens_per_second": ours["tokens_per_second"] / theirs["tokens_per_second"],
            "peak_gib": ours["peak_gib"] / theirs["peak_gib"]}


def gpu_lora() -> Page:
    record = load("gpu_lora.json")
    settings, setups = record["settings"], record["setups"]
    peft = setups["peft"]
    rows = [[GPU_LABELS[name], f"{row['tokens_per_second']:,.0f}",
             ratio(row["tokens_per_second"] / peft["tokens_per_second"]), f"{row['peak_gib']:.1f}",
             ratio(row["peak_gib"] / peft["peak_gib"]), f"{row['mfu']:.2f}"]
            for name in GPU_LABELS if (row := setups.get(name))]
    speed, memory = gpu_lora_ratios().values()
    batch = " × ".join(map(str, settings["batch"]))
    return Page(
        "gpu-lora", "LoRA training on a GPU: peftkit against peft",
        f"peftkit LoRA {ratio(speed)}× peft's tokens/s at {ratio(memory)}× its peak GPU memory (1.1B model, bfloat16)",
        f"LoRA training throughput and memory where large models train: a {settings['model']}, in "
        f"{settings['dtype']}, batch {batch} tokens, LoRA r = {settings['lora_r']} on all "
        f"{settings['projections']} linear projections, AdamW; {settings['warmup']} warm-up steps, then the median "
        f"step time over {settings['steps']}, each setup in a fresh process so that "
        "`torch.cuda.max_memory_allocated` is its own. "
        "peft's LoRA is the reference; full fine-tuning and peftkit's QLoRA are measured alongside. PEFT-MFU counts "
        "the work LoRA training needs (frozen weights: forward and input gradients only; full fine-tuning: all "
        "three products) against the card's measured bfloat16 matrix-multiply rate.",
        [run("LoRA, QLoRA, full fine-tuning", "gpu_lora.json")],
        ["## Results", "",
         *table(["setup", "tokens/s", "× peft", "peak GiB (`max_memory_allocated`)", "× peft", "PEFT-MFU"], rows,
                "lrrrrr")])


def compile_step() -> Page:
    record = load("compile_step_minilm.json")
    median, warmup = record["median_step_seconds"], record["warmup_seconds"]
    rows = []
    for name, value in record["ratios"].items():
        top, bottom = name.split(" / ")
        rows.append([name, ratio(value), f"{median[top]:.2f} vs {median[bottom]:.2f} s",
                     ratio(warmup[top] / warmup[bottom])])
    ours = record["ratios"]["peftkit compiled / peft compiled"]
    gain = record["ratios"]["peftkit compiled / peftkit eager"]
    steps = len(record["step_seconds"]["peftkit eager"])
    return Page(
        "compile-step", "torch.compile on a LoRA training step",
        f"compiled peftkit step {ratio(ours)}× compiled peft's; compiling peftkit: {ratio(gain)}× its eager step",
        "Whether `torch.compile` (inductor) speeds up a LoRA training step, for peftkit and peft, in one run: the "
        f"setting of [LoRA against peft](lora-vs-peft.md) ({record['model']}, batch "
        f"{' × '.join(map(str, record['batch']))} tokens, LoRA r = 8 on every linear layer, the model's dropout 0.1 "
        "on) four ways — peft and peftkit, each eager and compiled. Each variant first runs its warm-up steps "
        f"(compilation included), then the variants take turns; medians of {steps} timed steps each (forward, "
        "backward, AdamW step). A compiled model traces without graph breaks and its training step equals the eager "
        "one to 1e-5 (`tests/core/test_compile.py`).",
        [run("four variants", "compile_step_minilm.json")],
        ["## Ratios of median step times", "",
         *table(["ratio", "median step", "medians", "warm-up time (compilation included)"], rows, "lrrr"), "",
         "Warm-up: the ratio of the variants' time over their warm-up steps."])


def cli_startup() -> Page:
    record = load("cli_startup.json")
    rows = [[f"`{name}`", f"{values['median_seconds']:.3f} s", f"{values['vs_bare_python']:.2f}",
             "empty" if values["stderr_empty"] else "not empty"] for name, values in record["commands"].items()]
    help_ = record["commands"]["peftkit --help"]
    torch = record["commands"]["python -c 'import torch'"]
    return Page(
        "cli-startup", "Command-line start-up",
        f"`peftkit --help` answers in {help_['vs_bare_python']:.2f}× a bare interpreter's start "
        f"(`import torch` alone: {torch['vs_bare_python']:.1f}×)",
        "How fast the command line answers: `peftkit --help` and `peftkit --version` against the bare interpreter "
        f"and `import torch`. Each command runs {record['runs']} times as a fresh process, the commands taking turns "
        "so that a slow moment of a shared machine falls on each alike; the median wall time of each, its ratio to "
        "the bare interpreter's, and whether anything was written to stderr. torch, transformers and torchao are "
        "imported only by the commands that use them.",
        [run("four commands", "cli_startup.json")],
        ["## Medians", "", *table(["command", "median", "× bare `python -c pass`", "stderr"], rows, "lrrl")])


def _mixed_rows(record: dict) -> list[list[str]]:
    median, quartiles = record["median"], record.get("round_ratio_quartiles", {})
    rows = []
    for implementation, ratios in record["ratios"].items():
        first = True
        for key, value in ratios.items():
            if not key.startswith("mixed"):
                continue
            form = key.removeprefix("mixed").removesuffix(" / single").strip()
            top, bottom = f"{implementation} mixed{' ' + form if form else ''}", f"{implementation} single"
            cells = [f"{implementation}{', ' + form + ' form' if form else ''}",
                     _mixed_cell(value, median[top], median[bottom], quartiles.get(implementation, {}).get(key)),
                     _mixed_cell(ratios["single / base"], median[bottom], median["base"],
                                 quartiles.get(implementation, {}).get("single / base")) if first else ""]
            rows.append(cells)
            first = False
    return rows


def _mixed_cell(value: float, top: float, bottom: float, spread: list[float] | None) -> str:
    cell = f"{value:.2f} ({1e3 * top:,.1f} / {1e3 * bottom:,.1f} ms"
    return cell + (f"; rounds' quartiles {spread[0]:.2f}–{spread[1]:.2f})" if spread else ")")


def mixed_batch() -> Page:
    cpu, cuda = load("mixed_batch_cpu.json"), load("mixed_batch_cuda.json")
    sections = []
    for record, what in ((cpu, "CPU"), (cuda, "GPU")):
        settings, shape = record["settings"], record["shape"]
        sections += [f"## {what}: {settings['dtype']}, batch {settings['batch']} × {settings['length']}", "",
                     f"Llama shape: hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
                     f"{shape['num_attention_heads']} heads ({shape['num_key_value_heads']} for keys and values), "
                     f"feed-forward {shape['intermediate_size']}, vocabulary {shape['vocab_size']:,}; medians of "
                     f"{settings['rounds']} rounds. The largest difference between peftkit's and peft's mixed logits: "
                     f"{record['max_logit_difference']:.3g}.", "",
                     *table(["", "mixed / single unmerged", "single unmerged / base"], _mixed_rows(record), "lrr"), ""]
    gathered = cpu["ratios"]["peftkit"]["mixed gathered / single"]
    return Page(
        "mixed-batch", "Many LoRA adapters in one batch",
        f"each row through its own adapter: {ratio(gathered)}× one adapter's time on a CPU, "
        f"{ratio(cuda['ratios']['peftkit']['mixed / single'])}× on an H200 (peft: "
        f"{ratio(cuda['ratios']['peft']['mixed / single'])}×)",
        "Serving many adapters at once: a batch whose rows each go through their own LoRA adapter "
        "(`adapter_names=`), against the same batch through one unmerged adapter (single) and through the plain "
        "model (base), for peftkit and peft on the same model, batch and adapter weights, in one run. A Llama-style "
        "config with random weights and 8 LoRA adapters (r = 16, every linear projection, random A and B), 4 rows "
        "each in shuffled order; eval mode, no gradients, the median over interleaved rounds. peftkit's mixed batch "
        "takes one of two forms — gathered (A and B gathered per row, two batched products; used on CPUs) or "
        "concatenated (all adapters' A in one product, two plain matrix products; used on CUDA). The CPU run times "
        "both, the GPU run the gathered one; the quartiles of the same ratio taken within each round show the noise. "
        "peft keeps adapter "
        "weights in float32 under a bfloat16 model, peftkit in the model's dtype, so their bfloat16 logits differ by "
        "rounding.",
        [run("CPU", "mixed_batch_cpu.json"), run("GPU", "mixed_batch_cuda.json")],
        sections[:-1])


PACKING_DATA = {"mixed": "variable-length instructions (five sources)", "sst2-chat": "SST-2 as a chat instruction"}


def packing_ratios(data: str = "mixed") -> dict[str, float]:
    """peftkit packed against peftkit padded and peft padded: tokens/s and peak memory growth ratios."""
    summary = load("packing.json")["data"][data]["summary"]
    packed = summary["peftkit packed"]
    return {f"{measure} vs {name}": packed[measure] / summary[name][measure]
            for measure in ("tokens_per_second", "peak_growth_mib") for name in ("peftkit padded", "peft padded")}


def packing() -> Page:
    record = load("packing.json")["data"]
    sections = []
    for data, label in PACKING_DATA.items():
        result, summary = record[data], record[data]["summary"]
        packed = summary["peftkit packed"]
        padding = 1 - sum(result["tokens"]) / sum(result["padded_tokens"])
        rows = [[name, f"{row['tokens_per_second']:,.0f}",
                 ratio(packed["tokens_per_second"] / row["tokens_per_second"]),
                 f"{row['median_step_ratio_to_packed']:.2f}", f"{row['peak_growth_mib']:,.0f}",
                 ratio(packed["peak_growth_mib"] / row["peak_growth_mib"])] for name, row in summary.items()]
        sections += [f"## {label}: batch {result['batch_size']}, {result['batches']} batches", "",
                     f"{sum(result['tokens']):,} tokens; padded to each batch's longest row they would be "
                     f"{sum(result['padded_tokens']):,} ({100 * padding:.0f}% padding). Memory: median of "
                     f"{len(result['peak_growth_mib']['peftkit packed'])} fresh processes per setup.", "",
                     *table(["setup", "tokens/s", "packed ×", "step time / packed (median)", "peak growth MiB",
                             "packed ×"], rows, "lrrrrr"), ""]
    mixed = packing_ratios("mixed")
    return Page(
        "packing", "Padding-free batches",
        f"padding-free LoRA training {ratio(mixed['tokens_per_second vs peftkit padded'])}× padded batches' tokens/s "
        f"and {ratio(mixed['tokens_per_second vs peft padded'])}× peft's, at "
        f"{ratio(mixed['peak_growth_mib vs peft padded'])}× peft's peak memory (SmolLM2-135M, variable-length chat)",
        "What padding-free batches (`--packing`, on by default for causal LMs and tagging) save when rows differ in "
        "length: SmolLM2-135M-Instruct with LoRA r = 8 on every linear layer on this CPU, three setups on the same "
        "batches in one run — peftkit packed (each batch's rows packed end to end into rows of the longest row's "
        "length or 256 tokens, attention kept within each row, the LM head run only where a trained token is "
        "predicted), peftkit padded (`--packing off`: rows left-padded to "
        "the batch's longest) and peft padded (peft's LoRA, rows right-padded, the model's own loss: a peft user's "
        "Trainer with `DataCollatorForSeq2Seq`). tokens/s counts the real tokens of the batches over the setups' "
        "summed step times (forward, backward, AdamW step), the setups taking turns batch by batch; peak memory is "
        "the growth of the process's peak resident memory over the first batches, each setup in fresh processes. "
        "The packed loss and gradients equal the padded batch's to 1e-5 (`tests/core/test_packing.py`).",
        [run(label, "packing.json", record[data]) for data, label in PACKING_DATA.items()],
        sections[:-1])
