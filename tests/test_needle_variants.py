"""Needle variants (RULER): prompt builders on SmolLM2's real tokenizer, scorers on known outputs,
and one-line errors for variants asked with options they cannot take."""

import pytest

from harness.errors import UserError
from harness.tasks import haystack as haystacks
from harness.tasks import needle, needle_variants, scoring
from tests.conftest import harness_cli

EXPECTED_NEEDLES = {"passkey": 1, "multikey": 4, "multivalue": 4, "multiquery": 4, "distractor": 4}


def _suite(tokenizer, variant, lengths="1k,4k", depths="0,30,50,100", chat=False, **kw):
    spec = needle.load_spec()
    hay = haystacks.load(needle.haystack_spec(spec, variant, None))
    cfg = needle.resolve_config(preset=None, lengths=lengths, depths=depths, chat=chat, haystack=hay,
                                spec=spec, variant=variant, **kw)
    return needle.NeedleSuite(cfg, hay, tokenizer)


def test_every_variant_has_a_spec():
    assert set(needle_variants.VARIANTS) == set(EXPECTED_NEEDLES)


@pytest.mark.parametrize("variant", sorted(EXPECTED_NEEDLES))
def test_prompt_holds_every_needle_once_and_the_asked_one_at_its_depth(tokenizer, variant):
    suite = _suite(tokenizer, variant)
    seen_values = set()
    for cell in suite.cells():
        sample = suite.sample(cell)
        assert len(sample.needles) == EXPECTED_NEEDLES[variant]
        prompt = suite.build(cell, sample)
        assert abs(len(prompt.ids) - cell.length) <= 0.01 * cell.length, (cell.key, len(prompt.ids))
        text = tokenizer.decode(prompt.ids)
        for n in sample.needles:
            assert text.count(n) == 1, (cell.key, n)
        # The asked needle (first) sits at the cell's depth: backed up to a sentence end, and moved
        # by the other needles' tokens before it (about 20 each).
        slack = 100 * (60 + 20 * (len(sample.needles) - 1)) / cell.length + 0.5
        assert abs(prompt.depth_actual - cell.depth) <= slack, (cell.key, prompt.depth_actual)
        for value in sample.expected:
            assert value.lower() in text.lower() or variant == "distractor"
        if variant != "distractor":
            assert sample.fields["query"] in text and sample.fields["query"].split(", and ")[-1] in text
            seen_values.update(sample.expected)
        # The same cell gives the same needles (seeded by the cell, not by call order).
        assert suite.sample(cell).needles == sample.needles
    if variant != "distractor":  # each cell draws its own keys and values
        assert len(seen_values) >= len(suite.cells())


@pytest.mark.parametrize("variant, protocol, stops", [
    ("passkey", None, True), ("multikey", None, True), ("multivalue", None, True), ("multiquery", None, True),
    ("distractor", None, False), (None, "exact", False),
    (None, "reference", True)])  # the reference stops at EOS (except a leading one: test_backend)
def test_ruler_variants_end_at_eos_the_paper_needle_runs_on(tokenizer, variant, protocol, stops):
    suite = _suite(tokenizer, variant, lengths="1k", depths="50", protocol=protocol)
    request, _, _ = suite.request(suite.cells()[0])
    assert suite.config.stop_at_eos is stops and request.stop_at_eos is stops
    assert request.skip_leading_eos is (protocol == "reference")
    assert _suite(tokenizer, variant, lengths="1k", depths="50", chat=True).config.stop_at_eos  # --chat: always


def test_passkey_is_rulers_single_needle_in_noise(tokenizer):
    suite = _suite(tokenizer, "passkey", lengths="1k", depths="50")
    cell = suite.cells()[0]
    sample = suite.sample(cell)
    text = tokenizer.decode(suite.build(cell, sample).ids)
    assert text.startswith("A special magic number is hidden within the following text.")
    assert "The grass is green. The sky is blue." in text
    assert sample.needles[0].startswith("One of the special magic numbers for ")
    assert len(sample.expected) == 1 and len(sample.expected[0]) == 7 and sample.expected[0].isdigit()
    assert text.endswith(f"The special magic number for {sample.fields['query']} mentioned in the provided text is")


