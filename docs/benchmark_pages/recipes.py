"""Pages on the training procedures: MAFT on MasakhaNER, few-shot SST-2 (PET, LiST) and keyphrases on Inspec."""

from __future__ import annotations

import statistics

from .common import Page, count, load, run, score, table

LANGUAGES = {"swa": "Swahili", "yor": "Yorùbá"}
STAGES = {"a": "(a) LoRA on MiniLM as it is", "b": "(b) + adaptive MLM on the news text",
          "c": "(c) vocabulary reduced to that text's tokens + adaptive MLM"}


def maft_ner() -> Page:
    record = load("maft_ner.json")
    results, settings = record["results"], record["settings"]
    languages = list(results)
    stages = {key.split(":")[0]: key for key in results[languages[0]]}
    rows = [[STAGES.get(letter, key), *(f"{results[lang][key]['f1']:.4f}" for lang in languages),
             " / ".join(f"{results[lang][key]['total'] / 1e6:.1f} M" for lang in languages)]
            for letter, key in stages.items()]
    notes = []
    for lang in languages:
        reduced = results[lang][stages["c"]]
        reduction = reduced["reduction"]
        losses = " and ".join(f"{results[lang][stages[letter]]['mlm']['mlm_loss_after']:.2f} ({letter})"
                              for letter in ("b", "c"))
        notes.append(f"- {LANGUAGES.get(lang, lang)}: the reduction keeps {reduction['vocabulary_after']:,} of "
                     f"{reduction['vocabulary_before']:,} tokens and removes {reduction['parameters_removed']:,} "
                     f"parameters ({reduction['parameters_removed'] / reduction['parameters_before']:.0%} of the "
                     f"model); held-out masked-LM loss after adaptation {losses}.")
    gains = ", ".join(f"{LANGUAGES.get(lang, lang)} "
                      f"{100 * (results[lang][stages['b']]['f1'] - results[lang][stages['a']]['f1']):+.1f}"
                      for lang in languages)
    return Page(
        "maft-ner", "MAFT on MasakhaNER 2.0: adaptive pre-training and vocabulary reduction",
        f"adaptive masked-LM training before NER: entity F1 {gains} points",
        "Whether adapting a model to a language's text before fine-tuning helps named-entity recognition, and "
        "whether cutting the vocabulary to that text's tokens keeps the gain. Per language, with the bundled "
        f"all-MiniLM-L6-v2 and {settings['max_length']} tokens: (a) LoRA token classification on the model as it "
        f"is; (b) full masked-LM training on the language's VOA news text ({settings['mlm_epochs']:g} epoch), then "
        "(a) on it; (c) the vocabulary reduced to that text's tokens (`peftkit vocab-reduce`), then (b). The "
        f"NER step is the same everywhere: LoRA (r 8, all linear layers, the head trained), "
        f"{settings['ner_epochs']:g} epoch over the train set at lr {settings['ner_lr']:g}, seed 42, entity-level F1 "
        "(conlleval-style) on dev.",
        [run(", ".join(LANGUAGES.get(lang, lang) for lang in languages), "maft_ner.json")],
        ["## Entity F1 on dev", "",
         *table(["", *(f"{LANGUAGES.get(lang, lang)} F1" for lang in languages),
                 f"model parameters ({' / '.join(languages)})"], rows, "l" + "r" * len(languages) + "r"),
         "", *notes])


def few_shot_sst2() -> Page:
    record = load("few_shot_sst2.json")
    runs, settings, adaptation = record["runs"], record["settings"], record["adaptation"]

    def line(label: str, trainable: int, values: list[float]) -> list[str]:
        return [label, count(trainable), f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}",
                " / ".join(score(v) for v in values)]

    head = [r["head"] for r in runs]
    pet = [r["pet"] for r in runs]
    rounds = list(zip(*(r["list_rounds"] for r in runs)))
    rows = [line("head fine-tuning (LoRA r 8 + classification head)", runs[0]["head_trainable"], head),
            line("PET: \"{text} It was {mask}.\" great / terrible, lite adapter r 16", runs[0]["lite_trainable"], pet),
            *(line(f"LiST after round {i + 1}", runs[0]["lite_trainable"], list(values))
              for i, values in enumerate(rounds))]
    shots = settings["shots"]
    return Page(
        "few-shot-sst2", f"Few-shot SST-2 (K = {shots} per class): PET and LiST",
        f"K = {shots}: PET {statistics.mean(pet):.4f} against head fine-tuning's {statistics.mean(head):.4f} "
        f"(means over {len(runs)} seeds)",
        "With a handful of labelled examples, does a cloze prompt (PET) beat a fresh classification head, and does "
        "LiST's self-training on unlabelled text add to it? MiniLM ships without its masked-LM head, so the bundled "
        f"all-MiniLM-L6-v2 is first adapted with `--recipe mlm` (full, {settings['mlm_epochs']:g} epochs, lr "
        f"{settings['mlm_lr']:g}, {adaptation['steps']:,} steps) on unlabelled review sentences (SST-5 train and "
        "Subjectivity, without SST-2 dev): held-out masked-LM loss "
        f"{adaptation['mlm_loss_before']:.2f} → {adaptation['mlm_loss_after']:.2f}. Then per seed: K labelled "
        f"examples per class, {settings['unlabelled']:,} unlabelled ones, {settings['steps']} steps of 16 per stage, "
        f"{settings['max_length']} tokens, accuracy on the 872 dev sentences. LiST: the PET model as teacher, then "
        f"{settings['rounds']} rounds in which a fresh student learns the teacher's soft labels (each example "
        "weighted by one virtual gradient step against a labelled batch), then the labelled examples.",
        [run(f"seeds {settings['seeds'].replace(',', ', ')}", "few_shot_sst2.json")],
        ["## Dev accuracy", "",
         *table([f"K = {shots} per class", "trained parameters", "mean ± sd",
                 f"seeds {settings['seeds'].replace(',', ' / ')}"], rows, "lrrr")])


