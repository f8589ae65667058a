"""Padding-free batches against padded ones: SmolLM2-135M-Instruct, LoRA r 8 on every linear layer, this CPU.

Data (chat rows, the loss on the assistant's answer):

* ``sst2-chat``: the bundled SST-2 as a chat instruction (``peftkit train --task causal-lm``'s default data),
  batch 16 (what ``peftkit train`` chooses for its 6,920 rows);
* ``mixed``: instruction data of very different lengths built from the shared data sets — SST-2 reviews (their
  sentiment), TREC questions (the kind of answer they ask for), RTE pairs (entailment), Inspec abstracts (their
  keyphrases) and XQuAD paragraphs (a question's answer), 200 rows of each shuffled together, batch 8 (under
  5,000 rows), cut at 512 tokens.

Setups, each on the same batches (drawn with seed 0):

* ``peftkit packed``: peftkit's LoRA, each batch's rows concatenated (``core/mechanics/packing.py``);
* ``peftkit padded``: peftkit's LoRA, rows left-padded to the batch's longest (``--packing off``);
* ``peft padded``: peft's LoRA, rows right-padded to the batch's longest, the model's own loss with labels −100
  on the padding and the prompts — a peft user's Trainer with ``DataCollatorForSeq2Seq``.

Reported: tokens/s (the batches' real tokens over their summed step times — forward, backward, AdamW — in
interleaved rounds), the median over batches of each setup's step time against peftkit packed's, and the peak
RSS growth over the first batches in a fresh process per setup (median of several runs). Ratios are taken
within this one run.

Usage: [PEFTKIT_DATA=../shared/data] python benchmarks/packing.py [--data sst2-chat,mixed] [--batches 8]
       [--memory-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import logging  # noqa: E402

from peftkit.utils.memory import FIXED_MMAP_THRESHOLD, peak_rss_mib, reset_peak_rss, rss_mib  # noqa: E402

logging.set_verbosity_error()
logging.disable_progress_bar()

DATA = Path(os.environ.get("PEFTKIT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
RESULTS = Path(__file__).parent / "results" / "packing.json"
SETUPS = ("peftkit packed", "peftkit padded", "peft padded")
BATCH = {"sst2-chat": 16, "mixed": 8}
MAX_LENGTH = 512
PER_SOURCE = 200
MEMORY_BATCHES = 3
LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "lora_dropout": 0.0, "task_type": "CAUSAL_LM"}


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mixed_rows() -> list[dict]:
    """200 rows from each of five sources (see the module docstring), shuffled with seed 0."""
    from peftkit.tasks.causal_lm import sst2_instruction_rows

    rng = random.Random(0)
    trec = rng.sample(jsonl(DATA / "trec" / "train.jsonl"), PER_SOURCE)
    rte = rng.sample(jsonl(DATA / "rte" / "train.jsonl"), PER_SOURCE)
    inspec = rng.sample(jsonl(DATA / "inspec" / "train.jsonl"), PER_SOURCE)
    articles = json.loads((DATA / "xquad" / "xquad.en.json").read_text())["data"]
    squad = [(paragraph["context"], qa) for article in articles for paragraph in article["paragraphs"]
             for qa in paragraph["qas"]]
    rows = rng.sample(sst2_instruction_rows("train"), PER_SOURCE)
    rows += [chat(f"What kind of answer does this question ask for (ABBR, DESC, ENTY, HUM, LOC or NUM)?\n\n"
                  f"{r['text']}", r["label"]) for r in trec]
    rows += [chat(f"Premise: {r['premise']}\nHypothesis: {r['hypothesis']}\n\nDoes the premise entail the "
                  f"hypothesis?", r["label"]) for r in rte]
    rows += [chat(f"List the keyphrases of this abstract.\n\n{r['title']}. {r['abstract']}",
                  "; ".join(r["keyphrases"])) for r in inspec]
    rows += [chat(f"{context}\n\nQuestion: {qa['question']}", qa["answers"][0]["text"])
             for context, qa in rng.sample(squad, PER_SOURCE)]
    rng.shuffle(rows)
    return rows


def encoded_batches(tokenizer, data: str, count: int) -> list[list[dict]]:
    """``count`` + 1 batches (the first for warm-up) of encoded rows, drawn with seed 0."""
    from peftkit.tasks.causal_lm import encode, load_lm_examples, sst2_instruction_rows

    rows = sst2_instruction_rows("train") if data == "sst2-chat" else mixed_rows()
    examples = load_lm_examples(tokenizer, data, rows)
    order = random.Random(0).sample(range(len(examples)), (count + 1) * BATCH[data])
    encoded = [encode(tokenizer, examples[i], MAX_LENGTH) for i in order]
    return [encoded[start:start + BATCH[data]] for start in range(0, len(encoded), BATCH[data])]


def right_padded(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """What DataCollatorForSeq2Seq gives a peft user: rows padded on the right to the longest, labels −100 there."""
    length = max(len(r["input_ids"]) for r in rows)
    padding = [[0] * (length - len(r["input_ids"])) for r in rows]
    return {"input_ids": torch.tensor([r["input_ids"] + [pad_token_id] * len(p) for r, p in zip(rows, padding)]),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + p for r, p in zip(rows, padding)]),
            "labels": torch.tensor([r["labels"] + [-100] * len(p) for r, p in zip(rows, padding)])}


class Setup:
    """A model with LoRA, its optimizer and how it turns rows into a batch and a batch into a loss."""

    def __init__(self, name: str) -> None:
        from peftkit.core.mechanics.packing import PackingCollator, packed_loss
        from peftkit.core.pretrained import load_causal_lm, smollm2_dir
        from peftkit.recipes.causal_lm import LeftPadCollator, completion_loss

        torch.manual_seed(0)
        self.tokenizer, model = load_causal_lm(smollm2_dir())
        if name == "peft padded":
            import peft

            self.model = peft.get_peft_model(model, peft.LoraConfig(**LORA))
            self.collate = lambda rows: right_padded(rows, self.tokenizer.pad_token_id)
            self.loss = lambda model, batch: model(**batch).loss
        else:
            import peftkit

            self.model = peftkit.get_peft_model(model, peftkit.LoraConfig(**LORA))
            packed = name == "peftkit packed"
            pad = self.tokenizer.pad_token_id
            self.collate = PackingCollator(pad) if packed else LeftPadCollator(pad)
            self.loss = packed_loss if packed else completion_loss
        self.model.train()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)

    def step(self, rows: list[dict]) -> float:
        """One training step on ``rows``; its loss."""
        loss = self.loss(self.model, self.collate(rows))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def memory_worker(name: str, data: str, count: int) -> dict:
    """In a fresh process: the peak RSS growth over the first ``MEMORY_BATCHES`` timed batches."""
    torch.set_num_threads(2)
    setup = Setup(name)
    batches = encoded_batches(setup.tokenizer, data, count)
    before = rss_mib()
    reset_peak_rss()
    for rows in batches[1:1 + MEMORY_BATCHES]:
        setup.step(rows)
    return {"peak_growth_mib": peak_rss_mib() - before}


def measure(data: str, count: int, memory_runs: int) -> dict:
    setups = {name: Setup(name) for name in SETUPS}
    batches = encoded_batches(setups[SETUPS[0]].tokenizer, data, count)
    for setup in setups.values():
        setup.step(batches[0])  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in SETUPS}
    losses: dict[str, list[float]] = {name: [] for name in SETUPS}
    for index, rows in enumerate(batches[1:]):
        for name in SETUPS[:: 1 if index % 2 == 0 else -1]:  # alternate who goes first
            started = time.perf_counter()
            losses[name].append(setups[name].step(rows))
            seconds[name].append(time.perf_counter() - started)
    del setups
    tokens = [sum(len(r["input_ids"]) for r in rows) for rows in batches[1:]]
    padded = [len(rows) * max(len(r["input_ids"]) for r in rows) for rows in batches[1:]]
    memory: dict[str, list[float]] = {name: [] for name in SETUPS}
    for _ in range(memory_runs):
        for name in SETUPS:
            command = [sys.executable, __file__, "--worker", name, "--data", data, "--batches", str(count)]
            done = subprocess.run(command, capture_output=True, text=True, check=True,
                                  env={**os.environ, **FIXED_MMAP_THRESHOLD})
            memory[name].append(json.loads(done.stdout.strip().splitlines()[-1])["peak_growth_mib"])
    return {"batch_size": BATCH[data], "batches": count, "tokens": tokens, "padded_tokens": padded,
            "step_seconds": seconds, "losses": losses, "peak_growth_mib": memory}


def summarise(result: dict) -> dict:
    """tokens/s, step-time ratios (median over batches) and memory medians per setup."""
    tokens = sum(result["tokens"])
    seconds, memory = result["step_seconds"], result["peak_growth_mib"]
    packed = seconds[SETUPS[0]]
    return {name: {"tokens_per_second": tokens / sum(seconds[name]),
                   "median_step_ratio_to_packed": statistics.median(t / p for t, p in zip(seconds[name], packed,
                                                                                           strict=True)),
                   "peak_growth_mib": statistics.median(memory[name])} for name in SETUPS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=",".join(BATCH), help="comma-separated: " + ", ".join(BATCH))
    parser.add_argument("--batches", type=int, default=8, help="timed batches per data set")
    parser.add_argument("--memory-runs", type=int, default=3)
    parser.add_argument("--worker", choices=SETUPS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.data, args.batches)))
        return
    torch.set_num_threads(2)
    record = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"data": {}}
    for data in args.data.split(","):
        if data not in BATCH:
            raise SystemExit(f"unknown data {data!r}; choose from {', '.join(BATCH)}")
        result = measure(data, args.batches, args.memory_runs)
        result["summary"] = summarise(result)
        record["data"][data] = {**result, **provenance()}
        saved = 1 - sum(result["tokens"]) / sum(result["padded_tokens"])
        print(f"{data}: batch {BATCH[data]}, {args.batches} batches, {sum(result['tokens']):,} tokens "
              f"({100 * saved:.0f}% of a padded batch is padding)")
        print(f"{'setup':<16} {'tokens/s':>10} {'step / packed':>14} {'peak MiB':>10}")
        for name, row in result["summary"].items():
            print(f"{name:<16} {row['tokens_per_second']:>10.1f} {row['median_step_ratio_to_packed']:>14.2f} "
                  f"{row['peak_growth_mib']:>10.0f}")
        RESULTS.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
