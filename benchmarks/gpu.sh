#!/usr/bin/env bash
# The GPU comparisons, in one short run on one H100:
#   issue 4 (< 5 minutes): LoRA training of a TinyLlama-shaped 1.1B model in bf16, batch 4 x 2048 — peftkit vs
#     peft vs full fine-tuning vs peftkit QLoRA: tokens/s, torch.cuda.max_memory_allocated, PEFT-MFU;
#   issue 7 (< 5 minutes): `peftkit bench --device cuda` on the same shape (random weights, MiniLM's tokenizer)
#     with a classification head on SST-2: full fine-tuning, LoRA, DoRA, QLoRA, IA3, prompt tuning and
#     bottleneck adapters, each against peft's implementation where peft has it.
# Usage (on the CUDA machine, from the repository root): bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PYTHON" benchmarks/gpu_lora.py --setups full,peft,peftkit,qlora --warmup 3 --steps 10
MODEL=${TMPDIR:-/tmp}/peftkit-llama-1b
"$PYTHON" benchmarks/llama_model.py --output "$MODEL"
start=$(date +%s)
"$PYTHON" -m peftkit bench --device cuda --bf16 --model "$MODEL" --methods lora,dora,qlora,ia3,prompt,adapter \
    --max-steps 20 --batch-size 16 --max-length 128 --vs-peft --output benchmarks/results/bench-gpu
echo "peftkit bench on the GPU took $(( $(date +%s) - start )) s"
