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


# -- 4. dynamic RoPE: the base carried from cell to cell ----------------------------------------------


class _OldDynamicNTK:
    """transformers 4.3x's LlamaDynamicNTKScalingRotaryEmbedding, as far as its base goes: the cache is
    set for a length, recomputed when a forward is longer, never for a shorter one."""

    def __init__(self, dim, max_position_embeddings, base, scaling_factor):
        self.dim, self.max_position_embeddings, self.base = dim, max_position_embeddings, base
        self.scaling_factor = scaling_factor
        self._set_cos_sin_cache(max_position_embeddings)

    def _set_cos_sin_cache(self, seq_len):
        self.max_seq_len_cached = seq_len
        self.current = self.base
        if seq_len > self.max_position_embeddings:
            self.current = self.base * ((self.scaling_factor * seq_len / self.max_position_embeddings)
                                        - (self.scaling_factor - 1)) ** (self.dim / (self.dim - 2))

    def __call__(self, seq_len):
        if seq_len > self.max_seq_len_cached:
            self._set_cos_sin_cache(seq_len)
        return self.current


def test_rope_base_along_the_paper_grid_order(tokenizer, kjv):
    """The paper's 400 cells in the reference's loop order (lengths, then depths) with LLaMA-2 7B's RoPE
    (theta 1e4, head dim 128, 4096 trained positions) and reset_rope(model, 81920, 10); each prompt
    L - 200 + 38 tokens long, each answer the full 50 tokens (49 of them fed back)."""
    suite = needle.NeedleSuite(needle.resolve_config(preset="paper", lengths=None, depths=None, chat=False,
                                                     haystack=kjv), kjv, tokenizer)
    assert needle.rope_rule(suite.config) == "carry"
    lengths = np.round(np.linspace(1000, 128000, num=40, endpoint=True)).astype(int).tolist()
    depths = np.round(np.linspace(0, 100, num=10, endpoint=True)).astype(int).tolist()
    assert [(c.length, c.depth) for c in suite.cells()] == [(n, d) for n in lengths for d in depths]
    prompt = {length: length - 200 + 38 for length in suite.config.lengths}
    carry = needle.RopeCarry()
    ours = [carry.after(prompt[c.length], 50, 50)["rope_prefill"] for c in suite.cells()]
    ours = [models.dynamic_ntk_base(1e4, 10, 4096, 128, max(n, 81920)) for n in ours]

    rotary = _OldDynamicNTK(128, 4096, 10000.0, 1.0)
    rotary.scaling_factor = 10                       # reset_rope(model, 81920, 10)
    rotary._set_cos_sin_cache(81920)
    theirs, alone = [], []
    for length in lengths:                             # run_test: context lengths, then depths
        for _depth in depths:
            n = prompt[int(length)]
            theirs.append(rotary(n))                   # the prefill
            for k in range(1, 50):                     # generate(max_new_tokens=50): 49 more forwards
                rotary(n + k)
            fresh = _OldDynamicNTK(128, 4096, 10000.0, 10)
            fresh._set_cos_sin_cache(81920)
            alone.append(fresh(n))                      # what a reset state gives
    assert ours == pytest.approx(theirs, rel=1e-12)
    above = [t / a - 1 for t, a in zip(theirs, alone) if t != a]
    assert len(above) == 135                           # 15 lengths past 81,920 x 9 non-zero depths
    assert 0.0003 < min(above) and max(above) < 0.0007


def _prefill_bases(loaded, suite, todo, backend):
    """Run ``todo``; the inv_freq each prompt's prefill used (the rotary's state after its update)."""
    seen = []

    def record(module, args, kwargs, out):
        positions = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        if positions.shape[-1] > 1:
            seen.append(module.inv_freq.clone())

    hook = loaded.model.model.rotary_emb.register_forward_hook(record, with_kwargs=True)
    try:
        results = [r for _, r in suite.run(todo, backend)]
    finally:
        hook.remove()
    return results, seen


def test_carried_rope_reaches_the_model(short_model, tokenizer, kjv, tmp_path):
    loaded = models.load(str(short_model), rope_scaling=models.parse_rope_scaling("frozen_dynamic:4@256"),
                         dtype="fp32")
    dim = loaded.model.config.hidden_size // loaded.model.config.num_attention_heads

    def inv_freq(n):
        return 1.0 / (models.dynamic_ntk_base(10000.0, 4, 256, dim, max(n, 256)) ** (torch.arange(0, dim, 2).float() / dim))

    def suite_for(state):
        cfg = needle.resolve_config(preset=None, lengths="470,530", depths="0,50,100", chat=False, haystack=kjv,
                                    max_new_tokens=6, protocol="reference", rope_state=state)
        return needle.NeedleSuite.bind((cfg, kjv), loaded)

    suite = suite_for(None)
    assert suite.config.to_dict()["rope_state"] == "carry"      # the reference protocol's, recorded
    results, bases = _prefill_bases(loaded, suite, suite.cells(), HFBackend(loaded))
    reached, carried = 0, 0
    for result, used in zip(results, bases):
        n = max(reached, result["tokens"])              # written out: the reference's cache before this prefill
        assert result["rope_prefill"] == n
        assert torch.allclose(used, inv_freq(n), rtol=1e-6, atol=0)
        carried += n > result["tokens"]
        produced = result["new_tokens"] + (result["new_tokens"] < 6)   # an EOS, when it stopped, was produced too
        reached = max(n, result["tokens"] + produced - 1)
    assert carried >= 2
    # A resumed run carries on from what its stored cells reached.
    from harness.store import RunStore

    store = RunStore(tmp_path)
    for r in results[:4]:
        store.append(r)
    again = suite_for(None)
    again.run_dir = tmp_path
    resumed, _ = _prefill_bases(loaded, again, again.cells()[4:], HFBackend(loaded))
    assert [r["rope_prefill"] for r in resumed] == [r["rope_prefill"] for r in results[4:]]
    # --dynamic-rope reset: each prompt from the loaded state, today's rule.
    reset = suite_for("reset")
    results, bases = _prefill_bases(loaded, reset, reset.cells(), HFBackend(loaded))
    for result, used in zip(results, bases):
        assert "rope_prefill" not in result and torch.allclose(used, inv_freq(result["tokens"]), rtol=1e-6, atol=0)


