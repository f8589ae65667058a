"""Masked-LM training step with the head on every position (transformers' own loss) against the head on the
masked positions only (``peftkit.recipes.masked_lm.MaskedOnly``), full fine-tuning of the bundled MiniLM,
batches of 32 SST-2 sentences (≤ 64 tokens, 15 % masked), median of 5 steps each, the full-head reference
measured before and after in the same run.

Usage: python benchmarks/mlm_head_speed.py
"""

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    from transformers import DataCollatorForLanguageModeling

    from peftkit.core.pretrained import bundled_model_dir, load_masked_lm
    from peftkit.recipes.masked_lm import MaskedOnly, encode_passages, read_passages
    from peftkit.tasks.classification import bundled_sst2

    torch.set_num_threads(2)
    tokenizer, model = load_masked_lm(bundled_model_dir())
    encoded = encode_passages(tokenizer, read_passages(bundled_sst2("train"), "text")[:32 * 6], 64)
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)
    batches = [{k: v for k, v in collate(encoded[i:i + 32]).items() if k != "special_tokens_mask"}
               for i in range(0, len(encoded), 32)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def median_step(loss_of) -> float:
        seconds = []
        for batch in batches:
            started = time.perf_counter()
            loss_of(batch).backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds[1:])  # the first step warms up

    full = median_step(lambda batch: model(**batch).loss)
    masked_only = MaskedOnly(model)
    masked = median_step(lambda batch: masked_only.loss(model, batch)[0])
    masked_only.remove()
    full_again = median_step(lambda batch: model(**batch).loss)
    print(f"full head {full:.3f}s / {full_again:.3f}s, masked-only {masked:.3f}s per step of 32 (median of 5); "
          f"ratio {masked / statistics.mean([full, full_again]):.2f}")


if __name__ == "__main__":
    main()
