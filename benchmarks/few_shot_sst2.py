"""Few-shot SST-2 (K = 16 per class) on the bundled all-MiniLM-L6-v2: classic head fine-tuning, PET with
a lite adapter, and LiST, over seeds.

MiniLM ships without its masked-LM head, so the model is first adapted once with ``peftkit train --recipe
mlm`` (full, ``--mlm-epochs``, lr ``--mlm-lr``) on unlabelled English review sentences: the SST-5 training
sentences (a superset of SST-2's train) and the Subjectivity corpus, minus any SST-2 dev sentence (read
from ``PEFTKIT_DATA``, default ``../shared/data``; cached in ``~/.cache/peftkit/``); all three methods
start from that folder. Per seed: K labelled
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

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(os.environ.get("PEFTKIT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
RESULTS = Path(__file__).parent / "results" / "few_shot_sst2.json"
CORPORA = ("sst5/train.jsonl", "subj/all.jsonl")


def adaptation_corpus(folder: Path) -> Path:
    """The unlabelled sentences of ``CORPORA``, de-duplicated, without SST-2's dev sentences."""
    from peftkit.tasks.data import read_rows

    held_out = {row["text"] for row in read_rows(DATA / "sst2" / "dev.jsonl")}
    sentences = dict.fromkeys(row["text"] for corpus in CORPORA for row in read_rows(DATA / corpus))
    corpus = folder / "corpus.txt"
    corpus.write_text("".join(f"{text}\n" for text in sentences if text not in held_out), encoding="utf-8")
    return corpus


def adapted_model(epochs: float, lr: float) -> tuple[Path, dict]:
    from peftkit.recipes.masked_lm import train_masked_lm
    from peftkit.recipes.training import TrainOptions

    folder = Path.home() / ".cache" / "peftkit" / f"minilm-reviews-mlm-{epochs:g}ep-{lr:g}"
    report = folder / "adaptation.json"
    if not report.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        result = train_masked_lm(TrainOptions(method="full", train=str(adaptation_corpus(folder)), epochs=epochs,
                                              lr=lr, max_length=64, output=str(folder)))
        _, after, detail = result.metric
        report.write_text(json.dumps({"mlm_loss_before": float(detail.split(" ")[0]), "mlm_loss_after": after,
                                      "steps": len(result.step_seconds), "seconds": result.wall_seconds}))
    return folder, json.loads(report.read_text())


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
    parser.add_argument("--mlm-epochs", type=float, default=3.0)
    parser.add_argument("--mlm-lr", type=float, default=2e-4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    model_dir, adaptation = adapted_model(args.mlm_epochs, args.mlm_lr)
    print(f"masked-LM adaptation: held-out loss {adaptation['mlm_loss_before']:.3f} -> "
          f"{adaptation['mlm_loss_after']:.3f} ({adaptation['steps']} steps)", flush=True)
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
    RESULTS.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **provenance(),
                                   "settings": vars(args), "adaptation": adaptation, "runs": runs, "summary": summary,
                                   "seconds": time.perf_counter() - started}, indent=2))
    print(f"raw measurements: {RESULTS}")


if __name__ == "__main__":
    main()
