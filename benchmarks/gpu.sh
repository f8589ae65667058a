#!/usr/bin/env bash
# The GPU comparisons, in one short run on one H100 or H200 (each stage goes on if an earlier one fails):
#   issue 8: many LoRA adapters in one batch, TinyLlama-shaped 1.1B in bf16, batch 32 x 256, 8 adapters r 16 on
#     all linear projections — peftkit vs peft, mixed / single and single unmerged / base
#     (results/mixed_batch_cuda.json);
#   issue 7 (< 5 minutes): `peftkit bench --device cuda` on the same shape (random weights, MiniLM's tokenizer)
#     with a classification head on SST-2: full fine-tuning, LoRA, DoRA, QLoRA, IA3, prompt tuning and
#     bottleneck adapters, each against peft's implementation where peft has it (results/bench-gpu/);
#   issue 4: LoRA training of the same shape, batch 4 x 2048 — peftkit vs peft vs full fine-tuning vs peftkit
#     QLoRA: tokens/s, torch.cuda.max_memory_allocated, PEFT-MFU (results/gpu_lora.txt).
# Usage (on the CUDA machine, from the repository root): bash benchmarks/gpu.sh
# TOKENIZER=DIR names a folder with MiniLM's tokenizer files where the bundled model package is not installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RESULTS=benchmarks/results
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PYTHON" -c "import torch, transformers, peft, torchao; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'torchao', torchao.__version__)"

stage() { echo "== $1 ($(date -u +%H:%M:%S))"; }
stage "issue 8: mixed-adapter batches"
"$PYTHON" benchmarks/mixed_batch.py --device cuda --dtype bfloat16 --tinyllama --length 256 --rounds 15 \
    || echo "mixed_batch.py FAILED"

stage "issue 7: peftkit bench --device cuda"
MODEL=${TMPDIR:-/tmp}/peftkit-llama-1b
"$PYTHON" benchmarks/llama_model.py --output "$MODEL" ${TOKENIZER:+--tokenizer "$TOKENIZER"}
start=$(date +%s)
"$PYTHON" -m peftkit bench --device cuda --bf16 --model "$MODEL" --methods lora,dora,qlora,ia3,prompt,adapter \
    --max-steps 20 --batch-size 16 --max-length 128 --vs-peft --output "$RESULTS/bench-gpu" || echo "bench FAILED"
echo "peftkit bench on the GPU took $(( $(date +%s) - start )) s"

stage "issue 4: LoRA training throughput and memory"
"$PYTHON" benchmarks/gpu_lora.py --setups full,peft,peftkit,qlora --warmup 3 --steps 10 | tee "$RESULTS/gpu_lora.txt" \
    || echo "gpu_lora.py FAILED"
stage "done"
