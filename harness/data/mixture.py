"""The paper's five data-mixture strategies (Fu et al. 2024, section 3) and user mixtures.

A strategy is three choices: target domain weights, a length rule, and the scope the rule acts
in. Applied to the token lengths of a corpus's documents, it yields a *plan*: an ordered list of
segments (document, start token, end token) holding exactly the token budget (``fill: exact``;
``fill: reference`` below holds about it).

| name          | weights                        | length rule                              | scope      |
|---------------|--------------------------------|------------------------------------------|------------|
| cut_4k        | target shares                  | cut every document into 4K-token pieces  | per domain |
| cut_target    | target shares                  | cut into seq_len pieces                  | per domain |
| per_source    | target shares                  | keep a < 4K document with p = 0.1        | per domain |
| global        | target shares, before the rule | keep a < 4K document with p = 0.1        | global     |
| upsample_abg  | ArXiv, Book, GitHub at 0.6     | keep a < 4K document with p = 0.1        | per domain |

The paper's text describes all five; the reference code (data_engineering/slimpajama_packing.py)
implements three of them, as its ``--down_sample_mode``: ``per_source``, ``global`` and
``upsample_code_arxiv_book`` (``upsample_abg`` here). ``cut_4k`` and ``cut_target`` come from the
paper's text only: no reference code cuts documents. The target shares are a named mix (MIXES:
``slimpajama``, the reference code's and the default; ``llama``, the paper text's) or a mixture
YAML's own weights.

- *per domain*: each domain fills its own budget (weight x total) from its documents, shuffled
  with the seed; a domain that runs out starts another epoch over its documents (repetition,
  reported per domain). The last document taken is truncated to fit the budget exactly.
- *global*: domains are drawn in proportion to their weights (the natural stream of a corpus
  with that mix), the length rule drops documents regardless of domain, and the total budget is
  filled: domains with long documents gain share (the paper's point against it).
- Cut pieces and documents are shuffled together before packing, so no more than the cut length
  of one document ever sits in a row.
The keep probability 0.1 and the 4K threshold are the reference code's (``down_sample_ratio``);
the upsample weights are its ``UPSAMPLE_CODE_ARXIV_BOOK`` (about 22.5% each after normalising).

How the budgets are counted and filled (``fill``, a mixture YAML's key; the ``*_ref`` names):
- ``exact`` (the default): lengths and budgets in tokens of the build's tokenizer, each domain's
  last document truncated so the plan holds the budget exactly;
- ``reference``: the reference code's accounting. A document's length is its characters /
  ``chars_per_token`` (3.68, its LLAMA_CHAR_TO_TOKEN_RATIO), for the 4K threshold and for the
  budgets alike; documents are kept whole, so a domain's last one overshoots its budget. Per
  domain, the documents come as one seeded stream of the whole corpus (it reads SlimPajama as one
  shuffled stream); a domain takes documents until its count passes its budget and the stream ends
  when every domain's has reached it. Global: the total is counted the same way and the last
  document kept whole. The plan then holds more tokens than the budget (packing keeps whole
  sequences), and its budgets are estimates: with another tokenizer, or text unlike LLaMA's
  training mix, 3.68 characters are not one token.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from harness.errors import UserError
from harness.data.domains import DOMAINS

log = logging.getLogger(__name__)

# Target domain mixes, by name. `slimpajama` is the reference code's SLIMPAJAMA_ORIGINAL_MIX
# (data_engineering/utils.py: SlimPajama's measured token shares), from which the paper's numbers
# come; `llama` is LLaMA's mix, which the paper's text quotes. Not the same: CommonCrawl 53% vs 67%.
MIXES = {
    "slimpajama": {"c4": 0.26609933, "commoncrawl": 0.53374772, "stackexchange": 0.03169647,
                   "wikipedia": 0.03402128, "github": 0.05004782, "arxiv": 0.04290379, "book": 0.0414836},
    "llama": {"commoncrawl": 0.67, "c4": 0.15, "github": 0.045, "wikipedia": 0.045, "book": 0.045,
              "arxiv": 0.025, "stackexchange": 0.02},
}
DEFAULT_MIX = "slimpajama"
SHORT = 4096
KEEP_SHORT = 0.1
ABG_WEIGHT = 0.6
CHARS_PER_TOKEN = 3.68   # the reference's LLAMA_CHAR_TO_TOKEN_RATIO (data_engineering/utils.py)
REF = "_ref"             # a built-in name + this: the same strategy with fill: reference
STRATEGIES = ("cut_4k", "cut_target", "per_source", "global", "upsample_abg",
              "per_source_ref", "global_ref", "upsample_abg_ref")
RULES = ("cut", "upsample_long", "none")
SCOPES = ("per_domain", "global")
FILLS = ("exact", "reference")


@dataclass(frozen=True)
class Strategy:
    name: str
    weights: dict[str, float]
    rule: str = "none"
    cut: int | None = None
    scope: str = "per_domain"
    short: int = SHORT
    keep_short: float = KEEP_SHORT
    mix: str = "custom"    # the named target mix the weights come from (MIXES), or custom weights
    fill: str = "exact"    # exact: token counts, budgets filled exactly | reference: the reference code's
    chars_per_token: float = CHARS_PER_TOKEN   # fill reference: a document's length is chars / this

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.fill == "exact":   # recorded only in use: an exact build's config (its cache key) is unchanged
            del d["fill"], d["chars_per_token"]
        return d


def _normalise(weights: dict[str, float], what: str) -> dict[str, float]:
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise UserError(f"{what}: weight of {name!r} is {w!r}; weights must be finite non-negative numbers")
    total = float(sum(weights.values()))
    if total <= 0:
        raise UserError(f"{what}: all weights are zero; give at least one positive domain weight")
    return {k: v / total for k, v in weights.items() if v > 0}


def check_mix(mix: str) -> str:
    if mix not in MIXES:
        raise UserError(f"--mix: unknown {mix!r}; known: {', '.join(MIXES)}")
    return mix


def builtin(name: str, seq_len: int, mix: str = DEFAULT_MIX) -> Strategy:
    """One of the paper's strategies over a named target mix (upsample_abg: ArXiv, Book and GitHub
    set to 0.6 in that mix, then normalised, as the reference's UPSAMPLE_CODE_ARXIV_BOOK)."""
    shares = MIXES[check_mix(mix)]
    fill = "exact"
    if name.endswith(REF) and name in STRATEGIES:
        name, fill = name.removesuffix(REF), "reference"
    if name == "upsample_abg":
        shares = {d: (ABG_WEIGHT if d in ("arxiv", "book", "github") else w) for d, w in shares.items()}
    rules = {"cut_4k": dict(rule="cut", cut=SHORT), "cut_target": dict(rule="cut", cut=seq_len),
             "per_source": dict(rule="upsample_long"), "global": dict(rule="upsample_long", scope="global"),
             "upsample_abg": dict(rule="upsample_long")}
    if name not in rules:
        raise UserError(f"--strategy: unknown {name!r}; known: {', '.join(STRATEGIES)}, or a mixture YAML file")
    return Strategy(name + (REF if fill == "reference" else ""), _normalise(shares, name), mix=mix, fill=fill,
                    **rules[name])


