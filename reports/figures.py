"""The figures a suite's results support, by kind: a suite names its kinds (``Suite.figures`` for a
run's own plots, ``Suite.report_pages`` for the comparison report's pages) and the registries here
draw them, so neither the command line nor the report names a kind. A suite that reuses a kind adds
nothing here; a new kind is one entry in :data:`RUN_FIGURES` or :data:`REPORT_PAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.errors import UserError


@dataclass(frozen=True)
class RunFigure:
    """A kind of per-run figure, named in ``Suite.figures``."""

    # (run_dir, results, manifest, out, suite, metric, palette) -> the files written (PNG first of each pair)
    write: Callable[..., list[Path]]
    # (results, suite) -> the stored scores it can draw instead of the main one (--metric); None: none
    metrics: Callable[[list[dict], str], list[str]] | None = None


@dataclass(frozen=True)
class ReportPage:
    """A kind of comparison-report page, named in ``Suite.report_pages``."""

    title: str                                  # "{Suite}": the suite's name, capitalised
    draw: Callable                              # (collection, suite, reference) -> a figure, or None
    images: Callable[[int], int] | None = None  # raster images it holds for n models (the PDF check)
    note: str | None = None                     # words the page must carry (the PDF check)


def _heatmap(run_dir, results, manifest, out, suite, metric, palette) -> list[Path]:
    from harness.reports import heatmap

    return heatmap.write(run_dir, results, manifest, out, suite, metric=metric, palette_name=palette)


def _heatmap_metrics(results: list[dict], suite: str) -> list[str]:
    from harness.reports import heatmap

    return heatmap.metrics(results, suite)


def _loss_curves(run_dir, results, manifest, out, suite, metric, palette) -> list[Path]:
    from harness.reports import loss_curves

    return loss_curves.write(run_dir, results, manifest, out)


RUN_FIGURES = {
    "heatmap": RunFigure(_heatmap, _heatmap_metrics),   # length x depth of the stored score
    "loss_curves": RunFigure(_loss_curves),             # loss by position bucket, per domain
}


def _heatmaps_page(col, suite: str, reference: str):
    from harness.reports import compare

    return compare.figure_heatmaps(col, suite)


def _differences_page(col, suite: str, reference: str):
    from harness.reports import compare, paired

    ref = next(r for r in col.runs if r.name == reference)
    noise = {r.name: paired.within_noise(ref, r, suite) for r in col.runs if r.name != reference}
    return compare.figure_differences(col, reference, suite, noise)


def _loss_page(col, suite: str, reference: str):
    from harness.reports import compare

    return compare.figure_loss(col)


REPORT_PAGES = {
    "heatmaps": ReportPage("{Suite} heatmaps", _heatmaps_page, images=lambda models: models),
    "differences": ReportPage("{Suite} difference heatmaps", _differences_page, images=lambda models: models - 1,
                              note="within noise"),
    "loss_curves": ReportPage("Loss by length", _loss_page),
}


def suite_pages() -> list[tuple[str, ReportPage, str]]:
    """(suite, page, title) of every report page a registered suite names, in registry order."""
    from harness import tasks

    return [(name, REPORT_PAGES[kind], REPORT_PAGES[kind].title.format(Suite=name.capitalize()))
            for name in tasks.SUITES for kind in tasks.get(name).report_pages]


def draw(run_dir: Path, results: list[dict], manifest: dict, out: Path | None, metric: str | None = None,
         palette: str | None = None) -> list[Path]:
    """Every figure the stored results support, in registry order (PNG first of each pair);
    ``metric``: instead, the figures of that stored score, for the suites that stored it."""
    from harness import tasks

    drawn = [(name, RUN_FIGURES[kind]) for name in tasks.SUITES for kind in tasks.get(name).figures]
    if metric is not None:
        stored = {(name, kind): kind.metrics(results, name) for name, kind in drawn if kind.metrics}
        drawn = [(name, kind) for name, kind in drawn if metric in stored.get((name, kind), ())]
        if not drawn:
            known = sorted({m for ms in stored.values() for m in ms})
            raise UserError(f"--metric: no heatmap suite in {run_dir} stored {metric!r} for every cell; "
                            f"stored: {', '.join(known) or 'none'}")
    return [path for name, kind in drawn for path in kind.write(run_dir, results, manifest, out, name, metric, palette)]
