"""Needle heatmaps: x = context length, y = needle depth, colour = score on a fixed 0-1 scale.

Drawn from a run's store alone. The colour scale is the paper's red-to-green, fixed at [0, 1] so
heatmaps of different runs compare by eye; a dashed line marks the model's max positions.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from harness import rundir, tasks  # noqa: E402
from harness.tasks.base import replicates, variant_of  # noqa: E402
from harness.values import format_length, format_rope  # noqa: E402

# The seed repo's palette: red (fail) -> yellow -> green (pass).
CMAP = LinearSegmentedColormap.from_list("needle", ["#F0496E", "#EBB839", "#0CD79F"])


def grid(results: list[dict], suite: str = "needle") -> pd.DataFrame:
    """depth x length table of mean scores (rows sorted by depth, columns by length)."""
    rows = [r for r in results if r.get("suite") == suite]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    return df.pivot_table(index="depth", columns="length", values="score", aggfunc="mean").sort_index().sort_index(axis=1)


def max_position_x(lengths: list[int], max_positions: int | None) -> float | None:
    """x of the boundary after the last column that fits in ``max_positions`` (None if all fit)."""
    if not max_positions or not lengths or max_positions >= lengths[-1]:
        return None
    inside = sum(1 for v in lengths if v <= max_positions)
    return inside - 0.5


def draw(table: pd.DataFrame, title: str, max_positions: int | None, ax=None, *, cmap=CMAP, vmin: float = 0.0,
         vmax: float = 1.0, colorbar: str | None = "score", mean_text: str | None = None, noise=None):
    """Draw one heatmap on ``ax`` (created if None); returns the figure, or the image when
    ``colorbar`` is None (the caller draws one shared colour bar for several heatmaps).

    ``noise``, for a difference heatmap: (lengths, (length, depth) cells) whose difference is
    within noise (harness.reports.paired.within_noise); those cells are hatched and those lengths'
    labels end in " ="."""
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
    x = max_position_x(lengths, max_positions)
    if x is not None:
        ax.axvline(x, color="white", linestyle="--", linewidth=2)
        ax.axvline(x, color="black", linestyle=(0, (4, 4)), linewidth=1)
    if colorbar is None:
        return im
    cbar = (fig or ax.figure).colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label(colorbar)
    return fig or ax.figure


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


def write(run_dir: Path, results: list[dict], manifest: dict, out_dir: Path | None = None,
          suite: str = "needle") -> list[Path]:
    """Write ``{suite}_heatmap.png`` and ``.pdf`` for one run; returns the paths."""
    table = grid(results, suite)
    if table.empty:
        return []
    model = manifest.get("model", {})
    max_pos = model.get("effective_max_positions")
    variant = variant_of(manifest, suite)
    what = f"{suite} ({variant})" if variant else suite
    label = tasks.get(suite).score_label(manifest)
    title = (f"{model.get('name', run_dir.name)} · {what}\n{rope_label(model)} · max positions {max_pos} (dashed)"
             f"\n{label}")
    fig = draw(table, title, max_pos, colorbar=label.split(" · ")[0], mean_text=mean_text(results, manifest, suite))
    fig.tight_layout()
    out_dir = Path(out_dir or run_dir)
    paths = []
    for ext in ("png", "pdf"):
        dest = out_dir / f"{suite}_heatmap.{ext}"
        with rundir.atomic_path(dest) as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
        paths.append(dest)
    plt.close(fig)
    return paths