def from_yaml(path: Path, seq_len: int) -> Strategy:
    """A user mixture: ``name``, ``weights: {domain: w}``, ``length_rule: {type, ...}``, ``scope``,
    ``fill`` (exact or reference) and, with fill reference, ``chars_per_token`` (default 3.68).

    length_rule types: ``none``; ``cut`` with ``length`` (tokens, or ``target`` = seq_len);
    ``upsample_long`` with ``threshold`` (default 4096) and ``keep_short`` (default 0.1).
    """
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--strategy {path}: cannot read the mixture YAML ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("weights"), (dict, str)):
        raise UserError(f"--strategy {path}: needs 'weights': a mapping of domain -> weight, or a target mix "
                        f"name ({', '.join(MIXES)})")
    mix = "custom"
    if isinstance(spec["weights"], str):
        mix = spec["weights"]
        if mix not in MIXES:
            raise UserError(f"--strategy {path}: weights {mix!r} is not a target mix; known: {', '.join(MIXES)}")
        spec["weights"] = MIXES[mix]
    unknown = [d for d in spec["weights"] if d not in DOMAINS]
    if unknown:
        raise UserError(f"--strategy {path}: unknown domain {unknown[0]!r}; known: {', '.join(DOMAINS)}")
    _known_keys(spec, YAML_KEYS, f"--strategy {path}")
    rule = spec.get("length_rule") or {"type": "none"}
    if not isinstance(rule, dict):
        raise UserError(f"--strategy {path}: length_rule is {rule!r}; give a mapping such as {{type: cut, length: 4096}}")
    _known_keys(rule, RULE_KEYS, f"--strategy {path}: length_rule")
    kind = rule.get("type", "none")
    if kind not in RULES:
        raise UserError(f"--strategy {path}: length_rule type {kind!r} unknown; known: {', '.join(RULES)}")
    scope = spec.get("scope", "per_domain")
    if scope not in SCOPES:
        raise UserError(f"--strategy {path}: scope {scope!r} unknown; known: {', '.join(SCOPES)}")
    cut = None
    if kind == "cut":
        length = rule.get("length", "target")
        cut = seq_len if length == "target" else _number(length, f"--strategy {path}: length_rule.length",
                                                         "a whole number of tokens >= 1, or target", whole=True, low=1)
    keep = _number(rule.get("keep_short", KEEP_SHORT), f"--strategy {path}: length_rule.keep_short",
                   "a fraction in (0, 1]", low=0, low_open=True, high=1)
    short = _number(rule.get("threshold", SHORT), f"--strategy {path}: length_rule.threshold",
                    "a whole number of tokens >= 1", whole=True, low=1)
    fill, ratio = _fill(spec, kind, f"--strategy {path}")
    return Strategy(str(spec.get("name", Path(path).stem)), _normalise(spec["weights"], f"--strategy {path}"), kind,
                    cut=cut, scope=scope, short=int(short), keep_short=keep, mix=mix, fill=fill, chars_per_token=ratio)


