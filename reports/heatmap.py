"""Needle heatmaps: x = context length, y = needle depth, colour = score on a fixed 0-1 scale.

Drawn from a run's store alone, on a scale fixed at [0, 1] so heatmaps of different runs compare
by eye; a dashed line marks the model's max positions when a length goes past them. The default
palette is cividis (dark blue -> yellow): its lightness rises steadily with the score, so it reads
the same to the colour-blind and in greyscale print. The paper's red-yellow-green
(``--palette paper``) puts 0.0 and 0.25 at hues that many readers cannot tell apart. Small grids
carry their values in the cells.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from harness import rundir, tasks  # noqa: E402
from harness.errors import UserError  # noqa: E402
from harness.tasks.base import replicates, variant_of  # noqa: E402
from harness.values import format_length, format_rope  # noqa: E402

# The paper's palette (its reference code's): red (fail) -> yellow -> green (pass).
PAPER_CMAP = LinearSegmentedColormap.from_list("needle", ["#F0496E", "#EBB839", "#0CD79F"])
PALETTES = {"cividis": matplotlib.colormaps["cividis"], "paper": PAPER_CMAP}
DEFAULT_PALETTE = "cividis"
ANNOTATE_CELLS = 120   # grids of at most this many cells carry their values


def palette(name: str | None):
    """A palette by name (None: the default), or one line listing the known ones."""
    name = name or DEFAULT_PALETTE
    if name not in PALETTES:
        raise UserError(f"--palette: unknown {name!r}; known: {', '.join(PALETTES)}")
    return PALETTES[name]


def grid(results: list[dict], suite: str = "needle", metric: str | None = None) -> pd.DataFrame:
    """depth x length table of mean scores (rows sorted by depth, columns by length); ``metric``:
    another stored score of each cell (``scores[metric]``, e.g. exact) instead of the main one."""
    rows = [r for r in results if r.get("suite") == suite]
    if not rows:
        return pd.DataFrame()
    if metric is not None:
        rows = [{**r, "score": r["scores"][metric]} for r in rows if metric in (r.get("scores") or {})]
    df = pd.DataFrame(rows)
    return df.pivot_table(index="depth", columns="length", values="score", aggfunc="mean").sort_index().sort_index(axis=1)


def metrics(results: list[dict], suite: str = "needle") -> list[str]:
    """The scores every cell of ``suite`` stored, for ``--metric``."""
    rows = [r for r in results if r.get("suite") == suite]
    if not rows:
        return []
    common = set.intersection(*(set(r.get("scores") or {}) for r in rows))
    return [k for k in (rows[0].get("scores") or {}) if k in common]


def check_metric(results: list[dict], metric: str | None, suite: str = "needle") -> None:
    known = metrics(results, suite)
    if metric is not None and known and metric not in known:
        raise UserError(f"--metric: {metric!r} is not stored for every {suite} cell; stored: {', '.join(known)}")


def max_position_x(lengths: list[int], max_positions: int | None) -> float | None:
    """x of the boundary after the last column that fits in ``max_positions`` (None if all fit)."""
    if not max_positions or not lengths or max_positions >= lengths[-1]:
        return None
    inside = sum(1 for v in lengths if v <= max_positions)
    return inside - 0.5


def draw(table: pd.DataFrame, title: str, max_positions: int | None, ax=None, *, cmap=None, vmin: float = 0.0,
         vmax: float = 1.0, colorbar: str | None = "score", mean_text: str | None = None, noise=None,
         annotate: bool | None = None):
    """Draw one heatmap on ``ax`` (created if None); returns the figure, or the image when
    ``colorbar`` is None (the caller draws one shared colour bar for several heatmaps).

    ``noise``, for a difference heatmap: (lengths, (length, depth) cells) whose difference is
    within noise (harness.reports.paired.within_noise); those cells are hatched and those lengths'
    labels end in " =". ``annotate``: write each cell's value in it (default: grids of at most
    ANNOTATE_CELLS cells)."""
    cmap = palette(None) if cmap is None else cmap
    lengths = [int(c) for c in table.columns]
    depths = [float(d) for d in table.index]
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(lengths) + 3), max(3.5, 0.35 * len(depths) + 2)))
    values = table.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                   origin="upper", interpolation="nearest")
    quiet_lengths, quiet_cells = noise or (set(), set())
    ax.set_xticks(range(len(lengths)), [format_length(v) + (" =" if v in quiet_lengths else "") for v in lengths],
                  rotation=45 if len(lengths) > 8 else 0, ha="right" if len(lengths) > 8 else "center")
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("Depth of the answer")
    mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    if mean_text is None:
        mean_text = f"mean {mean:+.3f}" if vmin < 0 else f"mean {mean:.3f}"
    ax.set_title(f"{title}\n{mean_text}", fontsize=10)
    for i, depth in enumerate(depths):
        for j, length in enumerate(lengths):
            if (length, depth) in quiet_cells and np.isfinite(values[i, j]):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.45",
                                       linewidth=0))
    if annotate if annotate is not None else values.size <= ANNOTATE_CELLS:
        _annotate(ax, values, im, signed=vmin < 0)
    x = max_position_x(lengths, max_positions)
    if x is not None:
        ax.axvline(x, color="white", linestyle="--", linewidth=2)
        ax.axvline(x, color="black", linestyle=(0, (4, 4)), linewidth=1)
    if colorbar is None:
        return im
    cbar = (fig or ax.figure).colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label(colorbar)
    return fig or ax.figure


def _annotate(ax, values: np.ndarray, image, signed: bool) -> None:
    """Each cell's value, black on light cells and white on dark ones (by the colour's luminance)."""
    size = 8 if values.shape[1] <= 8 else 6
    for (i, j), v in np.ndenumerate(values):
        if not np.isfinite(v):
            continue
        r, g, b, _ = image.cmap(image.norm(v))
        light = 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5
        ax.text(j, i, f"{v:+.2f}" if signed else f"{v:.2f}", ha="center", va="center", fontsize=size,
                color="black" if light else "white")


def mean_text(results: list[dict], manifest: dict, suite: str = "needle") -> str:
    """A heatmap's mean with its 95% interval: the suite's overall summary row (pooled seeds
    included), and how that row clusters."""
    overall = tasks.get(suite).summary(results, manifest)[0]
    rows = [r for r in results if r.get("suite") == suite]
    draws = len({r.get("sample", 0) for r in rows})
    seeds = len(set(replicates(rows)))
    extra = [f"{draws} draws per cell"] if draws > 1 else []
    extra += [f"{seeds} training seeds pooled"] if seeds > 1 else []
    return f"mean {overall.text()} (95% interval, {overall.how}{'; ' + '; '.join(extra) if extra else ''})"


def rope_label(model: dict) -> str:
    """The RoPE line of a manifest's model record (harness.values.format_rope)."""
    return format_rope(model.get("rope_parameters"))


