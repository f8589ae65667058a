"""Token tagging: reading words and tags, first-sub-word alignment, entity-level scores."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

import peftkit
from peftkit.core.pretrained import bundled_model_dir
from peftkit.tasks.tagging import IGNORED, entities, entity_scores, find_tag_columns, load_tagged, tokenize_tagged


def test_entities_follow_conlleval_chunking():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "O", "B-DATE"]
    assert entities(tags) == {("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("ORG", 6, 6), ("DATE", 8, 8)}


def test_entity_scores_match_seqevals_documented_example():
    # seqeval's README example: f1 0.50, precision 0.50, recall 0.50
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    predicted = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    scores = entity_scores(gold, predicted)
    assert (scores.precision, scores.recall, scores.f1) == (0.5, 0.5, 0.5)
    partial = entity_scores([["B-PER", "O", "B-LOC", "B-LOC"]], [["B-PER", "O", "B-LOC", "O"]])
    assert (partial.correct, partial.gold, partial.predicted) == (2, 3, 2)
    assert abs(partial.f1 - 2 * (1.0 * 2 / 3) / (1.0 + 2 / 3)) <= 1e-12
    # seqeval's per-type report of its example: MISC 0 / 0 / 0 (1 gold), PER 1 / 1 / 1 (1 gold)
    assert list(scores.by_type) == ["MISC", "PER"]
    misc, person = scores.by_type["MISC"], scores.by_type["PER"]
    assert (misc.precision, misc.recall, misc.f1, misc.gold) == (0.0, 0.0, 0.0, 1)
    assert (person.precision, person.recall, person.f1, person.gold) == (1.0, 1.0, 1.0, 1)
    assert partial.by_type["LOC"].f1 == 2 * (1.0 * 0.5) / 1.5
    assert scores.describe_types() == "MISC 0.00 (1); PER 1.00 (1)"


def test_tags_sit_on_each_words_first_sub_word(tmp_path):
    path = tmp_path / "ner.jsonl"
    rows = [{"tokens": ["Wizara", "ya", "afya", "Tanzania"], "tags": ["B-ORG", "I-ORG", "I-ORG", "B-LOC"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, tag_set = load_tagged(path, find_tag_columns(rows, path))
    assert tag_set.names == ["B-LOC", "B-ORG", "I-ORG"]
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    encoded = tokenize_tagged(tokenizer, examples, max_length=32)[0]
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    starts = [i for i, label in enumerate(encoded["labels"]) if label != IGNORED]
    assert len(starts) == 4 and [encoded["word_ids"][i] for i in starts] == [0, 1, 2, 3]
    assert [encoded["labels"][i] for i in starts] == [1, 2, 2, 0]
    assert all(not pieces[i].startswith("##") for i in starts) and pieces[0] == "[CLS]"
    assert len(pieces) > 6  # "wizara" / "tanzania" split into several pieces whose other tokens are ignored


def test_bad_rows_name_the_problem(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(peftkit.PeftkitError, match="row 1 has 2 words but 1 tags"):
        load_tagged(path, ("tokens", "tags"))
    with pytest.raises(peftkit.PeftkitError, match="cannot tell which columns hold the words"):
        find_tag_columns([{"x": [], "y": []}], path)


def test_tags_match_the_training_tags_ignoring_case_and_unknown_ones_are_listed_together(tmp_path):
    from peftkit.core.errors import DataError
    from peftkit.tasks.classification import LabelSet

    tag_set = LabelSet(["B-LOC", "I-LOC", "O"])
    path = tmp_path / "dev.jsonl"
    path.write_text('{"tokens": ["a", "b"], "tags": ["b-loc", "i-loc"]}\n')
    examples, _ = load_tagged(path, ("tokens", "tags"), tag_set)
    assert examples.tags == [[0, 1]]
    path.write_text('{"tokens": ["a"], "tags": ["B-PER"]}\n{"tokens": ["b"], "tags": ["B-PER"]}\n'
                    '{"tokens": ["c", "d"], "tags": ["O", "B-ORG"]}\n')
    with pytest.raises(DataError) as error:
        load_tagged(path, ("tokens", "tags"), tag_set)
    assert str(error.value) == (f"{path}: tags the training data never had (tags: B-LOC, I-LOC, O): 'B-PER' (row 1 "
                                "and 1 more); 'B-ORG' (row 3)")