def _fill(spec: dict, rule: str, what: str) -> tuple[str, float]:
    """A mixture YAML's ``fill`` and ``chars_per_token``, checked."""
    fill = spec.get("fill", "exact")
    if fill not in FILLS:
        raise UserError(f"{what}: fill {fill!r} unknown; known: {', '.join(FILLS)}")
    if fill == "reference" and rule == "cut":
        raise UserError(f"{what}: fill reference is the reference code's accounting, which never cuts documents; "
                        f"use length_rule upsample_long or none, or fill exact")
    if "chars_per_token" in spec and fill != "reference":
        raise UserError(f"{what}: chars_per_token applies to fill reference only")
    ratio = _number(spec.get("chars_per_token", CHARS_PER_TOKEN), f"{what}: chars_per_token",
                    "a number of characters per token > 0", low=0, low_open=True)
    return fill, ratio


YAML_KEYS = ("name", "weights", "length_rule", "scope", "fill", "chars_per_token")
RULE_KEYS = ("type", "length", "threshold", "keep_short")


def _known_keys(spec: dict, known: tuple[str, ...], what: str) -> None:
    extra = [k for k in spec if k not in known]
    if extra:
        raise UserError(f"{what}: unknown key {extra[0]!r}; known: {', '.join(known)}")


def _number(value, what: str, accepted: str, *, whole: bool = False, low: float | None = None,
            low_open: bool = False, high: float | None = None):
    """One number from a YAML field, or one line naming the field and what it accepts."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not whole or float(value).is_integer())
    ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
    if not ok:
        raise UserError(f"{what} is {value!r}; accepted: {accepted}")
    return int(value) if whole else float(value)


def resolve(name_or_path: str, seq_len: int, mix: str | None = None) -> Strategy:
    """A built-in strategy over ``mix`` (default: slimpajama), or a mixture YAML (its own weights)."""
    if name_or_path.endswith((".yaml", ".yml")) and Path(name_or_path).is_file():
        if mix is not None:
            raise UserError(f"--mix: {name_or_path} sets its own weights (a mapping, or a mix name in 'weights')")
        return from_yaml(Path(name_or_path), seq_len)
    return builtin(name_or_path, seq_len, mix or DEFAULT_MIX)  # an unknown name raises with the known ones


@dataclass
class Plan:
    """Ordered segments ``(doc, start, end)`` plus per-domain bookkeeping for the statistics."""

    segments: np.ndarray  # int64 [n, 3]
    weights: dict[str, float]
    epochs: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


class _Stream:
    """One domain's documents in seeded random order, epoch after epoch."""

    def __init__(self, docs: np.ndarray, rng: np.random.Generator):
        self.docs, self.rng, self.epoch, self.order, self.pos = docs, rng, 0, np.empty(0, np.int64), 0

    def next(self) -> int:
        if self.pos >= len(self.order):
            self.order, self.pos = self.rng.permutation(self.docs), 0
            self.epoch += 1
        self.pos += 1
        return int(self.order[self.pos - 1])


