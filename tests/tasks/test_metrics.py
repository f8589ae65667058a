"""Classification metrics against a hand-computed example and scikit-learn's, the bootstrap interval, the baseline
verdict."""

import random

import pytest
from sklearn import metrics as sklearn_metrics

from peftkit.tasks.metrics import bootstrap_interval, classification_report, format_report

LABELS = ["contradiction", "entailment", "neutral"]
# 10 rows: gold 4 contradiction, 5 entailment, 1 neutral; neutral is never predicted
GOLD = [0, 0, 0, 0, 1, 1, 1, 1, 1, 2]
PREDICTED = [0, 0, 1, 1, 1, 1, 1, 1, 0, 1]


def test_scores_of_a_hand_computed_example():
    report = classification_report(GOLD, PREDICTED, LABELS)
    assert report.correct == 6 and report.accuracy == 0.6
    assert report.confusion == [[2, 2, 0], [1, 4, 0], [0, 1, 0]]
    contradiction, entailment, neutral = (report.per_class[name] for name in LABELS)
    assert (contradiction.precision, contradiction.recall) == (2 / 3, 0.5)
    assert contradiction.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # 4/7
    assert (entailment.precision, entailment.recall) == (4 / 7, 0.8)
    assert entailment.f1 == pytest.approx(2 * (4 / 7) * 0.8 / (4 / 7 + 0.8))  # 2/3
    assert (neutral.precision, neutral.recall, neutral.f1, neutral.support, neutral.predicted) == (0, 0, 0, 1, 0)
    assert report.macro_f1 == pytest.approx((4 / 7 + 2 / 3 + 0) / 3)
    assert (report.majority_label, report.majority_accuracy, report.random_accuracy) == ("entailment", 0.5, None)


def test_the_scores_equal_scikit_learns_on_random_predictions():
    rng = random.Random(5)
    gold = [rng.choice([0, 0, 0, 1, 2, 3]) for _ in range(300)]
    predicted = [g if rng.random() < 0.5 else rng.randrange(3) for g in gold]  # class 3 never predicted
    report = classification_report(gold, predicted, ["a", "b", "c", "d"])
    assert report.accuracy == pytest.approx(sklearn_metrics.accuracy_score(gold, predicted), abs=1e-12)
    assert report.macro_f1 == pytest.approx(sklearn_metrics.f1_score(gold, predicted, average="macro",
                                                                       labels=[0, 1, 2, 3], zero_division=0), abs=1e-12)
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        gold, predicted, labels=[0, 1, 2, 3], zero_division=0)
    for k, name in enumerate("abcd"):
        scores = report.per_class[name]
        assert (scores.precision, scores.recall, scores.f1) == pytest.approx((precision[k], recall[k], f1[k]),
                                                                              abs=1e-12)
        assert scores.support == support[k]
    assert report.confusion == sklearn_metrics.confusion_matrix(gold, predicted, labels=[0, 1, 2, 3]).tolist()


def test_the_bootstrap_interval_holds_the_accuracy_and_narrows_with_more_rows():
    small = bootstrap_interval([1] * 60 + [0] * 40)
    large = bootstrap_interval([1] * 600 + [0] * 400)
    assert small[0] < 0.6 < small[1] and large[0] < 0.6 < large[1]
    # the normal approximation's half-width, 1.96 * sqrt(0.6 * 0.4 / n): 0.096 for 100 rows, 0.030 for 1,000
    assert abs((small[1] - small[0]) / 2 - 0.096) < 0.015 and abs((large[1] - large[0]) / 2 - 0.030) < 0.005
    assert bootstrap_interval([1] * 60 + [0] * 40) == small  # seeded: the same report every time


def test_a_score_within_the_majority_baseline_is_flagged_and_a_clear_win_is_not():
    # 277 RTE-like rows, 146 'entailment': a model right on 148
    gold = [1] * 146 + [0] * 131
    weak = [1] * 146 + [0] * 2 + [1] * 129
    report = classification_report(gold, weak, ["not_entailment", "entailment"])
    assert report.accuracy == pytest.approx(148 / 277) and report.random_accuracy == 0.5
    assert report.verdict() == ("no better than predicting 'entailment' for every row (0.5271 lies within "
                                "accuracy's 95% interval)")
    strong = [1] * 146 + [0] * 100 + [1] * 31
    assert classification_report(gold, strong, ["not_entailment", "entailment"]).verdict() is None


def test_the_printed_report_names_every_class_and_the_baselines():
    lines = format_report(classification_report(GOLD, PREDICTED, LABELS))
    assert lines[0].startswith("accuracy 0.6000 (6/10; 95% interval ") and lines[0].endswith("macro-F1 0.4127")
    assert lines[1] == "baselines: majority 'entailment' 0.5000"
    assert lines[-2].split() == ["neutral", "0.0000", "0.0000", "0.0000", "1", "0"]
    assert lines[-1].endswith("2 2 0; 1 4 0; 0 1 0")
