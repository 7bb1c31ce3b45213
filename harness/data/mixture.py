"""The paper's five data-mixture strategies (Fu et al. 2024, section 3) and user mixtures.

A strategy is three choices: target domain weights, a length rule, and the scope the rule acts
in. Applied to the token lengths of a corpus's documents, it yields a *plan*: an ordered list of
segments (document, start token, end token) holding exactly the token budget.

| name          | weights                        | length rule                              | scope      |
|---------------|--------------------------------|------------------------------------------|------------|
| cut_4k        | target shares                  | cut every document into 4K-token pieces  | per domain |
| cut_target    | target shares                  | cut into seq_len pieces                  | per domain |
| per_source    | target shares                  | keep a < 4K document with p = 0.1        | per domain |
| global        | target shares, before the rule | keep a < 4K document with p = 0.1        | global     |
| upsample_abg  | ArXiv, Book, GitHub at 0.6     | keep a < 4K document with p = 0.1        | per domain |

The target shares are a named mix (MIXES: ``slimpajama``, the reference code's and the default;
``llama``, the paper text's) or a mixture YAML's own weights.

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
STRATEGIES = ("cut_4k", "cut_target", "per_source", "global", "upsample_abg")
RULES = ("cut", "upsample_long", "none")
SCOPES = ("per_domain", "global")


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

    def to_dict(self) -> dict:
        return asdict(self)


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
    if name == "upsample_abg":
        shares = {d: (ABG_WEIGHT if d in ("arxiv", "book", "github") else w) for d, w in shares.items()}
    rules = {"cut_4k": dict(rule="cut", cut=SHORT), "cut_target": dict(rule="cut", cut=seq_len),
             "per_source": dict(rule="upsample_long"), "global": dict(rule="upsample_long", scope="global"),
             "upsample_abg": dict(rule="upsample_long")}
    if name not in rules:
        raise UserError(f"--strategy: unknown {name!r}; known: {', '.join(STRATEGIES)}, or a mixture YAML file")
    return Strategy(name, _normalise(shares, name), mix=mix, **rules[name])


def from_yaml(path: Path, seq_len: int) -> Strategy:
    """A user mixture: ``name``, ``weights: {domain: w}``, ``length_rule: {type, ...}``, ``scope``.

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
    return Strategy(str(spec.get("name", Path(path).stem)), _normalise(spec["weights"], f"--strategy {path}"), kind,
                    cut=cut, scope=scope, short=int(short), keep_short=keep, mix=mix)


YAML_KEYS = ("name", "weights", "length_rule", "scope")
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


def plan(strategy: Strategy, domains: list[str] | np.ndarray, lengths: np.ndarray, budget: int, seed: int) -> Plan:
    """Choose segments of the corpus (``domains[i]``, ``lengths[i]`` per document) for ``budget`` tokens."""
    domains = np.asarray(domains)
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    present = {d for d in strategy.weights if np.any((domains == d) & (lengths > 0))}
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
    streams = {d: _Stream(np.flatnonzero((domains == d) & (lengths > 0)), np.random.default_rng([seed, i]))
               for i, d in enumerate(sorted(weights))}

    def keep(doc: int) -> bool:
        if strategy.rule != "upsample_long" or lengths[doc] >= strategy.short:
            return True
        return rng.random() < strategy.keep_short

    taken: list[tuple[int, int, int]] = []
    if strategy.scope == "per_domain":
        budgets = _split_budget(weights, budget)
        for d in sorted(weights):
            left = budgets[d]
            while left > 0:
                doc = streams[d].next()
                if keep(doc):
                    n = int(min(lengths[doc], left))
                    taken.append((doc, 0, n))
                    left -= n
    else:  # global: draw domains by weight (token deficit), filter regardless of domain
        drawn = dict.fromkeys(weights, 0)
        left = budget
        while left > 0:
            d = min(weights, key=lambda k: (drawn[k] / weights[k], k))
            doc = streams[d].next()
            drawn[d] += int(lengths[doc])
            if keep(doc):
                n = int(min(lengths[doc], left))
                taken.append((doc, 0, n))
                left -= n
    if strategy.rule == "cut":
        taken = [(doc, s, min(s + strategy.cut, e)) for doc, _, e in taken for s in range(0, e, strategy.cut)]
    segments = np.array(taken, dtype=np.int64).reshape(-1, 3)
    segments = segments[rng.permutation(len(segments))]
    if strategy.rule == "cut":
        _separate(segments)
    return Plan(segments, weights, {d: s.epoch for d, s in streams.items()}, missing)


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
