"""Integration: the real SmolLM2-135M retrieves the paper's needle at about 1K tokens."""

import pytest

from harness import models
from harness.backends.hf import HFBackend
from harness.tasks import needle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    return models.load("smollm2-135m")


def test_smollm2_retrieves_the_needle_at_1k_depth_50(kjv, smollm2):
    cfg = needle.resolve_config(preset=None, lengths="1k", depths="50", chat=False, haystack=kjv, protocol="exact")
    suite = needle.NeedleSuite(cfg, kjv, smollm2.tokenizer)
    (cell,) = suite.cells()
    result = suite.evaluate(cell, HFBackend(smollm2))
    assert result["tokens"] == 1024
    # The reference score's ceiling ("a" twice in its 12 answer words); our word recall: all of them.
    assert result["score"] == pytest.approx(11 / 12), result["output"]
    assert result["scores"]["word_recall"] == 1.0 and result["scores"]["exact"] == 1.0


def test_smollm2_answers_under_the_reference_protocol(kjv, smollm2):
    """The reference stops at EOS; SmolLM2-Instruct's first token closes the turn the template's
    <|im_start|> opened, and the leading-EOS exception lets it answer (else: empty, score 0)."""
    cfg = needle.resolve_config(preset="paper", lengths="1000", depths="44", chat=False, haystack=kjv)
    suite = needle.NeedleSuite(cfg, kjv, smollm2.tokenizer)
    (cell,) = suite.cells()
    result = suite.evaluate(cell, HFBackend(smollm2))
    assert cfg.protocol == "reference" and result["tokens"] < 1000 - 150
    assert result["score"] == pytest.approx(11 / 12), result["output"]
    assert result["new_tokens"] < 50  # it stopped at the EOS that ends its answer
