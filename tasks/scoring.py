"""Scorers for generated answers. Each takes (output, reference) strings and returns [0, 1].

- ``reference_recall`` (stored as ``paper``): the paper's scores, exactly as its reference code
  computes them: the output and the expected answer lower-cased and split on whitespace (so
  punctuation stays attached: "day." is not "day"), and the share of the answer's words found in
  the output's set. The needle heatmap divides by the answer's word count (12 for "eat a sandwich
  and sit in Dolores Park on a sunny day.", 11 of them distinct: its ceiling is 11/12); BookQA
  divides by the distinct words of the first answer.
- ``word_recall``: a cleaner recall: the share of the reference's distinct ``[a-z0-9]+`` words
  present in the output (punctuation dropped). Not the paper's number.
- ``rouge1_f``: ROUGE-1 F-measure with Porter stemming (``rouge-score``), the reference code's number
  before its x10.
- ``exact``: 1 if the normalised answer occurs as a contiguous word sequence in the output.
- ``qa_f1``: InfiniteBench's QA metric: token F1 after SQuAD-style normalisation.
- ``string_match_all``: RULER's needle metric: the fraction of the expected values in the output.
"""

from __future__ import annotations

import re
from functools import lru_cache

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def reference_recall(output: str, answer: str, distinct: bool = False) -> float:
    """The reference code's recall: whitespace words, lower-cased; over ``len(answer words)``
    (its needle heatmap) or, with ``distinct``, over the distinct ones (its BookQA)."""
    expected = answer.lower().split()
    if not expected:
        return 0.0
    return len(set(output.lower().split()) & set(expected)) / (len(set(expected)) if distinct else len(expected))


def word_recall(output: str, reference: str) -> float:
    ref = set(words(reference))
    if not ref:
        return 0.0
    return len(ref & set(words(output))) / len(ref)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_f(output: str, reference: str) -> float:
    return float(_rouge().score(reference, output)["rouge1"].fmeasure)


def exact(output: str, answer: str) -> float:
    needle = " ".join(words(answer))
    return float(bool(needle) and f" {needle} " in f" {' '.join(words(output))} ")


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")


def _normalize_answer(text: str) -> list[str]:
    """InfiniteBench / SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    return _ARTICLES.sub(" ", _PUNCT.sub("", text.lower())).split()


def qa_f1(output: str, answer: str) -> float:
    """InfiniteBench's ``qa_f1`` for one reference: token F1 of the normalised strings."""
    from collections import Counter

    pred, ref = _normalize_answer(output), _normalize_answer(answer)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def string_match_all(output: str, references: list[str]) -> float:
    """RULER's niah metric: the fraction of ``references`` found in ``output`` (case-insensitive)."""
    if not references:
        return 0.0
    text = output.strip().lower()
    return sum(ref.lower() in text for ref in references) / len(references)
