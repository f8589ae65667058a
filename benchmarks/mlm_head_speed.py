"""Masked-LM training step with the head on every position (transformers' own loss) against the head on the
masked positions only (``peftkit.recipes.masked_lm.MaskedOnly``), full fine-tuning of the bundled MiniLM,
batches of 32 SST-2 sentences (≤ 64 tokens, 15 % masked), median of 5 steps each, the full-head reference
measured before and after in the same run.

Usage: python benchmarks/mlm_head_speed.py
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import statistics
import time

import torch
from transformers import DataCollatorForLanguageModeling
from peftkit.core.pretrained import load_masked_lm, bundled_model_dir
from peftkit.recipes.masked_lm import MaskedOnly, encode_passages, read_passages
from peftkit.tasks.classification import bundled_sst2
torch.set_num_threads(2)
tok, model = load_masked_lm(bundled_model_dir())
texts = read_passages(bundled_sst2("train"), "text")[:32*6]
enc = encode_passages(tok, texts, 64)
coll = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=0)
batches = [coll(enc[i:i+32]) for i in range(0, len(enc), 32)]
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
def step(fn):
    times=[]
    for b in batches:
        b = {k: v for k, v in b.items() if k != "special_tokens_mask"}
        t=time.perf_counter(); loss = fn(b); loss.backward(); opt.step(); opt.zero_grad(); times.append(time.perf_counter()-t)
    return statistics.median(times[1:])
full = step(lambda b: model(**b).loss)
mo = MaskedOnly(model)
masked = step(lambda b: mo.loss(model, b)[0])
mo.remove()
full2 = step(lambda b: model(**b).loss)
print(f"full head {full:.3f}s / {full2:.3f}s, masked-only {masked:.3f}s per step of 32 (median of 5); ratio {masked/statistics.mean([full, full2]):.2f}")
