"""The PLM seed claim: DEFT's density loss makes a squared-ReLU model's feed-forward activations exactly zero more
often, and a sparse down-projection then needs fewer of its weight rows at inference.

PLM (Deng et al., 2025, "PLM: Efficient Peripheral Language Models Hardware-Co-Designed for Ubiquitous
Computing") builds on multi-head latent attention and squared-ReLU feed-forward blocks, whose activations are
exactly zero wherever the gate is negative; a token whose activation a has k non-zero units needs only those k rows
of the down-projection's weight (W_down[:, a ≠ 0]) — what a sparse inference kernel loads.

The run, all on this machine's CPU in one process:
1. A tiny DeepSeek-V3-shaped model (latent attention, relu² MLPs, dense) is pre-trained from scratch, briefly, on
   the bundled SST-2 training sentences (a causal LM over the word pieces that occur in them).
2. From that model, LoRA (r 8, every linear layer) is fine-tuned on the next sentences with and without DEFT's
   density loss (``peftkit.objectives.DensityLoss``, weight ``--density-weight``), for each seed.
3. On the SST-2 dev sentences: the loss, the fraction of non-zero inputs of each down-projection (exact zeros:
   relu² gives them), and the down-projection weight rows a token needs — mean and the peak over tokens — as a
   fraction of the dense projection's (the inference memory ratio a row-sparse down-projection gives).

Medians over seeds are written to ``benchmarks/results/plm_sparsity.json`` with the command, machine and date.

Usage: python benchmarks/plm_sparsity.py [--pretrain-steps 600] [--steps 200] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer, DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402

import peftkit  # noqa: E402
from peftkit.core.pretrained import bundled_model_dir  # noqa: E402
from peftkit.objectives.density import DensityLoss  # noqa: E402
from peftkit.tasks.classification import bundled_sst2  # noqa: E402
from peftkit.tasks.data import read_rows  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "plm_sparsity.json"
LENGTH = 48


def sentences(split: str) -> list[str]:
    return [row["text"] for row in read_rows(bundled_sst2(split))]


class Corpus:
    """The word pieces of the bundled sentences, renumbered densely (a small vocabulary for a small model)."""

    def __init__(self, texts: list[str]) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
        pieces = sorted({i for text in texts for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]})
        self.ids = {piece: index + 2 for index, piece in enumerate(pieces)}  # 0 pads, 1 marks an unknown piece

    @property
    def vocabulary(self) -> int:
        return len(self.ids) + 2

    def batches(self, texts: list[str], batch_size: int, generator: torch.Generator | None = None):
        """Batches of padded id rows (with the attention mask); shuffled when a generator is given."""
        rows = [[self.ids.get(i, 1) for i in self.tokenizer(t, add_special_tokens=False)["input_ids"]][:LENGTH]
                for t in texts]
        order = torch.randperm(len(rows), generator=generator).tolist() if generator else range(len(rows))
        order = list(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [rows[i] for i in order[start:start + batch_size]]
            width = max(len(row) for row in chunk)
            ids = torch.tensor([row + [0] * (width - len(row)) for row in chunk])
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in chunk])
            yield {"input_ids": ids, "attention_mask": mask}


def tiny_plm(vocabulary: int) -> DeepseekV3ForCausalLM:
    torch.manual_seed(0)
    config = DeepseekV3Config(vocab_size=vocabulary, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                              first_k_dense_replace=4, num_attention_heads=4, num_key_value_heads=4,
                              q_lora_rank=64, kv_lora_rank=64, qk_rope_head_dim=16, qk_nope_head_dim=16,
                              v_head_dim=32, hidden_act="relu2", max_position_embeddings=LENGTH, n_group=1,
                              topk_group=1, tie_word_embeddings=True, pad_token_id=0, bos_token_id=0,
                              eos_token_id=0)
    return DeepseekV3ForCausalLM(config)


def lm_loss(model, batch) -> torch.Tensor:
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(**batch, labels=labels).loss


def train(model, batches, steps: int, lr: float, density: DensityLoss | None = None) -> float:
    """AdamW over the trainable parameters with a linear decay; the last step's language-model loss."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    model.train()
    loss = torch.zeros(())
    for _, batch in zip(range(steps), batches):
        loss = lm_loss(model, batch)
        total = loss + density.loss() if density is not None else loss
        total.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return loss.item()


