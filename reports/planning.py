"""`harness plan`: from stored pilot runs, the haystack draws per cell and training seeds per
mixture an experiment needs to detect a given difference with 80% power, and what that costs.

The pilot is any set of run or ablation directories. With two or more models, each is compared
with the reference on the units both hold (the suites' own paired units, harness.reports.paired),
and the variance components of those differences plan its comparison; with one model, its own
scores' components, doubled, stand in for a difference's (harness.power). Costs come from the
pilot's own timings (its cells' seconds, its ablation's training stages) on this machine, and from
estimate.NAMED's rates for a named GPU: both labelled estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness import estimate, power
from harness.config import setting
from harness.errors import UserError
from harness.reports.compare import Collection, Run


@dataclass(frozen=True)
class PlanFlags:
    """`harness plan`'s options, declared once (harness.config): its flags and :func:`plan`'s keywords."""

    column: str = setting("needle mean", "The report column to plan for (a suite's paired units, e.g. 'needle mean', "
                          "'bookqa mean'; the names `harness compare` prints).")
    difference: float = setting(0.05, "The smallest difference worth detecting, in the column's units (the "
                                "needle's paper score: 0 to 1).")
    target: float = setting(power.TARGET, "The power each comparison should have.", flag="--power")
    alpha: float = setting(power.ALPHA, "The family-wise level; Holm's first step tests each comparison at "
                           "alpha / comparisons.")
    reference: str | None = setting(None, "The run the others are compared with (default: the first).")
    max_draws: int = setting(64, "At most this many haystack draws per cell.")
    max_seeds: int = setting(16, "At most this many training seeds per mixture.")


@dataclass(frozen=True)
class Row:
    comparison: str
    components: power.Components
    plan: power.Plan
    lengths: int
    depths: int
    pilot_draws: int
    minutes: dict          # where -> estimated minutes of the planned experiment
    notes: tuple = ()


def _units(run: Run, column: str) -> list[dict]:
    """Per seed: unit key -> (score, region) for ``column``."""
    from harness.reports.paired import units

    return [seed.get(column, {}) for seed in units(run)]


def _columns(run: Run) -> set[str]:
    from harness.reports.paired import units

    return {c for seed in units(run) for c, held in seed.items() if held}


def _seed_variance(seeds: list[dict], keys: list) -> float:
    means = [np.mean([s[k][0] for k in keys]) for s in seeds]
    return float(np.var(means, ddof=1)) if len(means) > 1 else 0.0


def components(col: Collection, column: str, reference: str) -> list[tuple[str, power.Components, list]]:
    """(comparison, its components, the units' regions) for each run against ``reference``, or the
    one run's own (doubled) when the pilot has one model."""
    runs = [r for r in col.runs if any(_units(r, column))]
    if not runs:
        known = sorted(set().union(*(_columns(r) for r in col.runs)))
        raise UserError(f"--column: no run holds {column!r}; columns with paired units: {', '.join(known) or 'none'}")
    if len(runs) == 1:
        seeds = _units(runs[0], column)
        keys = sorted(set.intersection(*(set(s) for s in seeds)))
        values = [np.mean([s[k][0] for s in seeds]) for k in keys]
        regions = [seeds[0][k][1] for k in keys]
        comp = power.components(values, regions, doubled=True, source=f"{runs[0].name} alone, doubled")
        comp = power.Components(**{**comp.__dict__, "seed": _seed_variance(seeds, keys), "seed_known": len(seeds) > 1})
        return [(f"two models like {runs[0].name}", comp, regions)]
    ref = next((r for r in runs if r.name == reference), None)
    if ref is None:
        raise UserError(f"--reference: {reference!r} holds no {column!r}; runs: {', '.join(r.name for r in runs)}")
    out = []
    for run in (r for r in runs if r is not ref):
        a, b = _units(ref, column), _units(run, column)
        keys = sorted(set.intersection(*(set(s) for s in a + b)))
        if not keys:
            continue
        d = [np.mean([s[k][0] for s in b]) - np.mean([s[k][0] for s in a]) for k in keys]
        regions = [a[0][k][1] for k in keys]
        comp = power.components(d, regions, source=f"{run.name} - {ref.name}")
        seed = max(_seed_variance(a, keys), _seed_variance(b, keys))
        comp = power.Components(**{**comp.__dict__, "seed": seed, "seed_known": len(a) > 1 or len(b) > 1})
        out.append((f"{run.name} vs {ref.name}", comp, regions))
    return out


def _timings(col: Collection, suite: str) -> dict:
    """What the pilot measured: seconds per evaluated cell, seconds per training run, the model's
    parameters, the cells' mean length and new tokens, tokens per training run."""
    cells = [r for run in col.runs for part in run.replicates() for r in part.results
             if r.get("suite") == suite and r.get("seconds") is not None]
    train = [s for s in col.stages if str(s.get("stage", "")).startswith("train:")]
    params = next((run.manifest.get("model", {}).get("parameters") for run in col.runs
                   if run.manifest.get("model", {}).get("parameters")), None)
    return {"cell_s": float(np.mean([r["seconds"] for r in cells])) if cells else None,
            "length": float(np.mean([r.get("length", 0) for r in cells])) if cells else 0.0,
            "new_tokens": float(np.mean([r.get("new_tokens", 0) for r in cells])) if cells else 0.0,
            "train_s": float(np.mean([s["seconds"] for s in train])) if train else None,
            "train_tokens": float(np.mean([s.get("tokens") or 0 for s in train])) if train else 0.0,
            "parameters": params}


def _minutes(t: dict, cells: int, models: int, trained: int, seeds: int, where: str) -> float | None:
    """The experiment's minutes: every model's cells, and each trained model's seeds' training."""
    if where == "here":
        if t["cell_s"] is None:
            return None
        train = trained * seeds * (t["train_s"] or 0.0)
        return ((models - trained + trained * seeds) * cells * t["cell_s"] + train) / 60
    rates = estimate.NAMED[where]
    if not t["parameters"]:
        return None
    cell_s = 2 * t["parameters"] * t["length"] / rates["prefill_flop_per_s"] + t["new_tokens"] * rates["decode_step_s"]
    train_s = 6 * t["parameters"] * t["train_tokens"] / rates["train_flop_per_s"] + rates["load_s"] + rates["save_s"]
    return ((models - trained + trained * seeds) * cells * cell_s + trained * seeds * train_s) / 60


def plan(col: Collection, column: str, reference: str | None, difference: float, *, target: float = power.TARGET,
         alpha: float = power.ALPHA, max_seeds: int = 16, max_draws: int = 64) -> list[Row]:
    """One row per comparison: the cheapest draws and seeds reaching ``target`` power against a
    ``difference`` at Holm's level over all comparisons, with its minutes."""
    if not difference > 0:
        raise UserError(f"--difference: {difference!r} must be above 0 (e.g. 0.05 on the needle's score)")
    if not 0 < target < 1 or not 0 < alpha < 1:
        raise UserError(f"--power {target} / --alpha {alpha}: both must be between 0 and 1")
    found = components(col, column, reference or col.runs[0].name)
    suite = column.split(" ")[0]
    t = _timings(col, suite)
    # The planned experiment evaluates the pilot's models again (two when it had one), training each
    # of an ablation's mixtures once per seed; plain runs are not trained here, so their seeds stay one.
    trained = sum(len(a["plan"]["mixtures"]) for a in col.ablations)
    models = max(len(col.runs), 2)
    rows = []
    for name, comp, regions in found:
        lengths = len({g[0] if isinstance(g, tuple) else g for g in regions})
        pilot_draws = max(1, len(set(regions)) // max(lengths, 1))
        depths = comp.depths
        cells = lambda k: lengths * depths * k   # noqa: E731
        cost = lambda k, r: _minutes(t, cells(k), models, trained, r, "here") or k * r   # noqa: E731
        p = power.plan(comp, difference, lengths, depths, comparisons=len(found), alpha=alpha, target=target,
                       cost=cost, max_seeds=max_seeds if comp.seed_known and trained else 1, max_draws=max_draws)
        minutes = {where: _minutes(t, cells(p.draws), models, trained, p.seeds, where) for where in ("here", *estimate.NAMED)}
        notes = []
        if not trained:
            notes.append("no training in the pilot (plain runs): seeds not planned")
        elif not comp.seed_known:
            notes.append("one seed in the pilot: the seeds' spread is unknown, planned with one (run the pilot "
                         "with --seeds 2 to plan seeds)")
        if comp.draw_upper:
            notes.append("one draw per length in the pilot: the draws' spread includes the lengths' (an upper bound)")
        if comp.cell == comp.draw == comp.seed == 0:
            notes.append("no spread in the pilot (every difference the same): the plan says nothing; pilot where "
                         "the models' scores vary")
        if not p.reached:
            notes.append(f"{target:.0%} power not reached within {max_draws} draws and {max_seeds} seeds")
        rows.append(Row(name, comp, p, lengths, depths, pilot_draws, minutes, tuple(notes)))
    return rows


def table(rows: list[Row], difference: float, target: float = power.TARGET):
    """The plan as a terminal table; its caption says what each estimate rests on."""
    from rich.table import Table

    wheres = [w for w in rows[0].minutes] if rows else []
    names = {"here": "min here (est.)", **{w: f"min {estimate.NAMED[w]['name']} (est.)" for w in estimate.NAMED}}
    t = Table(title=f"draws and seeds to detect a difference of {difference:g} with {target:.0%} power")
    for col in ("comparison", "draws/cell", "seeds/mixture", "power", "level", *(names[w] for w in wheres),
                "components (cell, draw, seed)", "pilot"):
        t.add_column(col, justify="left" if col in ("comparison", "pilot", "components (cell, draw, seed)") else "right")
    notes = []
    for r in rows:
        c = r.components
        t.add_row(r.comparison, str(r.plan.draws), str(r.plan.seeds), f"{r.plan.power:.2f}", f"{r.plan.level:.3g}",
                  *("–" if r.minutes[w] is None else f"{r.minutes[w]:,.1f}" for w in wheres),
                  f"{c.cell:.4f}, {c.draw:.4f}, {c.seed:.4f}",
                  f"{r.lengths} lengths x {r.depths} depths x {r.pilot_draws} draws")
        notes += [f"{r.comparison}: {n}" for n in r.notes]
    t.caption = "; ".join(["minutes: the pilot's own cell and training times here, estimate.NAMED's rates for a "
                           "named GPU (estimated)", *notes])
    return t
