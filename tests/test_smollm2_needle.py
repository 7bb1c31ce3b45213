"""Integration: the real SmolLM2-135M retrieves the paper's needle at about 1K tokens."""

import pytest

from harness import models
from harness.backends.hf import HFBackend
from harness.tasks import needle

pytestmark = pytest.mark.integration


def test_smollm2_retrieves_the_needle_at_1k_depth_50(kjv):
    loaded = models.load("smollm2-135m")
    cfg = needle.resolve_config(preset=None, lengths="1k", depths="50", chat=False, haystack=kjv)
    suite = needle.NeedleSuite(cfg, kjv, loaded.tokenizer)
    (cell,) = suite.cells()
    result = suite.evaluate(cell, HFBackend(loaded))
    assert result["tokens"] == 1024
    assert result["score"] == 1.0, result["output"]
    assert result["scores"]["exact"] == 1.0
