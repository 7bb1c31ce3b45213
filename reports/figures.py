"""Every figure a run's stored results support, drawn from the store alone (no model is loaded)."""

from __future__ import annotations

from pathlib import Path

from harness.errors import UserError


def draw(run_dir: Path, results: list[dict], manifest: dict, out: Path | None, metric: str | None = None,
         palette: str | None = None) -> list[Path]:
    """Every figure the stored results support, in registry order (PNG first of each pair);
    ``metric``: heatmaps of that stored score instead, for the suites that stored it."""
    from harness import tasks
    from harness.reports import heatmap, loss_curves

    heatmapped = [n for n in tasks.SUITES if "heatmap" in tasks.get(n).figures]
    if metric is not None:
        stored = {n: heatmap.metrics(results, n) for n in heatmapped}
        heatmapped = [n for n in heatmapped if metric in stored[n]]
        if not heatmapped:
            known = sorted({m for ms in stored.values() for m in ms})
            raise UserError(f"--metric: no heatmap suite in {run_dir} stored {metric!r} for every cell; "
                            f"stored: {', '.join(known) or 'none'}")
    writers = {"heatmap": lambda name: heatmap.write(run_dir, results, manifest, out, name, metric=metric,
                                                     palette_name=palette) if name in heatmapped else [],
               "loss_curves": lambda name: [] if metric else loss_curves.write(run_dir, results, manifest, out)}
    return [path for name in tasks.SUITES for kind in tasks.get(name).figures for path in writers[kind](name)]
