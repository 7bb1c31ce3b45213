"""Resolve, convert and load causal LMs (the module harness/models.py, moved into a package to be split)."""

from harness.models.load import *  # noqa: F401,F403
