"""Evaluation suites. Each suite expands its config into cells (pure data with stable keys) and
evaluates one cell with a backend, returning the result line that goes into the store.

Mapped to ``harness.tasks`` (see pyproject.toml).
"""

SUITES = ("needle", "bookqa", "regression", "loss")
