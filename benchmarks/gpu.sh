#!/usr/bin/env bash
# The GPU comparisons, in one short run on one H100 or H200 (each stage goes on if an earlier one fails):
#   issue 8: many LoRA adapters in one batch, TinyLlama-shaped 1.1B in bf16, batch 32 x 256, 8 adapters r 16 on
#     all linear projections — peftkit vs peft, mixed / single and single unmerged / base
#     (results/mixed_batch_cuda.json);
#   issue 7 (< 5 minutes): `peftkit bench --device cuda` on the same shape (random weights, MiniLM's tokenizer)
#     with a classification head on SST-2: full fine-tuning, LoRA, DoRA, QLoRA, IA3, prompt tuning and
#     bottleneck adapters, each against peft's implementation where peft has it (results/bench-gpu/);
#   LoRA training of the same shape, batch 4 x 2048 — peftkit against peft's default and peft's best configuration
#     (bf16 adapters; with gradient checkpointing for the memory mode), full fine-tuning and peftkit QLoRA:
#     tokens/s, torch.cuda.max_memory_allocated, PEFT-MFU (results/gpu_lora.json).
# Usage (on the CUDA machine, from the repository root): bash benchmarks/gpu.sh
# TOKENIZER=DIR names a folder with MiniLM's tokenizer files where the bundled model package is not installed.
# STAGES="mixed bench lora" (the default) picks stages, e.g. to split the run over two calls; RESUME=1 lets the
# bench stage continue the runs already in results/bench-gpu instead of starting afresh.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RESULTS=benchmarks/results
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PYTHON" -c "import torch, transformers, peft, torchao; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'torchao', torchao.__version__)"

STAGES=${STAGES:-mixed bench lora}
wanted() { [[ " $STAGES " == *" $1 "* ]]; }
stage() { echo "== $1 ($(date -u +%H:%M:%S))"; }
if wanted mixed; then
stage "issue 8: mixed-adapter batches (peftkit's gathered and concatenated forms)"
"$PYTHON" benchmarks/mixed_batch.py --device cuda --dtype bfloat16 --tinyllama --length 256 --rounds 15 \
    || echo "mixed_batch.py FAILED"
fi

if wanted bench; then
stage "issue 7: peftkit bench --device cuda"
MODEL=${TMPDIR:-/tmp}/peftkit-llama-1b
"$PYTHON" benchmarks/llama_model.py --output "$MODEL" ${TOKENIZER:+--tokenizer "$TOKENIZER"}
[ -n "${RESUME:-}" ] || rm -rf "$RESULTS/bench-gpu"  # a fresh measurement; RESUME=1 finishes a cut-off run
start=$(date +%s)
"$PYTHON" -m peftkit bench --device cuda --bf16 --model "$MODEL" --methods lora,dora,qlora,ia3,prompt,adapter \
    --max-steps 20 --batch-size 16 --max-length 128 --vs-peft --output "$RESULTS/bench-gpu" || echo "bench FAILED"
echo "peftkit bench on the GPU took $(( $(date +%s) - start )) s"
fi

if wanted lora; then
stage "LoRA training throughput and memory against peft default and best"
"$PYTHON" benchmarks/gpu_lora.py --setups full,peft,peft-bf16,peft-bf16-ckpt,peftkit,peftkit-ckpt,qlora --warmup 3 \
    --steps 10 || echo "gpu_lora.py FAILED"
fi
stage "done"
