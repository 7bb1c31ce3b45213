import pytest

from harness.tasks import scoring

NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"


def test_paper_recall_counts_distinct_needle_words():
    assert scoring.paper_recall(NEEDLE, NEEDLE) == 1.0
    assert scoring.paper_recall("", NEEDLE) == 0.0
    # 21 words, 19 distinct ("a" and "in" repeat); the answer part holds 11 of them.
    assert scoring.paper_recall(ANSWER, NEEDLE) == pytest.approx(11 / 19)
    assert scoring.paper_recall("THE BEST thing, to do!", NEEDLE) == pytest.approx(5 / 19)


def test_rouge1_f_against_known_values():
    assert scoring.rouge1_f(NEEDLE, NEEDLE) == pytest.approx(1.0)
    assert scoring.rouge1_f("nothing relevant here", NEEDLE) == 0.0
    # "sit in the park": all 4 tokens occur in the 21-token needle.
    p, r = 4 / 4, 4 / 21
    assert scoring.rouge1_f("sit in the park", NEEDLE) == pytest.approx(2 * p * r / (p + r))


def test_exact_substring_on_normalised_words():
    assert scoring.exact("Answer: Eat a sandwich, and sit in Dolores Park on a sunny day!", ANSWER) == 1.0
    assert scoring.exact("eat a sandwich and sit in Dolores Park", ANSWER) == 0.0
    assert scoring.exact("repeat a sandwich and sit in dolores park on a sunny days", ANSWER) == 0.0