def plan(strategy: Strategy, domains: list[str] | np.ndarray, lengths: np.ndarray, budget: int, seed: int,
         chars: np.ndarray | None = None) -> Plan:
    """Choose segments of the corpus (``domains[i]``, ``lengths[i]`` tokens and, for fill reference,
    ``chars[i]`` characters per document) for ``budget`` tokens (fill reference: estimated tokens)."""
    domains = np.asarray(domains)
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    sizes = measure(strategy, lengths, chars)
    usable = (lengths > 0) & (sizes > 0)
    present = {d for d in strategy.weights if np.any((domains == d) & usable)}
    missing = sorted(set(strategy.weights) - present)
    if not present:
        found = sorted(set(np.unique(domains).tolist()))
        raise UserError(f"strategy {strategy.name}: the corpus has none of the domains it weights "
                        f"({', '.join(strategy.weights)}); its domains: {', '.join(found[:8]) or 'none'} "
                        f"(jsonl: set the domain field to one of the seven, or give a mixture YAML)")
    if missing:
        log.warning("strategy %s: the corpus has no documents for %s; their weight goes to the other domains",
                    strategy.name, ", ".join(missing))
    weights = _normalise({d: w for d, w in strategy.weights.items() if d in present}, strategy.name)
    streams = {d: _Stream(np.flatnonzero((domains == d) & usable), np.random.default_rng([seed, i]))
               for i, d in enumerate(sorted(weights))}
    if strategy.fill == "reference" and strategy.scope == "per_domain":
        taken, epochs = _one_stream(strategy, weights, domains, np.flatnonzero(usable), lengths, sizes, budget, rng)
    else:
        taken = _fill_streams(strategy, weights, streams, lengths, sizes, budget, rng)
        epochs = {d: s.epoch for d, s in streams.items()}
    if strategy.rule == "cut":
        taken = [(doc, s, min(s + strategy.cut, e)) for doc, _, e in taken for s in range(0, e, strategy.cut)]
    segments = np.array(taken, dtype=np.int64).reshape(-1, 3)
    segments = segments[rng.permutation(len(segments))]
    if strategy.rule == "cut":
        _separate(segments)
    return Plan(segments, weights, epochs, missing)


def measure(strategy: Strategy, lengths: np.ndarray, chars: np.ndarray | None) -> np.ndarray:
    """What the length rule and the budgets count per document: its tokens (fill exact), or its
    characters / chars_per_token (fill reference: the reference's ``len(text) / 3.68``)."""
    if strategy.fill == "exact":
        return np.asarray(lengths, dtype=np.int64)
    if chars is None:
        raise ValueError(f"strategy {strategy.name}: fill reference measures documents in characters; pass chars")
    return np.asarray(chars, dtype=np.float64) / strategy.chars_per_token


