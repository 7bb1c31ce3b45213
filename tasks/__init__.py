"""Evaluation suites, one registry entry each (see tasks/base.py for the interface).

A suite expands its config into cells (pure data with stable keys) and evaluates them with a
backend, returning the result lines that go into the store. The suite runner, ``harness run``'s
flags, its summary table and the comparison report loop over :data:`SUITES`; adding a suite is
one module plus one line here (README: "Adding a suite").

Mapped to ``harness.tasks`` (see pyproject.toml).
"""

from __future__ import annotations

import importlib

# name -> "module:class"; imported on first use (lm-eval, behind the regression suite, is slow to import).
SUITES = {
    "needle": "harness.tasks.needle:NeedleSuite",
    "bookqa": "harness.tasks.bookqa:BookQASuite",
    "regression": "harness.tasks.regression:RegressionSuite",
    "loss": "harness.tasks.loss:LossSuite",
}


def get(name: str):
    """The suite class registered as ``name``."""
    module, _, cls = SUITES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def options(name: str, **values):
    """``name``'s Options from keyword values (unknown keys are an error, missing ones default)."""
    return get(name).Options(**values)