def caption(manifest: dict, suite: str, results: list[dict]) -> str:
    """What the grid was made of: haystack and draws per cell (the score label names the protocol)."""
    config = manifest.get("config", {}).get("suites", {}).get(suite, {})
    rows = [r for r in results if r.get("suite") == suite]
    parts = []
    hay = config.get("haystack")
    if isinstance(hay, dict) and hay.get("name"):
        parts.append(f"haystack {hay['name']}")
    if rows:
        draws = len({r.get("sample", 0) for r in rows})
        parts.append(f"{draws} draw{'s' if draws > 1 else ''} per cell")
    return " · ".join(parts)


def title(manifest: dict, results: list[dict], suite: str, metric: str | None, fallback: str) -> str:
    """Model and suite; RoPE and max positions (and whether a dashed line marks them); what the score
    is; haystack and draws per cell: everything a reader of the figure alone needs."""
    model = manifest.get("model", {})
    max_pos = model.get("effective_max_positions")
    variant = variant_of(manifest, suite)
    lengths = sorted({int(r["length"]) for r in results if r.get("suite") == suite})
    beyond = "dashed line" if max_position_x(lengths, max_pos) is not None else "every length within"
    lines = [f"{model.get('name', fallback)} · {f'{suite} ({variant})' if variant else suite}",
             f"{rope_label(model)} · max positions {max_pos} ({beyond})",
             metric or tasks.get(suite).score_label(manifest), caption(manifest, suite, results)]
    return "\n".join(textwrap.fill(line, 80) for line in lines if line)


def write(run_dir: Path, results: list[dict], manifest: dict, out_dir: Path | None = None,
          suite: str = "needle", *, metric: str | None = None, palette_name: str | None = None) -> list[Path]:
    """Write ``{suite}_heatmap.png`` and ``.pdf`` for one run (``{suite}_{metric}_heatmap.*`` for
    another stored score); returns the paths."""
    check_metric(results, metric, suite)
    table = grid(results, suite, metric)
    if table.empty:
        return []
    label = metric or tasks.get(suite).score_label(manifest)
    mean = textwrap.fill(mean_text(results, manifest, suite), 80) if metric is None else None
    fig = draw(table, title(manifest, results, suite, metric, run_dir.name),
               manifest.get("model", {}).get("effective_max_positions"), cmap=palette(palette_name),
               colorbar=label.split(" · ")[0], mean_text=mean)
    fig.tight_layout()
    out_dir = Path(out_dir or run_dir)
    paths = []
    stem = f"{suite}_{metric}_heatmap" if metric else f"{suite}_heatmap"
    for ext in ("png", "pdf"):
        dest = out_dir / f"{stem}.{ext}"
        with rundir.atomic_path(dest) as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
        paths.append(dest)
    plt.close(fig)
    return paths
