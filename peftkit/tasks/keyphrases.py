"""Keyphrases: normalisation, present / absent split, F1@5 and F1@M, BIO rows, and a TF-IDF baseline.

Wu et al., 2022, "Pre-trained Language Models for Keyphrase Generation: A Thorough Empirical Study"
(and the protocol of Meng et al., 2017). Phrases are compared after lower-casing, splitting into words
(runs of letters and digits) and Porter-stemming each word (nltk's ``PorterStemmer``); predictions are
de-duplicated after that normalisation, keeping the first. A gold phrase is *present* if its stemmed
words occur contiguously in the stemmed document (title + abstract), *absent* otherwise.

Per document: F1@5 uses the first 5 predictions with precision over 5 slots even when fewer are
predicted (correct / 5); F1@M uses all predictions (correct / predicted). Recall is correct / gold.
Scores are the mean over documents (a document without gold phrases of the kind scored is skipped).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from peftkit.core.errors import require_extra

# checked on import, so that --recipe keyphrase stops before it trains
require_extra("nltk", "keyphrases", "keyphrase scoring stems words with its Porter stemmer")
from nltk.stem.porter import PorterStemmer  # noqa: E402

WORD = re.compile(r"[^\W_]+", re.UNICODE)
STEMMER = PorterStemmer()
STOPWORDS = frozenset(
    "a an the of in on for to and or but with by from as at is are was were be been being this that these those "
    "it its into than then there their which who whom whose what when where while how we our us they them he she "
    "his her not no can could may might will would shall should do does did has have had such also both each "
    "more most other some any all only very via using based new used use two one three paper proposed present "
    "presents show shows shown results result approach method methods".split())
TAGS = ("B-KP", "I-KP", "O")


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    return STEMMER.stem(word.lower())


def words(text: str) -> list[str]:
    return WORD.findall(text)


def normalise(phrase: str) -> tuple[str, ...]:
    """The phrase as a tuple of lower-cased Porter stems."""
    return tuple(stem(w) for w in words(phrase))


def unique_phrases(phrases: list[str]) -> list[tuple[str, ...]]:
    """Normalised, de-duplicated (first kept), empty phrases dropped."""
    seen, result = set(), []
    for phrase in phrases:
        key = normalise(phrase)
        if key and key not in seen:
            seen.add(key)
            result.append(key)
    return result


def first_position(document: tuple[str, ...], phrase: tuple[str, ...]) -> int | None:
    """Where ``phrase`` first occurs in ``document`` (both word tuples), or None."""
    n = len(phrase)
    return next((i for i in range(len(document) - n + 1) if document[i:i + n] == phrase), None)


def contains(document: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    return first_position(document, phrase) is not None


def split_present(document: str, phrases: list[str]) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(present, absent) normalised phrases of ``document``."""
    stemmed = normalise(document)
    present, absent = [], []
    for phrase in unique_phrases(phrases):
        (present if contains(stemmed, phrase) else absent).append(phrase)
    return present, absent


def f1(correct: int, predicted_slots: int, gold: int) -> float:
    precision = correct / predicted_slots if predicted_slots else 0.0
    recall = correct / gold if gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def document_scores(predicted: list[tuple[str, ...]], gold: list[tuple[str, ...]], k: int = 5) -> tuple[float, float]:
    """(F1@k, F1@M) for one document's normalised, de-duplicated predictions."""
    gold_set = set(gold)
    top = predicted[:k]
    at_k = f1(sum(p in gold_set for p in top), k, len(gold_set))
    at_m = f1(sum(p in gold_set for p in predicted), len(predicted), len(gold_set))
    return at_k, at_m


@dataclass
class KeyphraseScores:
    f1_at_5: float
    f1_at_m: float
    documents: int


