"""The reference protocol (FranxYao/Long-Context-Data-Engineering, eval/needle/) on SmolLM2's real
tokenizer and the real KJV haystack, checked against a construction written here from the
reference's rules, independently of tasks/needle.py."""

import pytest

from harness.errors import UserError
from harness.tasks import needle

SENTENCE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
QUESTION = "What is the best thing to do in San Francisco?"
TEMPLATE = ("<|im_start|> This is a very long story book: <book> {context} </book>.\n"
            " Based on the content of the book, Question: {question}\nAnswer:")


_ENCODED: dict = {}


def _reference_prompt(tok, haystack: str, length: int, depth: int) -> tuple[list[int], int, int]:
    """The reference's generate_context + generate_prompt, from its code's rules: (prompt ids,
    needle insertion point, context tokens)."""
    if haystack not in _ENCODED:  # the whole haystack, as the reference encodes it (about 1M tokens)
        _ENCODED[haystack] = tok.encode(haystack)
    tokens = _ENCODED[haystack]                         # read_context_files + encode_and_trim
    context = tok.decode(tokens[:length]) if len(tokens) > length else haystack
    needle_ids = tok.encode("\n" + SENTENCE + "\n")     # insert_needle
    ctx = tok.encode(context)
    limit = length - 200
    if len(ctx) + len(needle_ids) > limit:
        ctx = ctx[:limit - len(needle_ids)]
    period_tokens = tok.convert_tokens_to_ids([".", "Ġ."])  # SmolLM2's "." and " ." (LLaMA's: 29889, 869)
    if depth == 100:
        new, point = ctx + needle_ids, len(ctx)
    else:
        point = int(len(ctx) * (depth / 100))
        new = ctx[:point]
        while new and new[-1] not in period_tokens:
            point -= 1
            new = ctx[:point]
        new = new + needle_ids + ctx[point:]
    prompt = TEMPLATE.format(context=tok.decode(new), question=QUESTION)
    return tok(prompt)["input_ids"], point, len(ctx)


@pytest.fixture(scope="module")
def suite(tokenizer, kjv):
    cfg = needle.resolve_config(preset="paper", lengths="1000,2000,5000", depths=None, chat=False, haystack=kjv)
    return needle.NeedleSuite(cfg, kjv, tokenizer)


def test_paper_preset_is_the_reference_grid_and_rules(suite):
    cfg = suite.config
    assert cfg.protocol == "reference"
    assert cfg.depths == (0, 11, 22, 33, 44, 56, 67, 78, 89, 100)  # np.round(np.linspace(0, 100, 10)).astype(int)
    assert cfg.stop_at_eos and cfg.skip_leading_eos and cfg.max_new_tokens == 50
    assert cfg.reference_buffer == 200 and cfg.prompt == TEMPLATE
    assert suite._sentence_end_tokens() == {30, 1673}


@pytest.mark.parametrize("length, depth", [(1000, 0), (1000, 44), (2000, 56), (5000, 89), (5000, 100)])
def test_prompt_equals_an_independent_construction(suite, tokenizer, kjv, length, depth):
    ids, point, n_ctx = _reference_prompt(tokenizer, kjv.text, length, depth)
    prompt = suite.build(next(c for c in suite.cells() if c.length == length and c.depth == depth))
    assert prompt.ids == ids
    text = tokenizer.decode(prompt.ids)
    # Whitespace: the needle sits on a line of its own, after a sentence end of the haystack.
    assert text.count("\n" + SENTENCE + "\n") == 1
    before = text.split("\n" + SENTENCE)[0]
    assert depth in (0, 100) or before.rstrip().endswith(".")  # 100: appended as is
    # Length accounting: the haystack and needle take L - 200 tokens; L is not the prompt's length.
    overhead = len(tokenizer(TEMPLATE.format(context="", question=QUESTION))["input_ids"])
    assert abs(len(prompt.ids) - (length - 200 + overhead)) <= 3
    assert prompt.depth_actual == round(100 * point / n_ctx, 2)
    assert tokenizer.decode(prompt.ids[prompt.needle_token:]).lstrip().startswith(SENTENCE[:20])


def test_reference_protocol_refuses_what_it_cannot_build(tokenizer, kjv):
    with pytest.raises(UserError, match="--protocol reference: the paper's single needle"):
        needle.resolve_config(preset="quick", lengths=None, depths=None, chat=False, haystack=kjv,
                              variant="passkey", protocol="reference")
    cfg = needle.resolve_config(preset="quick", lengths=None, depths=None, chat=False, haystack=kjv, variant="passkey")
    assert cfg.protocol == "exact"  # a variant under a reference preset runs the exact protocol
    short = needle.NeedleSuite(needle.resolve_config(preset="paper", lengths="230", depths="50", chat=False,
                                                     haystack=kjv), kjv, tokenizer)
    with pytest.raises(UserError, match="too short for --protocol reference"):
        short.check()


@pytest.mark.parametrize("protocol", ["reference", "exact"])
def test_samples_draw_other_haystack_starts_and_keep_draw_zero(tokenizer, kjv, protocol):
    one = needle.NeedleSuite(needle.resolve_config(preset="quick", lengths="1000", depths="50,100", chat=False,
                                                   haystack=kjv, protocol=protocol), kjv, tokenizer)
    three = needle.NeedleSuite(needle.resolve_config(preset="quick", lengths="1000", depths="50,100", chat=False,
                                                     haystack=kjv, protocol=protocol, samples=3), kjv, tokenizer)
    cells = three.cells()
    assert [c.key for c in cells[:2]] == [c.key for c in one.cells()]       # draw 0: the keys and prompts of K = 1
    assert [c.key for c in cells[2:4]] == ["needle/1000/50/s1", "needle/1000/100/s1"] and len(cells) == 6
    prompts = [three.build(c).ids for c in cells]
    assert prompts[:2] == [one.build(c).ids for c in one.cells()]
    assert len({tuple(p[:300]) for p in prompts[::2]}) == 3                 # three haystack starts
    # The cells of one draw share their haystack up to the needle: the prefix tree still pays off.
    assert prompts[2][:300] == prompts[3][:300]
