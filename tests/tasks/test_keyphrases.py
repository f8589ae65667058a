"""Keyphrase scoring (F1@5, F1@M on stemmed, de-duplicated phrases), present / absent, BIO rows, TF-IDF."""

from __future__ import annotations

from peftkit.tasks.keyphrases import (
    TfidfBaseline,
    bio_row,
    corpus_scores,
    document_scores,
    normalise,
    phrases_from_tags,
    split_present,
    unique_phrases,
)


def test_three_correct_of_six_gold_with_three_predicted():
    gold = unique_phrases(["neural networks", "keyphrase generation", "ship control", "matrix game",
                           "decision support", "risk"])
    predicted = unique_phrases(["Neural Network", "keyphrases generated", "matrix games"])  # stems match
    at_5, at_m = document_scores(predicted, gold)
    assert round(at_5, 3) == 0.545 and round(at_m, 3) == 0.667


def test_duplicates_after_stemming_count_once_and_ranks_matter():
    gold = [normalise("ship control")]
    predicted = ["ship controls", "Ship Control", "a", "b", "c", "d", "ship control"]
    assert unique_phrases(predicted) == [("ship", "control"), ("a",), ("b",), ("c",), ("d",)]
    scores = corpus_scores([predicted, ["x"]], [gold, [normalise("y")]])
    # document 1: one correct in 5 slots (P 0.2, R 1) -> 1/3; in M = 5 predictions -> 1/3; document 2: 0
    assert abs(scores.f1_at_5 - (1 / 3) / 2) <= 1e-12 and abs(scores.f1_at_m - (1 / 3) / 2) <= 1e-12
    assert corpus_scores([["x"]], [[]]).documents == 0  # documents without gold are skipped


def test_present_and_absent_use_stemmed_contiguous_words():
    text = "Optimal and safe ship control as a multi-step matrix game. Ships are controlled safely."
    present, absent = split_present(text, ["safe ship control", "matrix games", "game theory", "ship matrix"])
    assert present == [("safe", "ship", "control"), ("matrix", "game")]
    assert absent == [("game", "theori"), ("ship", "matrix")]


def test_bio_rows_and_back():
    row = bio_row("Safe ship control uses a matrix game; matrix games help.", ["safe ship control", "matrix game"])
    assert row["tokens"][:3] == ["Safe", "ship", "control"]
    assert row["tags"] == ["B-KP", "I-KP", "I-KP", "O", "O", "B-KP", "I-KP", "B-KP", "I-KP", "O"]
    phrases = phrases_from_tags(row["tokens"], row["tags"])
    assert phrases == ["matrix game", "Safe ship control"]  # twice-tagged first, then by position


def test_tfidf_prefers_a_repeated_rare_phrase_over_common_words():
    background = [f"the system uses data number {i} and a model" for i in range(30)]
    text = "Reversible adapters save memory. The system stores reversible adapters and data."
    baseline = TfidfBaseline().fit([*background, text])
    assert normalise(baseline.extract(text, top=3)[0]) == normalise("reversible adapters")
