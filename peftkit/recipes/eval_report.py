"""What an evaluation leaves beside the adapter: ``eval.json`` (the whole report: scores, baselines, per-class
numbers, confusion matrix, the file and columns it read) and, for classification, ``eval-confusion.png``.

The plot needs matplotlib (``pip install 'peftkit[bench]'``); without it the JSON is still written and the
caller says the plot was left out.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.tasks.metrics import ClassificationReport

REPORT = "eval.json"
CONFUSION_PLOT = "eval-confusion.png"


def write_report(folder: str | Path, record: dict, report: ClassificationReport | None = None) -> list[Path]:
    """Write ``record`` (with ``report``'s numbers under "classification") to FOLDER/eval.json and the confusion
    matrix to FOLDER/eval-confusion.png when matplotlib is there; the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if report is not None:
        record = {**record, "classification": report.to_json()}
    path = folder / REPORT
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    written = [path]
    if report is not None and plot_confusion(report, folder / CONFUSION_PLOT):
        written.append(folder / CONFUSION_PLOT)
    return written


def plot_confusion(report: ClassificationReport, path: Path) -> bool:
    """The confusion matrix as a heat map with counts (rows: gold, columns: predicted); False without matplotlib."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(3.5, 0.6 * len(report.labels) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(report.confusion, cmap="Blues")
    ticks = range(len(report.labels))
    axes.set_xticks(ticks, report.labels, rotation=45, ha="right")
    axes.set_yticks(ticks, report.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    largest = max(max(row) for row in report.confusion) or 1
    for gold, row in enumerate(report.confusion):
        for guess, count in enumerate(row):
            axes.text(guess, gold, str(count), ha="center", va="center",
                      color="white" if count > largest / 2 else "black")
    axes.set_title(f"accuracy {report.accuracy:.4f}, macro-F1 {report.macro_f1:.4f}")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
