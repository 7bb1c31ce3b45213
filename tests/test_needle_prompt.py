"""Length accounting and needle placement on SmolLM2's real tokenizer and the real KJV haystack."""

import logging

import pytest

from harness.errors import UserError
from harness.tasks import needle
from harness.tasks.haystack import Haystack


def _suite(tokenizer, hay, lengths="1000,1024,3000,8k", depths="0,10,50,90,100", chat=False):
    cfg = needle.resolve_config(preset=None, lengths=lengths, depths=depths, chat=chat, haystack=hay, protocol="exact")
    return needle.NeedleSuite(cfg, hay, tokenizer)


@pytest.mark.parametrize("chat", [False, True])
def test_prompt_length_within_one_percent(tokenizer, kjv, chat):
    suite = _suite(tokenizer, kjv, chat=chat)
    for cell in suite.cells():
        prompt = suite.build(cell)
        assert abs(len(prompt.ids) - cell.length) <= 0.01 * cell.length, (cell.key, len(prompt.ids))
        # The prompt is what the model reads: re-encoding its text gives the same ids.
        text = tokenizer.decode(prompt.ids)
        assert text.count(suite.config.needle) == 1
        assert suite.config.question in text


def test_needle_at_depth_backed_up_to_sentence_end(tokenizer, kjv):
    suite = _suite(tokenizer, kjv, lengths="2k,8k", depths="0,25,50,75,99")
    for cell in suite.cells():
        prompt = suite.build(cell)
        text = tokenizer.decode(prompt.ids)
        before = text[:text.index(suite.config.needle)].rstrip()
        # Inserted after a sentence end (or at the very start of the book).
        assert before.endswith(".") or before.endswith("?") or before.endswith("!") or before.endswith("<book>"), (cell.key, before[-40:])
        # Backing up to a sentence end moves the needle earlier, never later, and only by a
        # sentence or so (KJV verses are short).
        assert prompt.depth_actual <= cell.depth + 0.5, cell.key
        assert cell.depth - prompt.depth_actual < 400 / cell.length * 100 + 0.5, (cell.key, prompt.depth_actual)
        # The needle's first token is where the suite says it is.
        assert tokenizer.decode(prompt.ids[prompt.needle_token:prompt.needle_token + 4]).strip().startswith("The best")


def test_depth_zero_and_hundred_are_the_ends(tokenizer, kjv):
    suite = _suite(tokenizer, kjv, lengths="2k", depths="0,100")
    first, last = (tokenizer.decode(suite.build(c).ids) for c in suite.cells())
    assert "<book> The best thing" in first
    assert "sunny day. </book>" in last


def test_short_haystack_is_repeated_with_one_warning(tokenizer, caplog):
    hay = Haystack("short", "test", "It was a dark and stormy night. The rain fell in torrents. " * 20)
    suite = _suite(tokenizer, hay, lengths="2k,4k", depths="0,50")
    with caplog.at_level(logging.WARNING):
        for cell in suite.cells():
            assert abs(len(suite.build(cell).ids) - cell.length) <= 0.01 * cell.length
    warnings = [r for r in caplog.records if "repeating it" in r.getMessage()]
    assert len(warnings) == 1


def test_length_too_short_for_the_template(tokenizer, kjv):
    suite = _suite(tokenizer, kjv, lengths="64", depths="50")
    with pytest.raises(UserError, match="too short"):
        suite.build(suite.cells()[0])
