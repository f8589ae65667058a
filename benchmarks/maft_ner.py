"""MAFT on real data: MasakhaNER 2.0 with the bundled all-MiniLM-L6-v2, as it is, after adaptive masked-LM
training on news text of the language, and after vocabulary reduction to that text's tokens + adaptive MLM.

Per language (Swahili ``swa``, Yorùbá ``yor``):
(a) LoRA token classification on the model as it is;
(b) full adaptive masked-LM training on ``monolingual/<lang>.txt`` (``--mlm-epochs``), then (a) on it;
(c) vocabulary reduction to the tokens of that text (``peftkit vocab-reduce``), then (b).
Each stage's result is kept in ``results/maft_ner.partial.json`` as it finishes, so an interrupted run
continues with the next stage when started again with the same settings.
The NER step is the same everywhere: LoRA (r 8, all linear layers, the head trained), ``--ner-epochs``
over train, entity-level F1 (conlleval-style) on dev. Printed with the parameter counts, and written to
``results/maft_ner.json``.

Usage: [PEFTKIT_DATA=../shared/data] python benchmarks/maft_ner.py [--languages swa,yor]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(os.environ.get("PEFTKIT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
RESULTS = Path(__file__).parent / "results" / "maft_ner.json"
PARTIAL = Path(__file__).parent / "results" / "maft_ner.partial.json"  # stages done so far, reused by a rerun


def finished_stages(args) -> dict:
    """The stages an interrupted run with the same settings finished."""
    if PARTIAL.is_file():
        saved = json.loads(PARTIAL.read_text())
        if saved["settings"] == vars(args):
            return saved["stages"]
    return {}


def ner(model: str | None, language: str, args, output: Path) -> dict:
    from peftkit.recipes.tagging import train_tagger
    from peftkit.recipes.training import TrainOptions

    run = train_tagger(TrainOptions(task="token-classification", model=model, method="lora",
                                    train=str(DATA / "masakhaner" / language / "train.jsonl"),
                                    eval=str(DATA / "masakhaner" / language / "dev.jsonl"), epochs=args.ner_epochs,
                                    lr=args.ner_lr, max_length=args.max_length, output=str(output)))
    return {"f1": run.scores.f1, "precision": run.scores.precision, "recall": run.scores.recall,
            "trainable": run.result.trainable_parameters, "total": run.result.total_parameters,
            "seconds": run.result.wall_seconds}


def adapt(model: str | None, language: str, args, output: Path) -> dict:
    from peftkit.recipes.masked_lm import train_masked_lm
    from peftkit.recipes.training import TrainOptions

    text = DATA / "monolingual" / f"{language}.txt"
    result = train_masked_lm(TrainOptions(model=model, method="full", train=str(text), epochs=args.mlm_epochs,
                                          max_length=args.max_length, output=str(output)))
    _, after, detail = result.metric
    return {"mlm_loss_before": float(detail.split(" ")[0]), "mlm_loss_after": after,
            "seconds": result.wall_seconds}


def reduce(language: str, output: Path) -> dict:
    from peftkit.core.pretrained import bundled_model_dir, load_masked_lm
    from peftkit.recipes.masked_lm import read_passages
    from peftkit.recipes.vocabulary import reduce_vocabulary, save_reduced

    tokenizer, model = load_masked_lm(bundled_model_dir())
    total = sum(p.numel() for p in model.parameters())
    model, reduced, report = reduce_vocabulary(model, tokenizer,
                                               texts=read_passages(DATA / "monolingual" / f"{language}.txt"))
    save_reduced(model, reduced, output)
    return {**report, "parameters_before": total}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--languages", default="swa,yor")
    parser.add_argument("--mlm-epochs", type=float, default=1.0)
    parser.add_argument("--ner-epochs", type=float, default=1.0)
    parser.add_argument("--ner-lr", type=float, default=2e-3)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(2)
    results, started = {}, time.perf_counter()
    finished = finished_stages(args)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for language in args.languages.split(","):
            rows = results[language] = {}

            def stage(name, measure, language=language, rows=rows):
                key = f"{language} {name}"
                rows[name] = finished[key] if key in finished else measure()
                finished[key] = rows[name]
                PARTIAL.write_text(json.dumps({"settings": vars(args), "stages": finished}, indent=2))

            def adapted_ner(model, folder, extra, language=language):
                mlm = adapt(model, language, args, work / folder)
                return {**ner(str(work / folder), language, args, work / f"{folder}-ner"), "mlm": mlm, **extra}

            stage("a: as it is", lambda language=language: ner(None, language, args, work / f"{language}-a"))
            stage("b: + adaptive MLM", lambda language=language: adapted_ner(None, f"{language}-adapted", {}))
            stage("c: vocabulary reduced + adaptive MLM", lambda language=language: adapted_ner(
                str(work / f"{language}-small"), f"{language}-small-adapted",
                {"reduction": reduce(language, work / f"{language}-small")}))
            for name, row in rows.items():
                print(f"{language} {name}: entity F1 {row['f1']:.4f} (P {row['precision']:.4f}, "
                      f"R {row['recall']:.4f}), model {row['total']:,} parameters, {row['trainable']:,} trained")
            reduction = rows["c: vocabulary reduced + adaptive MLM"]["reduction"]
            print(f"{language} vocabulary {reduction['vocabulary_before']:,} -> {reduction['vocabulary_after']:,} "
                  f"tokens, {reduction['parameters_removed']:,} parameters removed", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **provenance(),
                                   "settings": vars(args), "results": results,
                                   "seconds": time.perf_counter() - started}, indent=2))
    PARTIAL.unlink(missing_ok=True)
    print(f"raw measurements: {RESULTS}")


if __name__ == "__main__":
    main()
