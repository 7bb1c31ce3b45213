"""Regenerate the offline regression tasks' data from the King James Bible (public domain).

    .venv/bin/python tasks/regression_tasks/make_data.py

Writes kjv_cloze.jsonl (multiple choice: the last word of a verse among four) and kjv_ppl.jsonl
(chapters for a rolling log-likelihood) next to this file, deterministically (seed 0). The files
are committed, so running the default regression suite needs no network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from harness.tasks import haystack

HERE = Path(__file__).parent


def main() -> None:
    text = haystack.load("kjv").text
    rng = np.random.default_rng(0)
    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+", text)]
    usable = [s for s in sentences if 10 <= len(s.split()) <= 30 and re.fullmatch(r".*\s([A-Za-z]{3,})[.?!]", s)]
    picks = rng.choice(len(usable), size=400, replace=False)
    last = lambda s: re.fullmatch(r".*\s([A-Za-z]{3,})[.?!]", s).group(1)  # noqa: E731
    rows = []
    for i in picks[:300]:
        s = usable[i]
        answer = last(s)
        others = []
        while len(others) < 3:
            w = last(usable[int(rng.integers(len(usable)))])
            if w.lower() != answer.lower() and w not in others:
                others.append(w)
        label = int(rng.integers(4))
        choices = others[:label] + [answer] + others[label:]
        rows.append({"context": s[: s.rfind(" " + answer)], "choices": choices, "label": label})
    (HERE / "kjv_cloze.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    chapters = [c.strip() for c in text.split("\n") if 150 <= len(c.split()) <= 400]
    chosen = sorted(rng.choice(len(chapters), size=60, replace=False))
    (HERE / "kjv_ppl.jsonl").write_text("".join(json.dumps({"text": chapters[i]}) + "\n" for i in chosen))
    print(f"{len(rows)} cloze items, {len(chosen)} chapters")


if __name__ == "__main__":
    main()
