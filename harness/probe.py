"""The prompt-mode probe (`harness run --probe-prompt-mode`): a small needle grid with the paper's
base prompt and with the model's chat template, the same cells both ways, and a paired test of the
difference. Instruct models can score very differently in the two modes (HELMET's issue 12: 54
against 21 on one task), so a run should say which it used and whether that choice matters.

Both modes run on the exact protocol (the one a chat template runs on), so the template is the only
difference. The paper evaluated base models with its base prompt (no chat template); its 80K
checkpoint is a base model too. The probe changes nothing else: the run that follows uses the mode
its flags say.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from harness import uncertainty

LENGTHS, DEPTHS, SAMPLES = "1k,2k,4k", "0,50,100", 2


@dataclass(frozen=True)
class ProbeResult:
    plain: float                  # mean score with the base prompt
    chat: float                   # with the chat template
    difference: uncertainty.Difference   # chat - plain, paired by cell, clustered by haystack region
    used: str                     # the mode the run uses: "chat" or "base prompt"

    @property
    def differs(self) -> bool:
        return self.difference.p < 1 - uncertainty.CONFIDENCE

    def sentence(self) -> str:
        d = self.difference
        verdict = (f"they differ beyond noise (p = {d.p:.3g})" if self.differs
                   else f"no difference beyond noise (p = {d.p:.3g})")
        return (f"prompt mode: base prompt {self.plain:.3f}, chat template {self.chat:.3f}; chat - base "
                f"{d.diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}] over {d.n} cells in {d.clusters} haystack "
                f"regions: {verdict}. This run uses the {self.used}.")


def prompt_mode(model_spec, request, console: Console, *, lengths: str = LENGTHS, depths: str = DEPTHS,
                samples: int = SAMPLES) -> ProbeResult:
    """Run the probe grid on ``model_spec`` with the request's model settings (backend, dtype, RoPE),
    once per prompt mode, in a temporary directory; ``request``'s own needle options say which mode
    the run uses."""
    from harness.evaluate import evaluate, prepare
    from harness.tasks.base import haystack_region

    needle = request.options_for("needle")
    scores = {}
    with tempfile.TemporaryDirectory(prefix="harness-probe-") as tmp:
        for chat in (False, True):
            # Both modes on the exact protocol, the one a chat template runs on: only the template differs.
            probe = replace(request, suites="needle", preset=None, lengths=lengths, depths=depths, wandb=None,
                            options={"needle": replace(needle, chat=chat, samples=samples, protocol="exact")})
            with console.status(f"prompt-mode probe: {'chat template' if chat else 'base prompt'}"):
                results, _ = evaluate(model_spec, prepare(probe), Path(tmp) / str(chat), Console(quiet=True))
            scores[chat] = {(r["key"], r.get("sample", 0)): (r["score"], haystack_region(r))
                            for r in results if r.get("suite") == "needle"}
    keys = sorted(set(scores[False]) & set(scores[True]))
    diff = uncertainty.paired([scores[False][k][0] for k in keys], [scores[True][k][0] for k in keys],
                              clusters=[scores[False][k][1] for k in keys])
    mean = lambda chat: sum(scores[chat][k][0] for k in keys) / len(keys)   # noqa: E731
    return ProbeResult(mean(False), mean(True), diff, mode(request))


def mode(request) -> str:
    """The prompt mode a request's needle runs in."""
    return "chat template" if request.options_for("needle").chat else "base prompt"
