"""Needle variants after RULER (Hsieh et al., 2024): passkey, multikey, multivalue, multiquery, distractor.

Each variant is a YAML spec in ``needle_variants/`` (what RULER task it follows and where ours
differs). A cell is still one (length, depth): depth places the *asked* needle; the other needles
go at depths drawn without replacement from RULER's 40 evenly spaced depths, seeded by the cell,
so a rerun builds the same prompts. Keys are RULER's adjective-noun pairs (from the wonderwords
word lists RULER draws on), values 7-digit numbers or UUIDs.

Scores follow RULER's ``string_match_all``: the fraction of the expected values that occur in the
output (case-insensitive), so a multivalue answer with two of four values scores 0.5.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from harness.errors import UserError
from harness.tasks import scoring

VARIANT_DIR = Path(__file__).with_name("needle_variants")
VARIANTS = tuple(sorted(p.stem for p in VARIANT_DIR.glob("*.yaml")))
# RULER's candidate needle depths: 0..100 percent in 40 evenly spaced, rounded steps.
RULER_DEPTHS = tuple(int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)))
PAPER_NEEDLE = "The best thing to do in {city} is {activity}."


def load(name: str) -> dict:
    if name not in VARIANTS:
        raise UserError(f"--variant: unknown {name!r}; known: {', '.join(VARIANTS)}")
    return yaml.safe_load((VARIANT_DIR / f"{name}.yaml").read_text())


def needle_count(spec: dict) -> int:
    if spec["name"] == "distractor":
        return 1 + int(spec["num_distractors"])
    return int(spec["num_keys"]) * int(spec["num_values"])


@lru_cache(maxsize=1)
def _word_lists() -> tuple[list[str], list[str]]:
    """RULER's key words come from wonderwords' adjective and noun lists (lm-eval[ruler] installs it)."""
    from importlib import resources

    try:
        assets = resources.files("wonderwords.assets")
    except ModuleNotFoundError:
        raise UserError("needle variants need the `wonderwords` word lists: pip install 'lm-eval[ruler]==0.4.13'") from None

    def read(name):
        return sorted({w.strip() for w in (assets / name).read_text().splitlines() if w.strip() and " " not in w})

    return read("adjectivelist.txt"), read("nounlist.txt")


def _random(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "words":
        adjectives, nouns = _word_lists()
        return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise UserError(f"needle variant: unknown key/value type {kind!r}; known: numbers, words, uuids")


@dataclass
class Sample:
    """One cell's needles (the asked one first), where each goes, and what the answer must hold."""

    needles: list[str]
    depths: list[float]
    fields: dict                   # the prompt template's fields besides {context}
    expected: list[str]            # every value the output must contain
    distractors: list[str] = field(default_factory=list)  # distractor activities (distractor variant)
    queries: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"needles": self.needles, "needle_depths": self.depths, "expected": self.expected,
                "queries": self.queries}


def make_sample(spec: dict, depth: float, seed: str) -> Sample:
    """The needles of one cell: deterministic in (variant, cell, run seed)."""
    rng = random.Random(seed)
    n = needle_count(spec)
    others = [d for d in RULER_DEPTHS if abs(d - depth) >= 100 / len(RULER_DEPTHS)]
    spread = sorted(rng.sample(others, n - 1)) if n > 1 else []
    if spec["name"] == "distractor":
        picks = rng.sample(spec["distractors"], int(spec["num_distractors"]))
        needles = [spec["needle"]] + [PAPER_NEEDLE.format(city=c, activity=a) for c, a in picks]
        return Sample(needles, [depth] + spread, {"question": spec["question"]}, [spec["answer"]],
                      distractors=[a for _, a in picks])
    type_v = spec["type_v"]
    keys = [_random(spec["type_k"], rng) for _ in range(int(spec["num_keys"]))]
    values = [[_random(type_v, rng) for _ in range(int(spec["num_values"]))] for _ in keys]
    asked = rng.sample(range(len(keys)), int(spec["num_queries"]))
    needles = [spec["needle"].format(type_v=type_v, key=keys[k], value=v) for k in asked for v in values[k]]
    needles += [spec["needle"].format(type_v=type_v, key=keys[k], value=v)
                for k in range(len(keys)) if k not in asked for v in values[k]]
    queries = [keys[k] for k in asked]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    return Sample(needles, [depth] + spread, {"query": query, "type_v": type_v},
                  [v for k in asked for v in values[k]], queries=queries)


def template(spec: dict) -> str:
    """The prompt template; singular wording when one value is asked (as RULER rewrites it)."""
    if spec["name"] == "distractor":
        return spec["prompt"]
    text = spec["template"]
    if int(spec["num_queries"]) * int(spec["num_values"]) == 1:
        text = text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")
        text = text.replace("{type_v}", spec["type_v"][:-1])
    return text


def score(spec: dict, output: str, sample: Sample) -> dict[str, float]:
    """RULER's string_match_all (distractor: the paper's score, plus whether a look-alike won)."""
    if spec["name"] == "distractor":
        true = scoring.word_recall(output, sample.expected[0])
        fooled = max((scoring.word_recall(output, a) for a in sample.distractors), default=0.0)
        return {"paper": scoring.reference_recall(output, spec["reference_answer"]), "word_recall": true,
                "rouge1_f": scoring.rouge1_f(output, sample.needles[0]), "distracted": float(fooled > true)}
    return {"string_match_all": scoring.string_match_all(output, sample.expected)}
