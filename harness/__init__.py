"""longctx-harness: evaluation-first harness for long-context data engineering.

The package spans four directories mapped into this one namespace (see pyproject.toml):
``harness`` (CLI, models, backends, suite runner, store; ``harness.data``: corpora, mixtures,
packing), ``harness.tasks`` (suites), ``harness.trainer`` (continual pretraining) and
``harness.reports`` (figures and reports).
"""

__version__ = "0.1.0"