def test_multiquery_asks_every_key_and_multikey_one(tokenizer):
    mq = _suite(tokenizer, "multiquery", lengths="1k", depths="50")
    sample = mq.sample(mq.cells()[0])
    assert len(sample.queries) == 4 and len(sample.expected) == 4
    assert sample.fields["query"].count(", ") == 3 and ", and " in sample.fields["query"]
    mk = _suite(tokenizer, "multikey", lengths="1k", depths="50")
    sample = mk.sample(mk.cells()[0])
    assert len(sample.queries) == 1 and len(sample.expected) == 1
    assert sample.queries[0] in sample.needles[0] and sample.expected[0] in sample.needles[0]
    assert all(sample.queries[0] not in n for n in sample.needles[1:])


def test_scorers_on_known_outputs():
    spec = needle_variants.load("multivalue")
    sample = needle_variants.Sample(["n"] * 4, [0, 10, 20, 30], {}, ["1234567", "2345678", "3456789", "4567890"])
    assert needle_variants.score(spec, "1234567, 2345678, 3456789 and 4567890.", sample) == {"string_match_all": 1.0}
    assert needle_variants.score(spec, "They are 1234567 and 3456789.", sample) == {"string_match_all": 0.5}
    assert needle_variants.score(spec, "I do not know.", sample) == {"string_match_all": 0.0}
    assert scoring.string_match_all("The UUID is ABC-def", ["abc-DEF"]) == 1.0
    d = needle.load_spec()
    spec = needle_variants.load("distractor")
    spec.update(needle=d["needle"], question=d["question"], answer=d["answer"], prompt=d["prompt"],
                reference_answer=d["reference_answer"])
    sample = needle_variants.make_sample(spec, 50, "0/x")
    right = needle_variants.score(spec, "eat a sandwich and sit in Dolores Park on a sunny day.", sample)
    assert right["paper"] == 11 / 12 and right["word_recall"] == 1.0 and right["distracted"] == 0.0
    wrong = needle_variants.score(spec, sample.distractors[0], sample)
    assert wrong["distracted"] == 1.0 and wrong["paper"] < 0.5


def test_too_many_needles_for_the_length_is_refused(tokenizer):
    suite = _suite(tokenizer, "multikey", lengths="128", depths="50")
    with pytest.raises(UserError, match=r"--lengths: 128 tokens is too short: the template, question and 4 needles"):
        suite.check()


@pytest.mark.parametrize("args, message", [
    (["--variant", "needle9"], "--variant: unknown 'needle9'; known: distractor, multikey, multiquery, multivalue, passkey"),
    (["--variant", "passkey", "--haystack", "kjv"], "--haystack: the passkey variant hides its needle in 'noise'"),
    (["--variant", "multivalue", "--max-new-tokens", "8"], "--max-new-tokens: 8 cannot hold the multivalue variant's 4 values"),
    (["--variant", "multikey", "--suite", "loss"], "--variant: 'multikey' is a needle option; add needle to --suite"),
])
def test_bad_variant_options_are_one_line_exit_2(args, message, tmp_path):
    proc = harness_cli("run", "--model", "smollm2-135m", *args, "--out", str(tmp_path / "x"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_lengths_too_short_for_the_needles_fail_before_the_run_directory(tiny_model_dir, tmp_path):
    proc = harness_cli("run", "--model", str(tiny_model_dir), "--variant", "multiquery", "--lengths", "100",
                       "--depths", "50", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2, proc.stderr
    assert "too short" in proc.stderr and "4 needles" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_comparison_table_keeps_each_variant_in_its_own_row(tmp_path):
    from harness.reports import compare

    def run(name, variant, scores):
        manifest = {"config": {"suites": {"needle": {"variant": {"name": variant} if variant else None}}}}
        results = [{"suite": "needle", "key": f"needle/{i}", "score": s} for i, s in enumerate(scores)]
        return compare.Run(name, tmp_path / name, manifest, results)

    df = compare.table(compare.Collection([run("paper", None, [1.0, 0.5]), run("pk", "passkey", [1.0, 1.0]),
                                           run("mv", "multivalue", [0.25, 0.75])]))
    assert df.loc["paper", "needle mean"] == 0.75
    assert df.loc["pk", "needle (passkey) mean"] == 1.0
    assert df.loc["mv", "needle (multivalue) mean"] == 0.5
    assert df["needle mean"].count() == 1  # a variant's mean never lands in the paper needle's row