def keyphrases_inspec() -> Page:
    record = load("keyphrases_inspec.json")
    results, settings = record["results"], record["settings"]
    extraction, generation = results["extraction"], results.get("generation")
    rows = [["TF-IDF n-grams (top 10), same run", score(extraction["tfidf"]["f1_at_5"]),
             score(extraction["tfidf"]["f1_at_m"]), count(extraction["tfidf"]["documents"])],
            ["BIO extraction, MiniLM + LoRA", score(extraction["present"]["f1_at_5"]),
             score(extraction["present"]["f1_at_m"]), count(extraction["present"]["documents"])]]
    separate = "extraction_command" in results  # generation run on its own, keeping an earlier extraction
    runs = [run("extraction and TF-IDF" if separate else "extraction, TF-IDF and generation", "keyphrases_inspec.json",
                record, command=results.get("extraction_command"), date=results.get("extraction_measured"))]
    body = ["## Extraction: present keyphrases", "",
            f"MiniLM + LoRA (r 8 on all linear layers) + a tagging head, {extraction['trainable']:,} trained "
            f"parameters, {settings['epochs']:g} epochs over the 1,000 training abstracts, "
            f"{settings['max_length']} tokens; scored on every dev abstract that has present keyphrases.", "",
            *table(["", "F1@5", "F1@M", "abstracts"], rows, "lrrr")]
    headline = (f"Inspec extraction: F1@5 {score(extraction['present']['f1_at_5'])} against TF-IDF's "
                f"{score(extraction['tfidf']['f1_at_5'])}")
    if generation:
        if separate:
            runs.append(run("generation", "keyphrases_inspec.json"))
        body += ["", "## Generation", "",
                 f"SmolLM2-135M-Instruct + LoRA, {generation['trainable']:,} trained parameters, "
                 f"{settings['generation_epochs']:g} epoch over the training abstracts as \"present ; absent\" "
                 f"lists, greedy lists for the first {settings['generation_docs']} dev abstracts.", "",
                 *table(["", "F1@5", "F1@M", "abstracts"],
                        [[kind, score(generation[kind]["f1_at_5"]), score(generation[kind]["f1_at_m"]),
                          count(generation[kind]["documents"])] for kind in ("present", "absent")], "lrrr")]
    return Page(
        "keyphrases-inspec", "Keyphrases on Inspec: extraction and generation", headline,
        "Keyphrase extraction as BIO tagging against a TF-IDF n-gram baseline in the same run, and keyphrase "
        "generation with a small causal LM, on Inspec (1,000 training and 500 dev abstracts). Scores: F1@5 (five "
        "slots even when fewer are predicted) and F1@M on lower-cased, Porter-stemmed, de-duplicated phrases, for "
        "the keyphrases present in the abstract (and, for generation, the absent ones).",
        runs, body)


def defaults() -> Page:
    record = load("defaults.json")
    jobs = record["jobs"]
    rows = [[job["data"], f"`{job['train_command']}`", f"{job['train_examples']:,} / {job['eval_examples']:,}",
             f"{job['metric']} {score(job['score'])}", f"≥ {job['goal']:.2f}",
             "met" if job["score"] >= job["goal"] else "not met", f"{job['seconds'] / 60:.1f} min", job["budget"]]
            for job in jobs.values()]
    met = sum(job["score"] >= job["goal"] for job in jobs.values())
    return Page(
        "defaults", "peftkit train with its defaults, on the bundled data sets",
        f"defaults only: {met} of {len(jobs)} goals met ("
        + ", ".join(f"{job['data']} {score(job['score'])}" for job in jobs.values()) + ")",
        "Whether the budget `peftkit train` chooses from the data (batch 8 under 5,000 rows, 16 under 50,000; "
        "epochs until 6,000 rows are seen, the length that holds 99 % of the rows; a recipe's own defaults where it "
        "has them) works without any option. Each row is the command a user would type — only the data files — run "
        "once (seed 42). RTE and CommitmentBank ship without a dev set: a seeded shuffle (seed 0) of the training file "
        "holds out its first 277 / 56 rows (the official dev sets' sizes).",
        [run(job["data"], "defaults.json", job) for job in jobs.values()],
        ["## Scores with the defaults", "",
         *table(["data", "command", "train / eval rows", "score", "goal", "", "wall time", "budget chosen"], rows,
                "llrrrlrl"),
         *([""] + [f"- {job['data']}: {job['note']}." for job in jobs.values() if "note" in job]
           if any("note" in job for job in jobs.values()) else []),
         *_other_runs(jobs)])


def _other_runs(jobs: dict) -> list[str]:
    """Further runs of a job on the same split (other seeds, full fine-tuning), run by hand on the same machine."""
    lines = []
    for job in jobs.values():
        if "other_runs" not in job:
            continue
        lines += ["", f"## {job['data']}: other runs on the same split ({job['other_runs_date']}, {job['machine']})",
                  "", *table(["command", "score"], [[f"`{other['command']}`",
                                                     f"{score(other['score'])} ({other['correct']})"]
                                                    for other in job["other_runs"]], "lr")]
    return lines
