import pytest

from harness.tasks import scoring

NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"


REFERENCE_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day."


def test_word_recall_counts_distinct_needle_words():
    assert scoring.word_recall(NEEDLE, NEEDLE) == 1.0
    assert scoring.word_recall("", NEEDLE) == 0.0
    # 21 words, 19 distinct ("a" and "in" repeat); the answer part holds 11 of them.
    assert scoring.word_recall(ANSWER, NEEDLE) == pytest.approx(11 / 19)
    assert scoring.word_recall("THE BEST thing, to do!", NEEDLE) == pytest.approx(5 / 19)


@pytest.mark.parametrize("response, reference, ours", [
    # The concise right answer: 11 distinct of the reference's 12 words (its ceiling is 11/12).
    ("eat a sandwich and sit in Dolores Park on a sunny day.", 11 / 12, 11 / 19),
    # Echoing the question: only "in" is shared with the reference's answer words.
    ("The best thing to do in San Francisco is to visit the city", 1 / 12, 9 / 19),
    # The whole needle sentence scores the ceiling; without the final period "day." is missed.
    (NEEDLE, 11 / 12, 1.0),
    ("eat a sandwich and sit in Dolores Park on a sunny day", 10 / 12, 11 / 19),
    # Whitespace words keep punctuation; case does not matter.
    ("EAT A SANDWICH, and sit in Dolores Park.", 6 / 12, 8 / 19),
    ("", 0.0, 0.0),
])
def test_reference_needle_score_on_fixed_responses(response, reference, ours):
    """The reference heatmap's score (eval/needle/visualize.py) against our cleaner word recall."""
    assert scoring.reference_recall(response, REFERENCE_ANSWER) == pytest.approx(reference)
    assert scoring.word_recall(response, NEEDLE) == pytest.approx(ours)


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
