"""Paired comparisons of runs against a reference run: which differences are detectable.

For every report column two runs share, the difference of means on the units both hold (needle
cells clustered by length, BookQA questions, loss documents; harness.uncertainty.paired), or,
for a column without per-unit scores (lm-eval's tasks), a normal test on the two standard
errors. Holm's adjustment runs over every comparison of one call, so the verdicts hold together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import uncertainty
from harness.reports.compare import Collection, Run


@dataclass(frozen=True)
class Comparison:
    column: str
    run: str
    reference: str
    diff: float          # run - reference
    low: float | None
    high: float | None
    p: float
    n: int
    method: str
    p_adjusted: float = 1.0
    verdict: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _units(run: Run) -> dict[str, dict]:
    from harness import tasks

    out = {}
    for name in tasks.SUITES:
        out.update(tasks.get(name).paired_units(run.results, run.manifest))
    return out


def _rows(run: Run) -> dict:
    from harness import tasks

    return {row.column: row for name in tasks.SUITES for row in tasks.get(name).summary(run.results, run.manifest)
            if row.column}


def _lower_is_better(column: str) -> bool:
    from harness import tasks

    return any(tasks.get(name).lower_is_better(column) for name in tasks.SUITES)


def compare(col: Collection, reference: str) -> list[Comparison]:
    """Every run against ``reference`` on every column both hold, Holm-adjusted, with verdicts."""
    ref = next(r for r in col.runs if r.name == reference)
    ref_units, ref_rows = _units(ref), _rows(ref)
    found = []
    for run in (r for r in col.runs if r.name != reference):
        units, rows = _units(run), _rows(run)
        for column in [c for c in ref_rows if c in rows]:
            shared = sorted(set(ref_units.get(column, {})) & set(units.get(column, {})))
            if shared:
                a = [ref_units[column][k][0] for k in shared]
                b = [units[column][k][0] for k in shared]
                d = uncertainty.paired(a, b, clusters=[ref_units[column][k][1] for k in shared])
                found.append(Comparison(column, run.name, reference, d.diff, d.low, d.high, d.p, d.n,
                                        f"paired bootstrap, {d.clusters} clusters"))
            elif ref_rows[column].stderr and rows[column].stderr:
                from scipy.stats import norm

                diff = rows[column].value - ref_rows[column].value
                se = math.hypot(ref_rows[column].stderr, rows[column].stderr)
                p = float(2 * norm.sf(abs(diff) / se))
                found.append(Comparison(column, run.name, reference, diff, diff - 1.96 * se, diff + 1.96 * se, p,
                                        min(rows[column].n or 0, ref_rows[column].n or 0), "normal, two stderrs"))
    adjusted = uncertainty.holm([c.p for c in found])
    out = []
    for c, p_adj in zip(found, adjusted):
        better = (c.diff < 0) if _lower_is_better(c.column) else (c.diff > 0)
        verdict = ("no detectable difference" if p_adj >= 1 - uncertainty.CONFIDENCE
                   else "better" if better else "worse")
        out.append(Comparison(**{**c.to_dict(), "p_adjusted": p_adj, "verdict": verdict}))
    return out


def summary_sentence(comparisons: list[Comparison], reference: str) -> str:
    """One computed sentence: which runs differ from the reference where, and which do not."""
    runs = list(dict.fromkeys(c.run for c in comparisons))
    if not runs:
        return f"No column is shared with {reference}: nothing to compare."
    parts = []
    for run in runs:
        mine = [c for c in comparisons if c.run == run]
        better = [c.column for c in mine if c.verdict == "better"]
        worse = [c.column for c in mine if c.verdict == "worse"]
        if not better and not worse:
            parts.append(f"{run}: no detectable difference ({len(mine)} columns)")
        else:
            parts.append(f"{run}: " + "; ".join(x for x in (f"better on {', '.join(better)}" if better else "",
                                                            f"worse on {', '.join(worse)}" if worse else "") if x))
    return f"Against {reference} (95%, Holm-adjusted over {len(comparisons)} comparisons): " + " · ".join(parts) + "."
