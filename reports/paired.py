"""Paired comparisons of runs against a reference run: which differences are detectable.

For every report column two runs share, the difference of means on the units both hold (needle
cells clustered by length, BookQA questions, loss documents; harness.uncertainty.paired), or,
for a column without per-unit scores (lm-eval's tasks), a normal test on the two standard
errors; and for every suite with an effective length (``Suite.effective_cells``), the difference
of the two runs' effective lengths by RULER's rule and by NoLiMa's, in tokens, from the same
resampled haystack regions (harness.effective_length.paired). Holm's adjustment runs over every
comparison of one call, the effective lengths' included, so the verdicts hold together: a run
compared on more numbers gets no more chances to look better.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from harness import uncertainty
from harness.reports.compare import Collection, Run

log = logging.getLogger("harness")


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
    unit: str = ""       # "tokens": an effective length's difference; "": a score's

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def texts(self) -> tuple[str, str]:
        """(difference, 95% interval) as tables show them: ``+4K`` and ``[+0, +8K]`` for a length in
        tokens, ``+0.052`` and ``[+0.010, +0.094]`` for a score."""
        if self.unit == "tokens":
            from harness.effective_length import text

            show = lambda v: text(v, signed=True)  # noqa: E731
        else:
            show = lambda v: f"{v:+.3f}"  # noqa: E731
        return show(self.diff), ("–" if self.low is None else f"[{show(self.low)}, {show(self.high)}]")


def units(run: Run) -> list[dict[str, dict]]:
    """Per seed of the run (one for a plain run): report column -> unit key -> (score, cluster)."""
    from harness import tasks

    out = []
    for part in run.replicates():
        columns = {}
        for name in tasks.SUITES:
            columns.update(tasks.get(name).paired_units(part.results, part.manifest))
        out.append(columns)
    return out


def _shared(runs: list[list[dict]], column: str) -> list[str]:
    """The units of ``column`` every seed of every run holds."""
    keys = [set(units.get(column, {})) for seeds in runs for units in seeds]
    return sorted(set.intersection(*keys)) if keys else []


def _rows(run: Run) -> dict:
    from harness import tasks

    return {row.column: row for name in tasks.SUITES for row in tasks.get(name).summary(run.results, run.manifest)
            if row.column and row.compared}


def _length_cells(run: Run) -> dict[str, list]:
    """Per suite label ("needle"): the cells its effective length is computed over (every seed's)."""
    from harness import tasks

    out = {}
    for name in tasks.SUITES:
        out.update(tasks.get(name).effective_cells(run.results, run.manifest))
    return out


def _effective(ref: Run, run: Run) -> list[Comparison]:
    """``run`` against ``ref`` in effective length, by each rule, on the suites both have."""
    from harness import effective_length as effective

    a, b = _length_cells(ref), _length_cells(run)
    out = []
    for label in [label for label in a if label in b]:
        for rule in effective.RULES:
            d = effective.paired(a[label], b[label], rule)
            if d is not None:
                out.append(Comparison(rule.column(label), run.name, ref.name, d.diff, d.low, d.high, d.p, d.n,
                                      d.method, unit="tokens"))
    return out


def _lower_is_better(column: str) -> bool:
    from harness import tasks

    return any(tasks.get(name).lower_is_better(column) for name in tasks.SUITES)


def compare(col: Collection, reference: str) -> list[Comparison]:
    """Every run against ``reference`` on every column both hold, Holm-adjusted, with verdicts."""
    ref = next(r for r in col.runs if r.name == reference)
    ref_units, ref_rows = units(ref), _rows(ref)
    found = []
    for run in (r for r in col.runs if r.name != reference):
        held, rows = units(run), _rows(run)
        for column in [c for c in ref_rows if c in rows]:
            shared = _shared([ref_units, held], column)
            if shared:
                a = [[seed[column][k][0] for k in shared] for seed in ref_units]
                b = [[seed[column][k][0] for k in shared] for seed in held]
                d = uncertainty.paired(a, b, clusters=[ref_units[0][column][k][1] for k in shared])
                seeds = f" + {d.replicates} seeds (t)" if d.replicates > 1 else ""
                found.append(Comparison(column, run.name, reference, d.diff, d.low, d.high, d.p, d.n,
                                        f"paired bootstrap, {d.clusters} clusters{seeds}"))
                continue
            if ref_units[0].get(column) and held[0].get(column):   # both paired by item, none in common
                log.warning("%s: %s and %s share no items (their prompts differ: another tokenizer, grid or "
                            "haystack; --length-tokenizer gives models identical prompts): compared unpaired",
                            column, run.name, reference)
            if ref_rows[column].stderr and rows[column].stderr:
                from scipy.stats import norm

                diff = rows[column].value - ref_rows[column].value
                se = math.hypot(ref_rows[column].stderr, rows[column].stderr)
                p = float(2 * norm.sf(abs(diff) / se))
                found.append(Comparison(column, run.name, reference, diff, diff - 1.96 * se, diff + 1.96 * se, p,
                                        min(rows[column].n or 0, ref_rows[column].n or 0), "normal, two stderrs"))
        found += _effective(ref, run)
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
            parts.append(f"{run}: no detectable difference ({len(mine)} column{'s' if len(mine) != 1 else ''})")
        else:
            parts.append(f"{run}: " + "; ".join(x for x in (f"better on {', '.join(better)}" if better else "",
                                                            f"worse on {', '.join(worse)}" if worse else "") if x))
    n = len(comparisons)
    return (f"Against {reference} (95%, Holm-adjusted over {n} comparison{'s' if n != 1 else ''}): "
            + " · ".join(parts) + ".")


def _cell_scores(run: Run, suite: str) -> list[dict]:
    """Per seed: (length, depth, draw) -> score of each stored cell of ``suite``."""
    return [{(r["length"], r["depth"], r.get("sample", 0)): r["score"] for r in part.results if r.get("suite") == suite}
            for part in run.replicates()]


def _quiet(a: list[dict], b: list[dict], keys: list[tuple], by_draw: bool) -> bool | None:
    """Whether ``run - reference`` on ``keys`` is within noise: its 95% interval (Student's t over
    the units' differences, clustered by draw or else by depth, seeds crossed) holds zero. None
    when one unit leaves no interval."""
    ref = {k: sum(seed[k] for seed in a) / len(a) for k in keys}
    diffs = [(seed[k] - ref[k], k[2] if by_draw else k[1], i) for i, seed in enumerate(b) for k in keys]
    est = uncertainty.estimate([d for d, _, _ in diffs], clusters=[c for _, c, _ in diffs],
                               replicates=[i for _, _, i in diffs])
    return None if est.low is None else est.low <= 0 <= est.high


def within_noise(reference: Run, run: Run, suite: str = "needle") -> tuple[set, set]:
    """(lengths, (length, depth) cells) where ``run`` minus ``reference`` is within noise, for the
    difference heatmaps. A cell with one draw and one seed has no interval of its own: it follows
    its length's verdict."""
    a, b = _cell_scores(reference, suite), _cell_scores(run, suite)
    keys = set.intersection(*(set(s) for s in a + b)) if a and b else set()
    by_draw = len({k[2] for k in keys}) > 1
    lengths, cells = set(), set()
    for length in {k[0] for k in keys}:
        if _quiet(a, b, [k for k in keys if k[0] == length], by_draw) is not False:
            lengths.add(length)
    for length, depth in {k[:2] for k in keys}:
        verdict = _quiet(a, b, [k for k in keys if k[:2] == (length, depth)], True)
        if verdict or (verdict is None and length in lengths):
            cells.add((length, depth))
    return lengths, cells