# -- 2. decoding as the model's generation_config says -------------------------------------------------


def test_generation_config_decoding_draws_what_generate_draws(tiny_model_dir, tokenizer, kjv, smollm2_dir):
    """The reference's generate() without do_sample follows the checkpoint's generation_config: with
    Llama-2's (sampling, temperature 0.6, top-p 0.9, top-k unset), our loop draws generate's tokens
    from the same seed."""
    from dataclasses import replace

    from harness.backends import Sampling, generation_config_sampling

    loaded = models.load(str(tiny_model_dir), dtype="fp32")
    assert generation_config_sampling(loaded.model, None) is None            # no do_sample: greedy
    config = loaded.model.generation_config
    config.do_sample, config.temperature, config.top_p = True, 0.6, 0.9
    sampling = generation_config_sampling(loaded.model, None)
    assert sampling == Sampling(temperature=0.6, top_k=50, top_p=0.9)       # generate's default top-k
    ids = tokenizer("In the beginning God created the heaven and the earth. " * 20)["input_ids"]
    for seed in (0, 1):
        torch.manual_seed(seed)
        theirs = loaded.model.generate(torch.tensor([ids]), max_new_tokens=16)[0, len(ids):].tolist()
        eos = loaded.model.generation_config.eos_token_id
        theirs = theirs[:theirs.index(eos)] if eos in theirs else theirs
        ours = HFBackend(loaded).generate(ids, 16, sampling=replace(sampling, seed=seed))
        assert list(ours.token_ids) == theirs
    # The suite records what the model asked for and seeds each cell from --seed and its key.
    cfg = needle.resolve_config(preset="tiny", lengths="256", depths="0,100", chat=False, haystack=kjv,
                                decoding="generation_config")
    suite = needle.NeedleSuite.bind((cfg, kjv), loaded)
    assert suite.config.to_dict()["sampling"] == {"temperature": 0.6, "top_k": 50, "top_p": 0.9}
    assert "rope_state" not in suite.config.to_dict()          # not a dynamic RoPE: nothing carries
    seeds = [suite.request(c)[0].sampling.seed for c in suite.cells()]
    assert seeds == [sampling.for_cell(0, c.key).seed for c in suite.cells()] and len(set(seeds)) == 2
    assert "decoding" not in needle.resolve_config(preset="tiny", lengths="256", depths="0", chat=False,
                                                   haystack=kjv).to_dict()   # greedy runs keep their config
    # The embedded SmolLM2 asks for nothing that samples: generation_config decodes it greedily.
    assert generation_config_sampling(None, smollm2_dir) is None


# -- 5. BookQA's prompt tokens, with the fast and the slow tokenizer -----------------------------------

BOOK_TEMPLATE = ("<|im_start|>Read the book below and answer a question.\n\n{context}\n\nQuestion: {question}"
                 "\n\nAnswer:")


def _reference_prompt_ids(tok, text, truncate_len):
    """get_pred: truncate_by_tokens (encode, first and last truncate_len // 2, decode without special
    tokens), then tok(input_text)."""
    tokens = tok.encode(text)
    if len(tokens) > truncate_len:
        split = truncate_len // 2
        tokens = tokens[0:split] + tokens[-split:]
    return tok(tok.decode(tokens, skip_special_tokens=True))["input_ids"]


@pytest.fixture
def infinitebench(tmp_path, kjv):
    """A longbook_qa_eng file of two questions about a 40,000-character book."""
    path = tmp_path / "longbook_qa_eng.jsonl"
    rows = [{"id": i, "context": kjv.text[i * 1000:i * 1000 + 40_000], "input": f"Who spoke in verse {i}?",
             "answer": ["Moses"], "options": []} for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bookqa_prompt_ids_as_get_pred_builds_them(infinitebench, tokenizer, smollm2_dir):
    cfg, books, items = bookqa.resolve_config(preset="paper", lengths=None, bookqa=str(infinitebench))
    assert cfg.lengths == (128000,) and cfg.prompt == BOOK_TEMPLATE
    assert cfg.max_new_tokens == 40 and cfg.stop_at_eos
    item = items[0]
    text = BOOK_TEMPLATE.format(context=books[item.book], question=item.question)
    fast = bookqa.BookQASuite(cfg, books, items, tokenizer)
    for length in (2000, 5001, 128000):   # cut (even and odd budgets) and whole
        assert fast.prompt_ids(item, length) == _reference_prompt_ids(tokenizer, text, length)
    # The reference's load_model asks for the slow tokenizer; transformers 5 ignores use_fast and gives
    # the fast one (the same ids): no slow tokenizer exists to compare with.
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(smollm2_dir, use_fast=False)
    assert slow.is_fast and _reference_prompt_ids(slow, text, 2000) == fast.prompt_ids(item, 2000)


def test_an_infinitebench_file_of_another_size_is_warned_about(infinitebench, caplog):
    cfg, _, items = bookqa.resolve_config(preset="paper", lengths=None, bookqa=str(infinitebench))
    assert cfg.questions == len(items) == 2 and len(cfg.file_sha256) == 64
    assert "holds 2 questions; the paper's longbook_qa_eng had 351" in caplog.text


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