def _keeps(strategy: Strategy, size: float, rng: np.random.Generator) -> bool:
    """The length rule: a document shorter than the threshold is kept with probability keep_short
    (one draw, and only for such a document, as the reference's ``dlen < 4096 and random() > ratio``)."""
    if strategy.rule != "upsample_long" or size >= strategy.short:
        return True
    return rng.random() < strategy.keep_short


def _fill_streams(strategy: Strategy, weights: dict[str, float], streams: dict, lengths: np.ndarray,
                  sizes: np.ndarray, budget: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Each domain from its own stream (per domain), or domains drawn by weight (global: the natural
    stream of a corpus with that mix, the rule dropping documents regardless of domain). Fill exact:
    the last document is truncated to the budget; reference (global only): kept whole."""
    whole = strategy.fill == "reference"
    taken: list[tuple[int, int, int]] = []

    def take(doc: int, left: float) -> float:
        n = int(lengths[doc]) if whole else int(min(lengths[doc], left))
        taken.append((doc, 0, n))
        return left - (sizes[doc] if whole else n)

    if strategy.scope == "per_domain":
        budgets = _split_budget(weights, budget)
        for d in sorted(weights):
            left = budgets[d]
            while left > 0:
                doc = streams[d].next()
                if _keeps(strategy, sizes[doc], rng):
                    left = take(doc, left)
        return taken
    drawn = dict.fromkeys(weights, 0)   # global: draw domains by weight (deficit), filter regardless of domain
    left = budget
    while left > 0 if not whole else left >= 0:   # reference: stops once the count passes the budget
        d = min(weights, key=lambda k: (drawn[k] / weights[k], k))
        doc = streams[d].next()
        drawn[d] += sizes[doc]
        if _keeps(strategy, sizes[doc], rng):
            left = take(doc, left)
    return taken


def _one_stream(strategy: Strategy, weights: dict[str, float], domains: np.ndarray, usable: np.ndarray,
                lengths: np.ndarray, sizes: np.ndarray, budget: int,
                rng: np.random.Generator) -> tuple[list[tuple[int, int, int]], dict[str, int]]:
    """Fill reference, per domain: the reference's loop over one stream of the corpus. Each epoch is a
    seeded permutation of the usable documents; a document of a domain whose count has passed its
    budget (weight x total, in chars / chars_per_token) is skipped, a short one kept with probability
    keep_short, a kept one taken whole and counted; the stream ends once every domain's count has
    reached its budget. Returns the documents taken and, per domain, the epoch of its last one."""
    budgets = {d: w * budget for d, w in weights.items()}
    got = dict.fromkeys(weights, 0.0)
    epochs = dict.fromkeys(weights, 0)
    taken: list[tuple[int, int, int]] = []
    epoch = 0
    while True:
        epoch += 1
        for doc in rng.permutation(usable):
            d = str(domains[doc])
            if d not in got or got[d] > budgets[d]:
                continue
            if not _keeps(strategy, sizes[doc], rng):
                continue
            taken.append((int(doc), 0, int(lengths[doc])))
            got[d] += sizes[doc]
            epochs[d] = epoch
            if all(got[k] >= budgets[k] for k in got):
                return taken, epochs


def _separate(segments: np.ndarray) -> None:
    """Reorder in place so no two neighbours come from one document (where others remain).

    A shuffle alone can leave two pieces of one document side by side, which would put more
    than the cut length of it in a row: exactly what cutting is meant to prevent.
    """
    n = len(segments)
    for i in range(n - 1):
        if segments[i + 1, 0] != segments[i, 0]:
            continue
        later = np.flatnonzero(segments[i + 2:, 0] != segments[i, 0])
        if len(later):
            j = i + 2 + int(later[0])
            segments[[i + 1, j]] = segments[[j, i + 1]]


def _split_budget(weights: dict[str, float], budget: int) -> dict[str, int]:
    """Integer per-domain budgets that sum exactly to ``budget`` (largest remainders)."""
    raw = {d: w * budget for d, w in weights.items()}
    out = {d: int(v) for d, v in raw.items()}
    for d in sorted(raw, key=lambda k: (out[k] - raw[k], k))[: budget - sum(out.values())]:
        out[d] += 1
    return out
