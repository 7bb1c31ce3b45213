"""The prompt-mode probe: the same needle cells with the base prompt and the chat template, paired."""

from __future__ import annotations

from rich.console import Console

from harness import probe
from harness.evaluate import request_from_flags


def test_the_probe_pairs_both_modes_cell_by_cell_and_names_the_runs_mode(tiny_model_dir):
    request = request_from_flags(protocol="exact", dtype="fp32", max_new_tokens=4)
    result = probe.prompt_mode(str(tiny_model_dir), request, Console(quiet=True), lengths="256,512",
                               depths="0,100", samples=2)
    assert result.difference.n == 2 * 2 * 2 and result.difference.clusters == 2 * 2
    assert result.used == "base prompt"
    assert "This run uses the base prompt." in result.sentence()
    assert probe.mode(request_from_flags(chat=True)) == "chat template"   # the run's own mode: --chat's
