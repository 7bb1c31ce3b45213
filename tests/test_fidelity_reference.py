"""The reference code's rules that docs/fidelity.md names as reproduced, each checked against the rule
written out here from the reference (FranxYao/Long-Context-Data-Engineering at 2b38d52),
independently of the harness's code: the raw-joined haystack (eval/needle/needle_in_haystack.py,
read_context_files), per_source's character-based budgets (data_engineering/slimpajama_packing.py),
the dynamic RoPE base carried from cell to cell (transformers 4.3x's dynamic NTK cache under the
needle script's grid loop), BookQA's prompt tokens (eval/book/eval_book.py, get_pred) and the
heatmap's dashed line (eval/needle/visualize.py)."""

import glob
import json
import shutil

import numpy as np
import pytest
import torch

from harness import models
from harness.backends.hf import HFBackend
from harness.errors import UserError
from harness.tasks import base, bookqa, haystack, needle

@pytest.fixture(scope="module")
def short_model(tiny_model_dir, tmp_path_factory):
    """The tiny Llama trained to 256 positions: prompts of a few hundred tokens already scale its RoPE."""
    path = tmp_path_factory.mktemp("short-fidelity") / "m"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 256
    (path / "config.json").write_text(json.dumps(config))
    return path


# -- 1. the pg-essays haystack: files glued as read ---------------------------------------------------


def _reference_haystack(folder) -> str:
    """read_context_files: every *.txt file's text as read, appended with nothing between (the
    reference takes glob's order, the file system's; name order here, as the harness)."""
    context = ""
    for file in sorted(glob.glob(f"{folder}/*.txt")):
        with open(file) as f:
            context += f.read()
    return context


@pytest.fixture(scope="module")
def essays(tmp_path_factory, kjv):
    """Three essay files cut from real text, with the whitespace a file really has at its ends (a
    title line, trailing newlines, Windows line ends), which the raw join keeps and ours strips."""
    folder = tmp_path_factory.mktemp("essays")
    text = kjv.text
    bodies = ["\nTITLE ONE\n\n" + text[:900] + "\n\n", text[900:1700] + "\n", "  " + text[1700:2600]]
    (folder / "a_first.txt").write_text(bodies[0])
    (folder / "b_second.txt").write_bytes(bodies[1].replace("\n", "\r\n").encode())
    (folder / "c_third.txt").write_text(bodies[2])
    return folder


def test_reference_protocol_haystack_is_the_raw_join(essays):
    reference = _reference_haystack(essays)
    options = needle.Options(haystack=str(essays))
    cfg, hay = needle.NeedleSuite.prepare(base.Grid(preset="paper", lengths="1000", depths="50"), options)
    assert cfg.protocol == "reference" and cfg.haystack["join"] == "raw"
    assert hay.text[:2000] == reference[:2000]
    assert len(hay.text) == len(reference) and hay.separator == ""
    # The exact protocol keeps today's join: each file stripped, a blank line between.
    _, ours = needle.NeedleSuite.prepare(base.Grid(preset="tiny"), options)
    assert ours.text[:2000] == "\n\n".join(open(f).read().strip() for f in sorted(glob.glob(f"{essays}/*.txt")))[:2000]
    assert "join" not in ours.describe()
    # The named option reproduces either under either protocol.
    _, raw = needle.NeedleSuite.prepare(base.Grid(preset="tiny"), needle.Options(haystack=str(essays),
                                                                                 haystack_join="raw"))
    assert raw.text == hay.text


