"""longctx-harness: evaluation-first harness for long-context data engineering.

The package spans four directories mapped into this one namespace (see pyproject.toml):
``harness`` (CLI, models, backends, suite runner, store; ``harness.data``: corpora, mixtures,
packing), ``harness.tasks`` (suites), ``harness.trainer`` (continual pretraining) and
``harness.reports`` (figures and reports).

Python API: ``harness.run(model, suites=..., ...)`` returns :class:`harness.Results` (README: Python API).
"""

__version__ = "0.1.0"

# The Python API (harness/api.py), imported on first use: `import harness` stays light for the CLI.
__all__ = ["run", "Results", "UserError"]


def __getattr__(name: str):
    if name in ("run", "Results"):
        from harness import api

        return getattr(api, name)
    if name == "UserError":
        from harness.errors import UserError

        return UserError
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
