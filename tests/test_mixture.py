"""The five strategies on a corpus with known domains and lengths (token lengths only)."""

import numpy as np
import pytest

from harness.errors import UserError
from harness.data import mixture, stats

# Median document lengths in tokens per domain, in the spirit of SlimPajama's (reference code's
# MEDIUM_LENGTH): web and code short, arXiv medium-long, books very long.
MEDIANS = {"commoncrawl": 900, "c4": 400, "github": 600, "wikipedia": 500, "stackexchange": 500,
           "arxiv": 9000, "book": 60000}


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(7)
    domains, lengths = [], []
    for d, median in MEDIANS.items():
        n = 60 if d == "book" else 1500
        lengths += np.clip(rng.lognormal(np.log(median), 0.9, n), 16, 300_000).astype(int).tolist()
        domains += [d] * n
    return np.array(domains), np.array(lengths)


MIX = mixture.MIXES[mixture.DEFAULT_MIX]  # the reference code's SlimPajama shares


def _stats(name, corpus, budget=1_000_000, seed=0, seq_len=8192, mix=mixture.DEFAULT_MIX):
    domains, lengths = corpus
    strat = mixture.builtin(name, seq_len, mix)
    plan = mixture.plan(strat, domains, lengths, budget, seed)
    return plan, stats.compute(plan, domains, lengths, strategy=name, seq_len=seq_len)


def test_per_source_holds_shares_and_raises_long_share(corpus):
    _, s = _stats("per_source", corpus)
    _, natural = _stats("cut_target", corpus, seq_len=1 << 20)  # the mix without any length rule
    assert s["total_tokens"] == 1_000_000
    for d, target in MIX.items():
        assert abs(s["domains"][d]["share"] - target) <= 0.02, d
    assert s["long_4k_share"] > natural["long_4k_share"] + 0.15
    for d in ("commoncrawl", "c4"):
        assert s["domains"][d]["long_4k_share"] > 2 * natural["domains"][d]["long_4k_share"]


def test_global_shifts_share_toward_long_domains(corpus):
    _, s = _stats("global", corpus)
    assert s["total_tokens"] == 1_000_000
    assert s["domains"]["book"]["share"] > MIX["book"] + 0.05
    assert s["domains"]["arxiv"]["share"] > MIX["arxiv"] + 0.02
    assert s["domains"]["commoncrawl"]["share"] < MIX["commoncrawl"] - 0.05


def test_upsample_abg_gives_about_22_percent_each(corpus):
    # The reference's UPSAMPLE_CODE_ARXIV_BOOK: 0.6 for ArXiv, Book and GitHub in the SlimPajama mix,
    # normalised: 22.5% each, CommonCrawl 20.0%, C4 10.0%.
    strat = mixture.builtin("upsample_abg", 8192)
    assert {d: round(w, 3) for d, w in strat.weights.items()} == {
        "c4": 0.1, "commoncrawl": 0.2, "stackexchange": 0.012, "wikipedia": 0.013, "github": 0.225,
        "arxiv": 0.225, "book": 0.225}
    _, s = _stats("upsample_abg", corpus)
    for d in ("arxiv", "book", "github"):
        assert abs(s["domains"][d]["share"] - 0.6 / 2.6655682) < 0.01, d
    _, llama = _stats("upsample_abg", corpus, mix="llama")  # over the paper text's LLaMA mix: 0.6 / 2.685
    assert abs(llama["domains"]["book"]["share"] - 0.6 / 2.685) < 0.01


def test_target_mixes_by_name(corpus, tmp_path):
    _, llama = _stats("per_source", corpus, mix="llama")
    for d, target in mixture.MIXES["llama"].items():
        assert abs(llama["domains"][d]["share"] - target) <= 0.02, d
    assert mixture.builtin("per_source", 8192).mix == "slimpajama"
    yml = tmp_path / "m.yaml"
    yml.write_text("weights: llama\nlength_rule: {type: upsample_long}\n")
    strat = mixture.resolve(str(yml), 8192)
    assert strat.mix == "llama" and strat.weights == pytest.approx(mixture.MIXES["llama"])
    with pytest.raises(UserError, match="sets its own weights"):
        mixture.resolve(str(yml), 8192, mix="slimpajama")
    with pytest.raises(UserError, match="--mix: unknown 'redpajama'; known: slimpajama, llama"):
        mixture.builtin("per_source", 8192, "redpajama")


def test_cut_4k_never_puts_more_than_4k_of_one_document_in_a_row(corpus):
    plan, s = _stats("cut_4k", corpus)
    seg = plan.segments
    assert (seg[:, 2] - seg[:, 1]).max() <= 4096
    assert not np.any(seg[1:, 0] == seg[:-1, 0])  # neighbours always differ
    assert s["long_4k_share"] == 0.0
    for d, target in MIX.items():
        assert abs(s["domains"][d]["share"] - target) <= 0.02


def test_cut_target_keeps_long_dependencies(corpus):
    _, s = _stats("cut_target", corpus, seq_len=32768)
    assert s["long_4k_share"] > 0.1 and s["long_32k_share"] == 0.0


def test_repetition_is_reported_when_a_domain_runs_out(corpus):
    domains, lengths = corpus
    small = np.array(["book", "book", "c4", "c4"]), np.array([5000, 7000, 300, 500])
    plan = mixture.plan(mixture.Strategy("x", {"book": 0.5, "c4": 0.5}), *small, budget=40_000, seed=1)
    s = stats.compute(plan, *small, strategy="x", seq_len=1024)
    assert s["domains"]["c4"]["repeat"] == pytest.approx(20_000 / 800)
    assert s["domains"]["book"]["repeat"] == pytest.approx(20_000 / 12_000)


def test_same_seed_same_plan(corpus):
    a, _ = _stats("per_source", corpus, seed=3)
    b, _ = _stats("per_source", corpus, seed=3)
    c, _ = _stats("per_source", corpus, seed=4)
    assert np.array_equal(a.segments, b.segments) and not np.array_equal(a.segments, c.segments)


def test_user_yaml_mixture(tmp_path, corpus):
    f = tmp_path / "mix.yaml"
    f.write_text("name: half_books\nweights: {book: 1, commoncrawl: 1}\nlength_rule: {type: cut, length: 2048}\n")
    strat = mixture.resolve(str(f), 8192)
    assert strat.name == "half_books" and strat.cut == 2048 and strat.weights == {"book": 0.5, "commoncrawl": 0.5}
    plan = mixture.plan(strat, *corpus, budget=200_000, seed=0)
    s = stats.compute(plan, *corpus, strategy=strat.name, seq_len=8192)
    assert s["domains"]["book"]["share"] == pytest.approx(0.5)


@pytest.mark.parametrize("body, message", [
    ("weights: {book: -1, c4: 2}", "non-negative"),
    ("weights: {book: 0, c4: 0}", "all weights are zero"),
    ("weights: {books: 1}", "unknown domain 'books'"),
    ("weights: {book: 1}\nlength_rule: {type: shuffle}", "length_rule type"),
])
def test_bad_user_mixtures(tmp_path, body, message):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(UserError, match=message):
        mixture.resolve(str(f), 8192)


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(UserError, match="known: cut_4k, cut_target, per_source, global, upsample_abg"):
        mixture.resolve("per_domain", 8192)
