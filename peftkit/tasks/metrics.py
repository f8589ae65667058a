"""Classification metrics with the baselines a score must beat and how sure it is.

For gold labels yᵢ and predictions ŷᵢ over K classes (n rows):

* accuracy = (1/n) Σ [ŷᵢ = yᵢ];
* per class k: precision_k = TP_k / (TP_k + FP_k), recall_k = TP_k / (TP_k + FN_k),
  F1_k = 2·P·R / (P + R) (0 where undefined); macro-F1 = (1/K) Σ_k F1_k, every class counting alike, so a
  class never predicted pulls it down however rare it is;
* the confusion matrix C[k][j] = rows of gold class k predicted as j;
* the majority baseline: the accuracy of predicting the most frequent gold class (of a tie, the first) for every
  row; the random
  baseline (two classes): 0.5, the expected accuracy of a fair coin;
* a 95 % bootstrap interval for accuracy: the 2.5th and 97.5th percentiles of the accuracy over 1,000 resamples
  of the rows with replacement (Efron & Tibshirani, 1993), seeded so the report is reproducible.

A score is "no better than the majority baseline" when the baseline's accuracy lies inside its interval.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int  # gold rows of the class
    predicted: int  # rows predicted as the class


@dataclass(frozen=True)
class ClassificationReport:
    labels: list[str]
    examples: int
    correct: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion: list[list[int]]  # [gold][predicted], in ``labels`` order
    majority_label: str
    majority_accuracy: float
    random_accuracy: float | None  # two classes only
    interval: tuple[float, float]  # 95 % bootstrap interval for accuracy

    @property
    def no_better_than_majority(self) -> bool:
        return self.interval[0] <= self.majority_accuracy

    def verdict(self) -> str | None:
        """A warning when the score cannot be told from predicting one label for every row."""
        if not self.no_better_than_majority:
            return None
        return (f"no better than predicting '{self.majority_label}' for every row ({self.majority_accuracy:.4f} "
                f"lies within accuracy's 95% interval)")

    def to_json(self) -> dict:
        record = asdict(self)
        record["interval"] = list(self.interval)
        record["no_better_than_majority"] = self.no_better_than_majority
        return record


def classification_report(gold: list[int], predicted: list[int], labels: list[str]) -> ClassificationReport:
    """The report of ``predicted`` against ``gold`` (class indices into ``labels``); see the module docstring."""
    if len(gold) != len(predicted) or not gold:
        raise ValueError(f"need as many predictions as gold labels, at least one: {len(gold)} vs {len(predicted)}")
    confusion = [[0] * len(labels) for _ in labels]
    for truth, guess in zip(gold, predicted, strict=True):
        confusion[truth][guess] += 1
    per_class = {}
    for k, name in enumerate(labels):
        true_positive = confusion[k][k]
        support, predicted_as = sum(confusion[k]), sum(row[k] for row in confusion)
        precision = true_positive / predicted_as if predicted_as else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = ClassScores(precision, recall, f1, support, predicted_as)
    correct = sum(confusion[k][k] for k in range(len(labels)))
    counts = Counter(gold)
    majority = max(range(len(labels)), key=lambda k: (counts[k], -k))  # a tie: the first label
    majority_count = counts[majority]
    return ClassificationReport(
        labels=labels, examples=len(gold), correct=correct, accuracy=correct / len(gold),
        macro_f1=sum(s.f1 for s in per_class.values()) / len(labels), per_class=per_class, confusion=confusion,
        majority_label=labels[majority], majority_accuracy=majority_count / len(gold),
        random_accuracy=0.5 if len(labels) == 2 else None,
        interval=bootstrap_interval([int(t == g) for t, g in zip(gold, predicted, strict=True)]))


def bootstrap_interval(hits: list[int], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The 95 % percentile-bootstrap interval of the mean of ``hits`` (1 a correct row, 0 a wrong one)."""
    rng = random.Random(seed)
    n = len(hits)
    means = sorted(sum(rng.choices(hits, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def format_report(report: ClassificationReport) -> list[str]:
    """The report in a few lines: scores, baselines, per-class numbers and the confusion matrix."""
    low, high = report.interval
    lines = [f"accuracy {report.accuracy:.4f} ({report.correct}/{report.examples}; 95% interval {low:.4f}–{high:.4f}),"
             f" macro-F1 {report.macro_f1:.4f}"]
    baselines = f"baselines: majority '{report.majority_label}' {report.majority_accuracy:.4f}"
    if report.random_accuracy is not None:
        baselines += f", random {report.random_accuracy:.4f}"
    lines.append(baselines)
    width = max(len(name) for name in report.labels)
    lines.append(f"{'':<{width}}  precision  recall      F1  support  predicted")
    for name, scores in report.per_class.items():
        lines.append(f"{name:<{width}}  {scores.precision:>9.4f}  {scores.recall:>6.4f}  {scores.f1:>6.4f}  "
                     f"{scores.support:>7}  {scores.predicted:>9}")
    lines.append("confusion (rows: gold, columns: predicted, in the order above): "
                 + "; ".join(" ".join(str(count) for count in row) for row in report.confusion))
    return lines


def summary_lines(report: ClassificationReport) -> list[str]:
    """The report beyond accuracy in two or three lines, for a training run's summary."""
    low, high = report.interval
    baselines = f"majority '{report.majority_label}' {report.majority_accuracy:.4f}"
    if report.random_accuracy is not None:
        baselines += f", random {report.random_accuracy:.4f}"
    lines = [f"macro-F1 {report.macro_f1:.4f}; accuracy's 95% interval {low:.4f}–{high:.4f}; baselines: {baselines}",
             "per class (P / R / F1, rows): " + "; ".join(
                 f"{name} {s.precision:.2f} / {s.recall:.2f} / {s.f1:.2f} ({s.support})"
                 for name, s in report.per_class.items())]
    if report.verdict():
        lines.append(f"warning: {report.verdict()}")
    return lines
