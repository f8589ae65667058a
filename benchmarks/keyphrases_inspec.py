"""Keyphrases on Inspec (train 1000, dev 500 abstracts): BIO extraction with the bundled MiniLM + LoRA
against a TF-IDF n-gram baseline in the same run, and generation with SmolLM2-135M-Instruct + LoRA.

Extraction: ``--epochs`` over train, max length ``--max-length`` tokens, scored on all dev documents.
Generation: one epoch over train ("present ; absent" lists after the prompt), greedy lists for the first
``--generation-docs`` dev documents (0: skip). ``--skip-extraction`` keeps the extraction results already in the
JSON file and runs generation only. Present-keyphrase F1@5 and F1@M (and absent ones for
generation) on stemmed, de-duplicated phrases. Written to ``results/keyphrases_inspec.json``.

Usage: [PEFTKIT_DATA=../shared/data] python benchmarks/keyphrases_inspec.py [--generation-docs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from provenance import provenance

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(os.environ.get("PEFTKIT_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
RESULTS = Path(__file__).parent / "results" / "keyphrases_inspec.json"


def main() -> None:
    import tempfile

    import torch

    from peftkit.recipes.keyphrases import extract_keyphrases, generate_keyphrases
    from peftkit.recipes.training import TrainOptions

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--generation-docs", type=int, default=100)
    parser.add_argument("--generation-epochs", type=float, default=1.0)
    parser.add_argument("--skip-extraction", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    train, dev = DATA / "inspec" / "train.jsonl", DATA / "inspec" / "dev.jsonl"
    results, started = {}, time.perf_counter()
    earlier = json.loads(RESULTS.read_text()) if args.skip_extraction else None
    with tempfile.TemporaryDirectory() as work:
        if earlier:
            results["extraction"] = earlier["results"]["extraction"]
            results["extraction_measured"] = earlier["results"].get("extraction_measured", earlier["measured"])
            results["extraction_command"] = earlier["results"].get("extraction_command", earlier["command"])
        else:
            extraction = extract_keyphrases(TrainOptions(train=str(train), eval=str(dev), epochs=args.epochs,
                                                         batch_size=16, lr=2e-3, max_length=args.max_length,
                                                         output=str(Path(work) / "extraction")))
            results["extraction"] = {"present": asdict(extraction.present), "tfidf": asdict(extraction.tfidf),
                                     "trainable": extraction.result.trainable_parameters,
                                     "seconds": extraction.result.wall_seconds}
            print(f"extraction (MiniLM + LoRA): present F1@5 {extraction.present.f1_at_5:.4f}, F1@M "
                  f"{extraction.present.f1_at_m:.4f}; TF-IDF: F1@5 {extraction.tfidf.f1_at_5:.4f}, F1@M "
                  f"{extraction.tfidf.f1_at_m:.4f} ({extraction.present.documents} documents)", flush=True)
        if args.generation_docs:
            generation = generate_keyphrases(TrainOptions(task="causal-lm", train=str(train), eval=str(dev),
                                                          epochs=args.generation_epochs, batch_size=8,
                                                          max_length=args.max_length,
                                                          output=str(Path(work) / "generation")),
                                             eval_documents=args.generation_docs)
            results["generation"] = {"present": asdict(generation.present), "absent": asdict(generation.absent),
                                     "trainable": generation.result.trainable_parameters,
                                     "seconds": generation.result.wall_seconds}
            print(f"generation (SmolLM2 + LoRA): present F1@5 {generation.present.f1_at_5:.4f}, F1@M "
                  f"{generation.present.f1_at_m:.4f}; absent F1@5 {generation.absent.f1_at_5:.4f}, F1@M "
                  f"{generation.absent.f1_at_m:.4f} ({generation.present.documents} documents)", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **provenance(),
                                   "settings": vars(args), "results": results,
                                   "seconds": time.perf_counter() - started}, indent=2))
    print(f"raw measurements: {RESULTS}")


if __name__ == "__main__":
    main()
