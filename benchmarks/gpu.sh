#!/usr/bin/env bash
# The GPU comparisons of issue 4, in one short run (< 5 minutes on one H100):
#   LoRA training of a TinyLlama-shaped 1.1B model in bf16, batch 4 x 2048 — peftkit vs peft vs full
#   fine-tuning vs peftkit QLoRA: tokens/s, torch.cuda.max_memory_allocated, PEFT-MFU.
# Usage (on the CUDA machine, from the repository root): bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PYTHON" benchmarks/gpu_lora.py --setups full,peft,peftkit,qlora --warmup 3 --steps 10
