"""Few-shot SST-2 (K = 16 per class) on the bundled all-MiniLM-L6-v2: classic head fine-tuning, PET with
a lite adapter, and LiST, over seeds.

MiniLM ships without its masked-LM head, so the model is first adapted once with ``peftkit train --recipe
mlm`` on the SST-2 training sentences as unlabelled text (1 epoch, full; cached in
``~/.cache/peftkit/minilm-sst2-mlm``); all three methods start from that folder. Per seed: K labelled
examples per class drawn from the training set, ``--unlabelled`` others as unlabelled text, scored on the
872 dev sentences.
* head: LoRA (r 8, all linear layers) + a fresh classification head, ``--steps`` steps of 16;
* PET: the pattern "{text} It was {mask}." with great / terrible, a lite adapter (r 16), ``--steps`` steps
  (LiST's teacher);
* LiST: ``--rounds`` rounds of self-training (student on teacher soft labels with meta re-weighting,
  then on the labelled examples, ``--steps`` steps each).
Written to ``results/few_shot_sst2.json``.

Usage: python benchmarks/few_shot_sst2.py [--seeds 1,2,3] [--unlabelled 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "few_shot_sst2.json"
ADAPTED = Path.home() / ".cache" / "peftkit" / "minilm-sst2-mlm"


def adapted_model() -> Path:
    from peftkit.recipes.masked_lm import train_masked_lm
    from peftkit.recipes.training import TrainOptions
    from peftkit.tasks.classification import bundled_sst2

    if not (ADAPTED / "config.json").is_file():
        train_masked_lm(TrainOptions(method="full", train=str(bundled_sst2("train")), text_column="text",
                                     max_length=64, output=str(ADAPTED)))
    return ADAPTED


def main() -> None:
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from peftkit.recipes.classification import load_task_data, train_classifier
    from peftkit.recipes.pet import Pattern
    from peftkit.recipes.self_training import SelfTraining, SelfTrainingSettings, few_shot_split
    from peftkit.recipes.training import TrainOptions
    from peftkit.tasks.classification import bundled_sst2

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--unlabelled", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    model_dir = adapted_model()
    data = load_task_data(TrainOptions(model=str(model_dir)))
    pattern = Pattern("{text} It was {mask}.", {"negative": ["terrible"], "positive": ["great"]})
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        labelled, pool = few_shot_split(data.train, args.shots, args.unlabelled, seed)
        with tempfile.TemporaryDirectory() as work:
            train_file = Path(work) / "labelled.jsonl"
            train_file.write_text("".join(json.dumps({"text": t, "label": data.labels.names[y]}) + "\n"
                                          for t, y in zip(labelled.texts, labelled.labels, strict=True)))
            head = train_classifier(TrainOptions(model=str(model_dir), train=str(train_file), max_steps=args.steps,
                                                 batch_size=16, seed=seed, max_length=args.max_length,
                                                 eval=str(bundled_sst2("dev")),
                                                 output=str(Path(work) / "head")))
        loop = SelfTraining(AutoModelForMaskedLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir),
                            pattern, data.labels.names,
                            SelfTrainingSettings(rounds=args.rounds, steps=args.steps, batch_size=16, lr=3e-3),
                            max_length=args.max_length, seed=seed)
        result = loop.run(labelled, pool, data.eval)
        runs.append({"seed": seed, "head": head.accuracy, "pet": result.teacher_accuracy,
                     "list": result.round_accuracies[-1], "list_rounds": result.round_accuracies,
                     "head_trainable": head.trainable_parameters, "lite_trainable": result.trainable_parameters,
                     "list_seconds": result.seconds})
        print(f"seed {seed}: head {head.accuracy:.4f}, PET {result.teacher_accuracy:.4f}, LiST "
              f"{result.round_accuracies}", flush=True)
    summary = {}
    for method in ("head", "pet", "list"):
        values = [run[method] for run in runs]
        summary[method] = {"mean": statistics.mean(values),
                           "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
        print(f"{method}: {summary[method]['mean']:.4f} ± {summary[method]['sd']:.4f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                   "settings": vars(args), "runs": runs, "summary": summary,
                                   "seconds": time.perf_counter() - started}, indent=2))
    print(f"raw measurements: {RESULTS}")


if __name__ == "__main__":
    main()