def corpus_scores(predictions: list[list[str]], golds: list[list[tuple[str, ...]]]) -> KeyphraseScores:
    """Mean F1@5 and F1@M over documents with gold phrases; predictions are raw strings, in rank order."""
    at_5, at_m = [], []
    for predicted, gold in zip(predictions, golds, strict=True):
        if not gold:
            continue
        scores = document_scores(unique_phrases(predicted), gold)
        at_5.append(scores[0])
        at_m.append(scores[1])
    count = len(at_5)
    return KeyphraseScores(sum(at_5) / max(count, 1), sum(at_m) / max(count, 1), count)


def document_text(row: dict) -> str:
    return f"{row.get('title', '')}. {row.get('abstract', '')}".strip()


def bio_row(text: str, phrases: list[str]) -> dict:
    """Words of ``text`` tagged B-KP / I-KP where a (stemmed) present keyphrase occurs, O elsewhere;
    longer phrases win where occurrences overlap."""
    tokens = words(text)
    stems = [stem(t) for t in tokens]
    tags = ["O"] * len(tokens)
    for phrase in sorted(unique_phrases(phrases), key=len, reverse=True):
        n = len(phrase)
        for start in range(len(stems) - n + 1):
            if tuple(stems[start:start + n]) == phrase and all(t == "O" for t in tags[start:start + n]):
                tags[start:start + n] = ["B-KP"] + ["I-KP"] * (n - 1)
    return {"tokens": tokens, "tags": tags}


def phrases_from_tags(tokens: list[str], tags: list[str]) -> list[str]:
    """Tagged spans as phrases, ranked by how often the (normalised) phrase is tagged, then first position."""
    spans, current = [], None
    for token, tag in zip([*tokens, ""], [*tags, "O"], strict=True):
        if tag == "B-KP" or (tag == "I-KP" and current is None):
            if current:
                spans.append(current)
            current = [token]
        elif tag == "I-KP":
            current.append(token)
        else:
            if current:
                spans.append(current)
            current = None
    counts = Counter(normalise(" ".join(s)) for s in spans)
    first = {}
    for position, span in enumerate(spans):
        first.setdefault(normalise(" ".join(span)), (position, " ".join(span)))
    ranked = sorted(first, key=lambda key: (-counts[key], first[key][0]))
    return [first[key][1] for key in ranked]


class TfidfBaseline:
    """Candidates: runs of 1–3 words without stopwords or digits-only words at either end, inside one
    sentence piece (no punctuation between words); score tf(phrase in document) × idf over the fitted
    documents, idf = log(N / (1 + df)) + 1 (ties: the longer phrase first); phrases contained in a better-ranked
    one are dropped."""

    def __init__(self, max_words: int = 3) -> None:
        self.max_words = max_words
        self.document_frequency: Counter = Counter()
        self.documents = 0

    def candidates(self, text: str) -> list[tuple[tuple[str, ...], str]]:
        found = []
        for piece in re.split(r"[^\w\s-]|\s-\s", text):
            tokens = words(piece)
            for n in range(1, self.max_words + 1):
                for start in range(len(tokens) - n + 1):
                    gram = tokens[start:start + n]
                    if any(w.lower() in STOPWORDS or w.isdigit() for w in (gram[0], gram[-1])):
                        continue
                    if any(w.lower() in STOPWORDS for w in gram):
                        continue
                    found.append((tuple(stem(w) for w in gram), " ".join(gram)))
        return found

    def fit(self, texts: list[str]) -> TfidfBaseline:
        for text in texts:
            self.document_frequency.update({key for key, _ in self.candidates(text)})
        self.documents += len(texts)
        return self

    def extract(self, text: str, top: int = 10) -> list[str]:
        candidates = self.candidates(text)
        counts = Counter(key for key, _ in candidates)
        surface = {}
        for key, phrase in candidates:
            surface.setdefault(key, phrase)
        scores = {key: counts[key] * (math.log(self.documents / (1 + self.document_frequency[key])) + 1)
                  for key in counts}
        chosen = []
        for key in sorted(scores, key=lambda k: (-scores[k], -len(k))):  # ties: the longer phrase
            if any(contains(better, key) for better in chosen):
                continue
            chosen.append(key)
            if len(chosen) == top:
                break
        return [surface[key] for key in chosen]
