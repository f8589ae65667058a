"""Rank 0's peak memory by phase, with and without FSDP: loading and wrapping, training, evaluating.

Bundled MiniLM and SST-2, LoRA, 20 steps of 16 per process (``peftkit.recipes`` directly, the same path as
``peftkit train``). The process peak (VmHWM) after each phase, in MiB.

Usage: [MALLOC_MMAP_THRESHOLD_=65536] torchrun --nproc_per_node 2 benchmarks/fsdp_memory.py [--fsdp]
(the threshold makes freed large blocks go back to the system, so the peak counts live memory only)
"""

from __future__ import annotations

import argparse
import os
import resource

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    from transformers import DataCollatorWithPadding

    from peftkit.recipes.classification import count_correct, setup_classifier
    from peftkit.recipes.training import TrainOptions, run_trainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    options = TrainOptions(max_steps=args.steps, batch_size=16, fsdp=args.fsdp, output="peftkit-fsdp-memory")
    setup = setup_classifier(options)
    loaded = peak_mib()
    run_trainer(setup.model, setup.dataset, DataCollatorWithPadding(setup.tokenizer), options, setup.learning_rate)
    trained = peak_mib()
    count_correct(setup.model, setup.tokenizer, setup.eval_encoded)
    if os.environ.get("RANK", "0") == "0":
        print(f"{'fsdp' if args.fsdp else 'ddp'}: peak MiB after loading and wrapping {loaded}, after training "
              f"{trained}, after evaluating {peak_mib()}")


if __name__ == "__main__":
    main()