def endless(corpus: Corpus, texts: list[str], batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from corpus.batches(texts, batch_size, generator)


@torch.no_grad()
def measure(model, corpus: Corpus, texts: list[str]) -> dict:
    """Dev loss; the non-zero share of the down-projections' inputs over real tokens (the density: also the mean
    share of down-projection weight rows a token needs), per layer; and the peak share over tokens."""
    down = {name: m for name, m in model.named_modules() if name.endswith("mlp.down_proj")}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in down}
    mask_now: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            seen[name].append((args[0] != 0).sum(-1)[mask_now["mask"].bool()])
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in down.items()]
    model.eval()
    losses, tokens = [], 0
    try:
        for batch in corpus.batches(texts, 16):
            mask_now["mask"] = batch["attention_mask"]
            count = int(batch["attention_mask"][:, 1:].sum())
            losses.append(float(lm_loss(model, batch)) * count)
            tokens += count
    finally:
        for handle in handles:
            handle.remove()
    width = next(iter(down.values())).in_features
    per_token = torch.stack([torch.cat(counts) for counts in seen.values()]).float()  # layers × tokens
    rows_needed = per_token.sum(0) / (width * len(down))  # its mean is the density
    return {"dev_loss": sum(losses) / tokens,
            "density": float(per_token.mean() / width),
            "density_per_layer": [float(layer.mean() / width) for layer in per_token],
            "rows_needed_peak": float(rows_needed.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--density-weight", type=float, default=1.0)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    train_texts, dev_texts = sentences("train"), sentences("dev")
    pretrain_texts, tune_texts = train_texts[:5000], train_texts[5000:]
    corpus = Corpus(train_texts)
    base = tiny_plm(corpus.vocabulary)
    pretrain_loss = train(base, endless(corpus, pretrain_texts, 32, 0), args.pretrain_steps, lr=3e-3)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    results = {"pretrained": measure(base, corpus, dev_texts), "lora": [], "deft": []}
    print(f"pre-trained ({args.pretrain_steps} steps, last loss {pretrain_loss:.3f}): {results['pretrained']}")
    for seed in (int(s) for s in args.seeds.split(",")):
        for setting in ("lora", "deft"):
            model = tiny_plm(corpus.vocabulary)
            model.load_state_dict(state)
            torch.manual_seed(seed)
            model = peftkit.get_peft_model(model, peftkit.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
            density = DensityLoss(model, weight=args.density_weight) if setting == "deft" else None
            train(model, endless(corpus, tune_texts, 16, seed), args.steps, lr=2e-3, density=density)
            results[setting].append(measure(model, corpus, dev_texts))
            print(f"{setting} seed {seed}: {results[setting][-1]}")
    summary = {setting: {key: statistics.median(run[key] for run in results[setting])
                         for key in ("dev_loss", "density", "rows_needed_peak")}
               for setting in ("lora", "deft")}
    summary["deft_vs_lora"] = {key: summary["deft"][key] / summary["lora"][key]
                               for key in ("density", "rows_needed_peak", "dev_loss")}
    record = {"command": " ".join(["python benchmarks/plm_sparsity.py", *sys.argv[1:]]),
              "date": datetime.date.today().isoformat(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
              "seconds": time.perf_counter() - started, "settings": vars(args),
              "model": "DeepSeek-V3 shape, 4 layers, hidden 128, relu² MLP 512 wide, multi-head latent attention",
              "summary": summary, **results}
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
