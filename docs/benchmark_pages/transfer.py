"""Pages on transfer between tasks: ScaLearn against AdapterFusion, and PANDA's prompt transfer."""

from __future__ import annotations

import statistics

from .common import Page, count, load, mean_sd, run, score, table

SCALEARN_LABELS = {"bottleneck": "adapter on CB alone", "fuse": "AdapterFusion (`Fuse`)", "scalearn": "ScaLearn",
                   "scalearn_uniform": "ScaLearnUniform", "scalearn++": "ScaLearn++",
                   "scalearn_uniform++": "ScaLearnUniform++"}
SOURCE_NAMES = {"sst2": "SST-2", "subj": "SUBJ", "mpqa": "MPQA", "trec": "TREC", "rte": "RTE"}


def scalearn_transfer() -> Page:
    record = load("scalearn_transfer.json")
    rows = {row["method"]: row for row in record["rows"]}
    lines = [[SCALEARN_LABELS.get(name, name), count(row["transfer_parameters"]), mean_sd(row),
              " / ".join(f"{a:.2f}" for a in row["accuracies"])] for name, row in rows.items()]
    fuse, scale = rows["fuse"], rows["scalearn"]
    sources = ", ".join(f"{SOURCE_NAMES.get(name, name)} {value:.4f}" for name, value in record["sources"].items())
    return Page(
        "scalearn-transfer", "ScaLearn against AdapterFusion: transfer to CommitmentBank",
        f"CommitmentBank: AdapterFusion {mean_sd(fuse)}; ScaLearn {mean_sd(scale)} with "
        f"{fuse['transfer_parameters'] / scale['transfer_parameters']:,.0f}× fewer transfer parameters",
        "Whether ScaLearn's few scaling parameters transfer as well as AdapterFusion's attention over source "
        "adapters. Stage 1: a bottleneck adapter (Pfeiffer placement, reduction 16) per source task on the bundled "
        "all-MiniLM-L6-v2, 200 steps of 32, kept in `--sources-dir` and reused when present. Stage 2 on "
        f"CommitmentBank (250 examples, 20 % held out per seed as the dev set), {record['epochs']:g} epochs, batch "
        "16, the five sources frozen, the classification head trained with the transfer layer; \"adapter on CB "
        "alone\" is a fresh bottleneck adapter trained on CB only. Seeds "
        f"{record['seeds'].replace(',', ', ')} (each also draws the held-out split). Stage-1 dev (or held-out) "
        f"accuracy of the sources: {sources}.",
        [run("stage 2, all methods", "scalearn_transfer.json")],
        ["## CommitmentBank dev accuracy", "",
         *table(["method", "trained transfer parameters (head excluded)", "mean ± sd", "per seed"], lines, "lrrr")])


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def panda_transfer() -> Page:
    record = load("panda_transfer.json")
    rows, settings = record["rows"], record["settings"]
    labels = {"scratch": "prompt tuning from scratch", "vanilla": "vanilla prompt transfer from SST-2",
              "panda": "PANDA from SST-2 (β = T)"}
    lines = [[label, _mean_sd([row[key] for row in rows]), " / ".join(score(row[key]) for row in rows)]
             for key, label in labels.items()]
    transferability = [[f"T({source}, SST-5)", _mean_sd([row[key] for row in rows]),
                        " / ".join(f"{row[key]:.4f}" for row in rows)]
                       for key, source in (("transferability", "SST-2"), ("transferability_trec", "TREC"))]
    vanilla = statistics.mean(row["vanilla"] for row in rows)
    scratch = statistics.mean(row["scratch"] for row in rows)
    panda = statistics.mean(row["panda"] for row in rows)
    sources = record["sources"]
    return Page(
        "panda-transfer", "PANDA: prompt transfer from SST-2 to SST-5",
        f"SST-5: a prompt started from SST-2's {score(vanilla)} against {score(scratch)} from scratch; PANDA "
        f"{score(panda)}",
        "Whether a soft prompt trained on one task helps another, and whether PANDA's distillation adds to plain "
        "transfer. Soft prompts (prompt tuning, 20 virtual tokens) on the bundled all-MiniLM-L6-v2, "
        f"{settings['max_length']} tokens. Source prompts: {settings['source_steps']} steps of 32 on SST-2 (dev "
        f"accuracy {score(sources['sst2'])}) and on TREC ({score(sources['trec'])}; a question-type task, as a "
        "contrast for the metric). On SST-5 (five sentiment classes; 1,101 dev sentences), per seed, "
        f"{settings['target_steps']} steps of 32 from the usual start (scratch), from the SST-2 prompt (vanilla "
        "transfer, also the teacher) and PANDA (from the SST-2 prompt, distilling the teacher with β = T). "
        "Transferability T is the cosine of the two prompts' mean feed-forward activation shifts on 400 probe "
        "sentences (1 for a prompt with itself), with the seed's scratch prompt as SST-5's own.",
        [run(f"seeds {settings['seeds'].replace(',', ', ')}", "panda_transfer.json")],
        ["## SST-5 dev accuracy", "", *table(["", "mean ± sd", "per seed"], lines, "lrr"), "",
         "## Transferability", "", *table(["", "mean ± sd", "per seed"], transferability, "lrr")])