def test_a_short_raw_haystack_repeats_with_nothing_between(essays, tokenizer):
    """The reference reads all its files again while it has fewer tokens than the longest length."""
    from harness.tasks.needle_prompt import HaystackTokens

    reference = _reference_haystack(essays)
    assert len(tokenizer.encode(reference)) < 1000
    text, _ = HaystackTokens(haystack.load(str(essays), join="raw"), tokenizer, 0, 3000).ensure(3000)
    assert len(text) > 3 * len(reference) and text == reference * (len(text) // len(reference))


# -- 3. per_source: lengths and budgets in characters / 3.68, the last document whole ----------------

SLIMPAJAMA_ORIGINAL_MIX = {"RedPajamaC4": 0.26609933, "RedPajamaCommonCrawl": 0.53374772,
                           "RedPajamaStackExchange": 0.03169647, "RedPajamaWikipedia": 0.03402128,
                           "RedPajamaGithub": 0.05004782, "RedPajamaArXiv": 0.04290379, "RedPajamaBook": 0.0414836}
SET_NAMES = {"RedPajamaC4": "c4", "RedPajamaCommonCrawl": "commoncrawl", "RedPajamaStackExchange": "stackexchange",
             "RedPajamaWikipedia": "wikipedia", "RedPajamaGithub": "github", "RedPajamaArXiv": "arxiv",
             "RedPajamaBook": "book"}


def _reference_per_source(sources, chars, total_tokens, seed):
    """slimpajama_packing.py's main loop with --down_sample_mode per_source --down_sample_ratio 0.1,
    over a stream whose order and draws are given (the reference's come from datasets' shuffle(42) and
    np.random.seed(15213), which cannot be replayed here): each pass a permutation of the documents
    from ``np.random.default_rng(seed)``, which then also gives the one random() per short document."""
    rng = np.random.default_rng(seed)
    per_source_budget = {s: total_tokens * SLIMPAJAMA_ORIGINAL_MIX[s] for s in SLIMPAJAMA_ORIGINAL_MIX}
    per_source_tokens = {s: 0 for s in SLIMPAJAMA_ORIGINAL_MIX}
    kept = []
    while True:
        for i in rng.permutation(len(sources)):
            dlen = chars[i] / 3.68
            source = sources[i]
            if per_source_tokens[source] > per_source_budget[source]:
                continue
            if dlen < 4096 and rng.random() > 0.1:
                continue
            per_source_tokens[source] += dlen
            kept.append(int(i))
            if all(per_source_tokens[s] >= per_source_budget[s] for s in per_source_tokens):
                return kept, per_source_tokens, per_source_budget


@pytest.fixture(scope="module")
def documents():
    """A fixed corpus: every source, documents from 2K to 40K characters, and token counts that put
    some of them on the other side of the 4K threshold from their characters / 3.68."""
    rng = np.random.default_rng(7)
    sources, chars = [], []
    for source in SLIMPAJAMA_ORIGINAL_MIX:
        for _ in range(60):
            sources.append(source)
            chars.append(int(rng.integers(2_000, 40_000)))
    chars = np.array(chars)
    tokens = chars // 5 + 1          # 5 characters a token: 15,073-20,480 characters is long by 3.68, short by tokens
    return sources, chars, tokens


@pytest.mark.parametrize("seed", [0, 1])
def test_per_source_ref_keeps_and_budgets_as_the_reference_loop(documents, seed):
    from harness.data import mixture

    sources, chars, tokens = documents
    total = 300_000
    kept, counted, budgets = _reference_per_source(sources, chars, total, seed)
    domains = np.array([SET_NAMES[s] for s in sources])
    plan = mixture.plan(mixture.builtin("per_source_ref", 8192), domains, tokens, total, seed, chars=chars)
    segments = plan.segments
    assert sorted(segments[:, 0].tolist()) == sorted(kept)                       # the same documents kept
    assert (segments[:, 1] == 0).all() and (segments[:, 2] == tokens[segments[:, 0]]).all()   # each one whole
    for source, name in SET_NAMES.items():
        mine = chars[segments[domains[segments[:, 0]] == name, 0]].sum() / 3.68
        assert mine == pytest.approx(counted[source], rel=1e-12)
        assert mine >= budgets[source]                                          # filled, the last one overshooting
        assert mine - chars[[i for i in kept if sources[i] == source][-1]] / 3.68 <= budgets[source]
    # The token rule decides otherwise on this corpus: the two fills are different strategies.
    exact = mixture.plan(mixture.builtin("per_source", 8192), domains, tokens, total, seed)
    assert sorted(exact.segments[:, 0].tolist()) != sorted(kept)
    assert int((exact.segments[:, 2] - exact.segments[:, 1]).sum()) == total


def test_fill_reference_from_a_mixture_yaml(documents, tmp_path):
    from harness.data import mixture

    sources, chars, tokens = documents
    domains = np.array([SET_NAMES[s] for s in sources])
    spec = tmp_path / "mine.yaml"
    spec.write_text("weights: slimpajama\nlength_rule: {type: upsample_long}\nfill: reference\n")
    strategy = mixture.resolve(str(spec), 8192)
    assert strategy.to_dict()["fill"] == "reference" and strategy.chars_per_token == 3.68
    ours = mixture.plan(strategy, domains, tokens, 300_000, 0, chars=chars)
    named = mixture.plan(mixture.builtin("per_source_ref", 8192), domains, tokens, 300_000, 0, chars=chars)
    assert (ours.segments == named.segments).all()
    assert "fill" not in mixture.builtin("per_source", 8192).to_dict()   # an exact build's config is unchanged
    spec.write_text("weights: slimpajama\nlength_rule: {type: cut, length: 4096}\nfill: reference\n")
    with pytest.raises(UserError, match="never cuts documents"):
        mixture.resolve(str(spec), 8192)


# -- 6. the heatmap's dashed line -------------------------------------------------------------------


def test_dashed_line_sits_at_the_frozen_length():
    from harness.reports import heatmap

    frozen = {"rope_type": "frozen_dynamic", "factor": 10.0, "frozen_length": 81920,
              "original_max_position_embeddings": 4096}
    assert models.effective_positions(frozen, 4096) == 81920
    assert models.effective_positions({**frozen, "max_positions": "scaled"}, 4096) == 40960   # the earlier rule
    assert models.parse_rope_scaling("frozen_dynamic:10@81920:scaled")[3] == "scaled"
    # visualize.py: PRETRAINED_LEN = 81920; the first context length past it is where the line goes.
    locations = sorted(np.round(np.linspace(1000, 128000, num=40, endpoint=True)).astype(int).tolist())
    for li, length in enumerate(locations):
        if length > 81920:
            break
    # Ours: on the boundary before that column (imshow's columns are centred on integers); theirs is
    # drawn at li + 0.8 in seaborn's (columns span [i, i + 1]): 0.8 of a column into it.
    assert heatmap.max_position_x(locations, models.effective_positions(frozen, 4096)) == li - 0.5
    assert locations[li - 1] <= 81920 < locations[li] and li == 25


def test_frozen_dynamic_max_positions_on_a_loaded_model(short_model):
    loaded = models.load(str(short_model), rope_scaling=models.parse_rope_scaling("frozen_dynamic:10@1024"),
                         dtype="fp32")
    assert loaded.max_positions == 1024
    scaled = models.load(str(short_model), rope_scaling=models.parse_rope_scaling("frozen_dynamic:10@1024:scaled"),
                         dtype="fp32")
    assert scaled.max_positions == 2560
    assert torch.allclose(scaled.model.model.rotary_emb.inv_freq, loaded.model.model.rotary_emb.inv_freq)
    with pytest.raises(UserError, match="is not valid"):
        models.parse_rope_scaling("frozen_dynamic:10@1024:other")
