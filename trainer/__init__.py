"""Data engineering and continual pretraining (corpus readers, mixtures, packing, training loop).

Mapped to ``harness.trainer`` (see pyproject.toml): a top-level ``trainer`` package would clash
with Coqui's widely installed distribution of that name.
"""
