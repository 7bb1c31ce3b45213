"""Continual pretraining: the training loop, its engines (torch, DeepSpeed), the fused LM-head loss
and checkpoints. Its data comes from ``harness.data`` (packed shards).

Mapped to ``harness.trainer`` (see pyproject.toml): a top-level ``trainer`` package would clash
with Coqui's widely installed distribution of that name.
"""
