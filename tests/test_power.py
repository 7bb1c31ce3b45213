"""harness.power: the planned draws and seeds reach the stated power when the harness's own paired
test (harness.uncertainty.paired) is run on data drawn from a known model."""

from __future__ import annotations

import numpy as np
import pytest

from harness import power, uncertainty


def _simulate(comp: power.Components, delta: float, lengths: int, depths: int, draws: int, seeds: int,
              rng) -> tuple[np.ndarray, np.ndarray, list]:
    """Two models' (seeds x cells) scores whose paired difference follows the module's model."""
    regions = [(l, k) for l in range(lengths) for k in range(draws) for _ in range(depths)]
    u = {g: rng.normal(0, np.sqrt(comp.draw)) for g in set(regions)}
    d = delta + np.array([u[g] for g in regions]) + rng.normal(0, np.sqrt(comp.cell), len(regions))
    a = rng.normal(0, np.sqrt(comp.seed), (seeds, 1)) + np.zeros((seeds, len(regions)))
    b = rng.normal(0, np.sqrt(comp.seed), (seeds, 1)) + d
    return a, b, regions


@pytest.mark.parametrize("comp, delta, seeds_allowed", [
    (power.Components(cell=0.06, draw=0.004, seed=0.0, depths=5, source="known"), 0.05, 1),
    (power.Components(cell=0.06, draw=0.004, seed=0.0004, depths=5, source="known"), 0.05, 8),
])
def test_the_planned_design_reaches_the_stated_power_in_simulation(comp, delta, seeds_allowed):
    lengths, depths, comparisons = 5, 5, 2
    p = power.plan(comp, delta, lengths, depths, comparisons=comparisons, max_seeds=seeds_allowed,
                   cost=lambda k, r: k * r * 10 + r * 100)
    assert p.reached and p.power >= power.TARGET
    rng = np.random.default_rng(0)
    trials = 400
    rejected = 0
    for i in range(trials):
        a, b, regions = _simulate(comp, delta, lengths, depths, p.draws, p.seeds, rng)
        res = uncertainty.paired(a, b, regions, resamples=2000, seed=i)
        rejected += res.p < p.level
    rate = rejected / trials
    # 400 trials: the rate's own standard error is about 0.02.
    assert abs(rate - p.power) < 0.07, (rate, p)


def test_fewer_draws_than_planned_fall_short():
    comp = power.Components(cell=0.06, draw=0.004, seed=0.0, depths=5, source="known")
    p = power.plan(comp, 0.05, 5, 5, comparisons=2)
    assert p.draws > 1
    se, dof = comp.se(5, 5, p.draws - 1, 1)
    assert power.power(0.05, se, dof, p.level) < power.TARGET


def test_components_recover_a_known_model():
    rng = np.random.default_rng(1)
    truth = power.Components(cell=0.05, draw=0.01, seed=0.0, depths=6, source="known")
    a, b, regions = _simulate(truth, 0.0, 40, 6, 10, 1, rng)
    got = power.components((b - a)[0], regions)
    assert got.depths == 6
    assert got.cell == pytest.approx(0.05, rel=0.1)
    assert got.draw == pytest.approx(0.01, rel=0.3)


def test_one_run_is_doubled_and_one_seed_is_unknown():
    scores = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    regions = [(1, 0)] * 3 + [(2, 0)] * 3
    one = power.components(scores, regions, doubled=True)
    plain = power.components(scores, regions)
    assert one.cell == pytest.approx(2 * plain.cell) and not one.seed_known
