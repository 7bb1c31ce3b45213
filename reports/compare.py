"""Several runs side by side: the comparison table and the figures of the report, from stores alone.

A source is a run directory (``harness run``) or an ablation directory (``harness ablate``), whose
models, mixture statistics and stage log are read from ``ablate.json`` and ``stages.jsonl``.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.errors import UserError  # noqa: E402
from harness.reports import heatmap  # noqa: E402
from harness import rundir, store  # noqa: E402
from harness.store import RunStore  # noqa: E402

PAGE = (11.0, 8.5)   # inches: every report page the same size (US letter, landscape)
DIFF_CMAP = "RdBu"  # red: worse than the reference, blue: better


@dataclass
class Run:
    name: str
    path: Path
    manifest: dict
    results: list[dict]
    parts: list["Run"] = field(default_factory=list)   # a pooled model's seeds (harness ablate --seeds)
    oom: list[dict] = field(default_factory=list)      # cells that did not fit in memory: missing, not scored

    @classmethod
    def pooled(cls, name: str, parts: list["Run"]) -> "Run":
        """One model from several training seeds: every result tagged with its seed's index as
        ``replicate`` (harness.uncertainty counts the seeds' spread in every interval)."""
        if len(parts) == 1:
            return cls(name, parts[0].path, parts[0].manifest, parts[0].results)
        results = [{**r, "replicate": i} for i, part in enumerate(parts) for r in part.results]
        return cls(name, parts[0].path, parts[0].manifest, results, parts, [r for p in parts for r in p.oom])

    @property
    def label(self) -> str:
        """The name a figure or table shows: with its seed count when pooled."""
        return f"{self.name} ({len(self.parts)} seeds)" if self.parts else self.name

    def replicates(self) -> list["Run"]:
        """Each seed's run (the run itself when it is not pooled)."""
        return self.parts or [self]

    @property
    def suites(self) -> set[str]:
        configured = set(self.manifest.get("config", {}).get("suites", {}))
        return configured | {r["suite"] for r in self.results}


@dataclass
class Collection:
    runs: list[Run]
    mixtures: dict[str, dict] = field(default_factory=dict)   # label -> data build stats.json
    stages: list[dict] = field(default_factory=list)          # from stages.jsonl, labelled by ablation
    ablations: list[dict] = field(default_factory=list)       # ablate.json records

    def missing(self) -> dict[str, list[str]]:
        """run -> suites other runs have and it lacks."""
        every = set().union(*(r.suites for r in self.runs)) if self.runs else set()
        return {r.name: sorted(every - r.suites) for r in self.runs if every - r.suites}

    def labels(self) -> dict[str, str]:
        """run name -> what a table column or figure calls it: its label, plus the model and the
        settings that tell the runs apart (model, RoPE, dtype, the suites' protocols) where they differ."""
        from harness import tasks
        from harness.values import format_rope

        def settings(run: Run) -> dict[str, str]:
            model = run.manifest.get("model", {})
            suites = run.manifest.get("config", {}).get("suites", {})
            protocols = [tasks.get(name).protocol(suites.get(name) or {}) for name in tasks.SUITES if name in suites]
            return {"model": str(model.get("name", "")),
                    "rope": format_rope(model.get("rope_parameters")).removeprefix("RoPE ") if model.get("rope_parameters") else "",
                    "dtype": str(model.get("dtype", "")), "protocol": "/".join(p for p in protocols if p)}

        every = {run.name: settings(run) for run in self.runs}
        differ = [k for k in ("model", "rope", "dtype", "protocol") if len({v[k] for v in every.values()}) > 1]
        out = {}
        for run in self.runs:
            extra = [every[run.name][k] for k in differ if every[run.name][k] and every[run.name][k] not in run.label]
            out[run.name] = run.label + (f" · {', '.join(extra)}" if extra else "")
        return out

    def warnings(self) -> list[str]:
        """What makes the runs less comparable than the table looks: grids, haystacks, prompts or
        protocols that differ between runs, runs that have not finished their grid, and cells that
        did not fit in memory (missing from a run's numbers)."""
        from harness import tasks

        out = []
        for suite in sorted(set().union(*(r.suites for r in self.runs))):
            configs = {r.label: r.manifest.get("config", {}).get("suites", {}).get(suite) or {} for r in self.runs
                       if suite in r.suites}
            for key in tasks.get(suite).compared_settings:
                seen = {json.dumps(_setting(c, key), sort_keys=True, default=str) for c in configs.values()}
                if len(seen) > 1:
                    out.append(f"{suite}: runs differ in {key} (the table compares only the cells they share)")
            for run in self.runs:
                expected = tasks.get(suite).expected_cells(configs.get(run.label, {})) if suite in run.suites else None
                got = sum(1 for r in run.results if r.get("suite") == suite)
                missed = sum(1 for r in run.oom if r.get("suite") == suite)
                if expected and got + missed < expected * len(run.replicates()):
                    out.append(f"{run.label}: {suite} has {got} of {expected * len(run.replicates())} cells (unfinished)")
                if missed:
                    out.append(f"{run.label}: {store.oom_summary(run.oom, suite)}")
        return out


def _setting(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _run(path: Path, name: str) -> Run:
    store = RunStore(path)
    return Run(name, path, store.read_manifest(), list(store.results()), oom=store.oom())


def collect(paths: list[Path]) -> Collection:
    """Read every run (and ablation) named; names are unique in the report."""
    col = Collection(runs=[])
    for path in map(Path, paths):
        record = path / store.ABLATION
        if record.is_file():
            ablation = rundir.read_json(record, "report")
            col.ablations.append(ablation)
            for label in ablation["plan"]["models"]:
                # A mixture trained with several seeds is evaluated once per seed and pooled here.
                dirs = [path / "eval" / rundir.member(d, record) for d in ablation["plan"].get("evals", {}).get(label, [label])]
                parts = [_run(d, d.name) for d in dirs if (d / "manifest.json").is_file()]
                if parts:
                    col.runs.append(Run.pooled(label, parts))
            for m in ablation["plan"]["mixtures"]:
                stats = Path(m["data"]) / "stats.json"
                if stats.is_file():
                    col.mixtures[m["label"]] = rundir.read_json(stats, "report")
            col.stages += list(store.stages(path).records())
        elif (path / "manifest.json").is_file():
            run = _run(path, path.resolve().name)
            if not run.results and run.oom:
                raise UserError(f"{str(path)!r} holds no scores: "
                                f"{'; '.join(store.oom_summary(run.oom, s) for s in store.oom_lengths(run.oom))}; leave it out")
            if not run.results:
                raise UserError(f"{str(path)!r} holds no results yet: finish it (rerun its command) or leave it out")
            col.runs.append(run)
        else:
            raise UserError(f"{str(path)!r} is neither a run directory (manifest.json) nor an ablation (ablate.json)")
    names = [r.name for r in col.runs]
    for r in col.runs:  # the same directory name twice (runs/a/model, runs/b/model): add the parent
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    if not col.runs:
        raise UserError("report: none of the directories holds an evaluated model yet")
    return col


# -- the table ------------------------------------------------------------------------------------

def is_length(column: str) -> bool:
    """Whether a report column holds a length in tokens (an effective length, or its difference)."""
    return "effective length" in column


def tables(col: Collection) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values, half-widths of their 95% intervals): one row per model, one column per number a
    researcher compares (paper Tables 3-5), from every suite's summary rows that name a report
    column, in registry order. An effective length's interval is not symmetric: its cell in the
    second frame holds the interval itself, (low, high) in tokens."""
    from harness import tasks

    values, widths = {}, {}
    for run in col.runs:
        rows = [row for name in tasks.SUITES for row in tasks.get(name).summary(run.results, run.manifest)
                if row.column]
        values[run.name] = {row.column: row.value for row in rows}
        widths[run.name] = {row.column: (row.low, row.high) if is_length(row.column) and row.low is not None
                            else row.half_width for row in rows}
    return pd.DataFrame.from_dict(values, orient="index"), pd.DataFrame.from_dict(widths, orient="index")


def table(col: Collection) -> pd.DataFrame:
    """The values of :func:`tables`."""
    return tables(col)[0]


def _fmt(column: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if is_length(column):  # a length in tokens, not a score; a difference of two is signed
        from harness.effective_length import text

        return text(value, signed=column.startswith(DELTA))
    if "perplexity" in column and value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3f}"


MARKS = {"better": " ▲", "worse": " ▼", "no detectable difference": " ="}
DELTA = "Δ "   # a column of differences from the reference (the effective lengths': harness.reports.document)


def cell_texts(df: pd.DataFrame, errors: pd.DataFrame | None, verdicts: dict | None) -> list[list[str]]:
    """metric x model cells: value ± half-width, and a mark against the reference (▲ ▼ =)."""
    rows = []
    for metric in df.columns:
        cells = []
        for run in df.index:
            value = df.at[run, metric]
            text = _fmt(metric, value)
            hw = None if errors is None or metric not in errors.columns else errors.at[run, metric]
            if isinstance(hw, tuple) and text != "–":   # an interval of lengths: [low, high]
                text += f" [{_fmt(metric, hw[0])}, {_fmt(metric, hw[1])}]"
            elif hw is not None and not (isinstance(hw, float) and math.isnan(hw)) and text != "–":
                text += f" ± {_fmt(metric, hw)}"
            text += MARKS.get((verdicts or {}).get((run, metric), ""), "")
            cells.append(text)
        rows.append([metric] + cells)
    return rows


def figure_table(df: pd.DataFrame, title: str, errors: pd.DataFrame | None = None, verdicts: dict | None = None,
                 sentence: str = "", labels: dict | None = None):
    """The comparison table as a page: models as columns (they are few), metrics as rows; ``labels``
    names the columns (run name -> shown name)."""
    t = df.T
    caption = ("\n".join(textwrap.wrap(sentence, 170)) + ("\n" if sentence else "")
               + "± : 95% interval · ▲ better, ▼ worse, = no detectable difference against the reference "
               "(paired, Holm-adjusted; README: Uncertainty)\n"
               "effective length: [low, high] = its 95% bootstrap interval, in tokens; Δ = paired difference from "
               "the reference (docs/statistics.md)\n"
               "needle and bookqa: paper = the reference code's score (needle: share of the answer's words, "
               "its heatmap; bookqa: recall of the first answer's words)\nneedle (variant): RULER string match "
               "(distractor: paper); loss: nats/token, mean over domains; regression: lm-eval")
    above = 0.5 + 0.14 * (caption.count("\n") + 1)   # inches for the title and the caption (8 pt lines)
    height = max(PAGE[1], 0.24 * (len(t) + 1) + 0.3 + above)   # one page size (a longer table grows it)
    fig, ax = plt.subplots(figsize=(PAGE[0], height))
    ax.axis("off")
    cells = cell_texts(df, errors, verdicts)
    first = 0.34
    widths = [first] + [(1 - first) / max(len(t.columns), 1)] * len(t.columns)
    headers = ["metric"] + [(labels or {}).get(c, c) for c in t.columns]
    widget = ax.table(cellText=cells, colLabels=headers, colWidths=widths, loc="upper center", cellLoc="right")
    widget.auto_set_font_size(False)
    widget.set_fontsize(8)
    widget.scale(1, 1.25)
    for (row, col), cell in widget.get_celld().items():
        if col == 0:
            cell.set_text_props(ha="left")
            cell._loc = "left"
        if row == 0:
            cell.set_text_props(fontweight="bold")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.subplots_adjust(top=1 - above / height, bottom=0.02)
    ax.set_title(caption, fontsize=8)
    return fig


# -- needle heatmaps --------------------------------------------------------------------------------

def _grid_shape(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _grids(col: Collection, suite: str) -> list[tuple[Run, pd.DataFrame]]:
    grids = [(run, heatmap.grid(run.results, suite)) for run in col.runs]
    return [(run, g) for run, g in grids if not g.empty]


def _colorbar(fig, image, axes, label: str) -> None:
    bar = fig.colorbar(image, ax=axes, fraction=0.03, pad=0.02)
    bar.set_label(label)
    bar.solids.set_rasterized(False)  # vector: the page's only images are the heatmaps


def _score_labels(grids: list[tuple[Run, pd.DataFrame]], suite: str) -> str:
    """What the heatmaps' scores are (and under which protocol), once per distinct label."""
    from harness import tasks

    labels = dict.fromkeys(tasks.get(suite).score_label(run.manifest) for run, _ in grids)
    return "; ".join(labels)


def figure_heatmaps(col: Collection, suite: str = "needle"):
    """Every model's heatmap on one colour scale (0-1) with a single colour bar."""
    grids = _grids(col, suite)
    if not grids:
        return None
    rows, cols = _grid_shape(len(grids))
    fig, axes = plt.subplots(rows, cols, figsize=PAGE, squeeze=False, layout="constrained")
    image = None
    for ax, (run, grid) in zip(axes.flat, grids):
        model = run.manifest.get("model", {})
        image = heatmap.draw(grid, f"{run.label}\n{heatmap.rope_label(model)}", model.get("effective_max_positions"),
                             ax=ax, colorbar=None, mean_text=textwrap.fill(heatmap.mean_text(run.results, run.manifest, suite), 44))
    for ax in list(axes.flat)[len(grids):]:
        ax.axis("off")
    _colorbar(fig, image, axes, "score (one scale for every model)")
    fig.suptitle(f"{suite.capitalize()} heatmaps\n{_score_labels(grids, suite)}", fontsize=12, fontweight="bold")
    return fig


def figure_differences(col: Collection, reference: str, suite: str = "needle", noise: dict | None = None):
    """Each model's heatmap minus the reference's, on the cells both ran (-1..1, blue is better);
    ``noise``: run name -> (lengths, cells) within noise (harness.reports.paired.within_noise), hatched."""
    grids = dict((run.name, (run, g)) for run, g in _grids(col, suite))
    if reference not in grids or len(grids) < 2:
        return None
    ref = grids[reference][1]
    names = col.labels()
    others = [(name, run, g) for name, (run, g) in grids.items() if name != reference]
    rows, cols = _grid_shape(len(others))
    fig, axes = plt.subplots(rows, cols, figsize=PAGE, squeeze=False, layout="constrained")
    image = None
    for ax, (name, run, g) in zip(axes.flat, others):
        diff = g.sub(ref).dropna(how="all").dropna(axis=1, how="all")
        image = heatmap.draw(diff, f"{names[run.name]} − {reference}",
                             run.manifest.get("model", {}).get("effective_max_positions"), ax=ax, cmap=DIFF_CMAP,
                             vmin=-1.0, vmax=1.0, colorbar=None, noise=(noise or {}).get(name))
    for ax in list(axes.flat)[len(others):]:
        ax.axis("off")
    _colorbar(fig, image, axes, f"score difference against {reference}")
    fig.suptitle(f"{suite.capitalize()} difference heatmaps (against {reference})\n"
                 f"{_score_labels(list(grids.values()), suite)}", fontsize=12, fontweight="bold")
    if noise is not None:
        fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))  # room below for the note
        fig.text(0.5, 0.01, "hatched cells, lengths marked =: difference within noise (95% t interval over draws "
                 "and seeds; a cell with one draw follows its length)", ha="center", va="bottom", fontsize=8)
    return fig


# -- loss by length, mixtures, provenance ---------------------------------------------------------

def figure_loss(col: Collection):
    """Loss by position bucket, one panel per domain, one line per model (paper Table 5 / Fig. 4)."""
    from harness.tasks import loss

    per_run = {run.name: loss.summary(run.results) for run in col.runs}
    domains = sorted({d for s in per_run.values() for d in s})
    if not domains:
        return None
    cols = min(4, len(domains))
    rows = math.ceil(len(domains) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=PAGE, squeeze=False, sharey=False)
    for ax, domain in zip(axes.flat, domains):
        for name, summary in per_run.items():
            buckets = summary.get(domain, {})
            if buckets:
                ax.plot(range(len(buckets)), [v["loss"] for v in buckets.values()], marker="o", ms=3, label=name)
                ax.set_xticks(range(len(buckets)), list(buckets), rotation=30, fontsize=7)
        ax.set_title(domain, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(domains):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("nats/token")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.suptitle("Loss by length (held-out documents, per domain)", fontsize=12, fontweight="bold")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return fig


def figure_mixtures(col: Collection):
    """Domain shares per mixture (stacked bars) and the token share by document length."""
    if not col.mixtures:
        return None
    labels = list(col.mixtures)
    domains = sorted({d for s in col.mixtures.values() for d in s["domains"]})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=PAGE)
    bottom = np.zeros(len(labels))
    for d in domains:
        shares = np.array([col.mixtures[m]["domains"].get(d, {}).get("share", 0.0) for m in labels])
        ax1.bar(labels, shares, bottom=bottom, label=d)
        bottom += shares
    for i, m in enumerate(labels):
        ax1.text(i, 1.01, f">4K {col.mixtures[m]['long_4k_share']:.0%}", ha="center", fontsize=8)
    ax1.set_ylim(0, 1.1)
    ax1.set_ylabel("share of mixture tokens")
    ax1.set_title("Domain composition (label: tokens in >4K documents)", fontsize=10)
    ax1.legend(fontsize=7, loc="lower right")
    ax1.tick_params(axis="x", rotation=20)
    bins = None
    for m in labels:
        stats = col.mixtures[m]
        bins = stats["length_bins"]
        hist = np.sum([np.array(d["length_hist_tokens"], dtype=float) for d in stats["domains"].values()], axis=0)
        ax2.plot(range(len(hist)), hist / max(hist.sum(), 1), marker="o", ms=3, label=m)
    ax2.set_xticks(range(len(bins) - 1)[::2], [f"{b // 1024}K" if b >= 1024 else str(b) for b in bins[:-1]][::2])
    ax2.set_xlabel("document length (tokens, log2 bins)")
    ax2.set_ylabel("share of mixture tokens")
    ax2.set_title("Length histogram", fontsize=10)
    ax2.legend(fontsize=8)
    fig.suptitle("Mixture composition", fontsize=12, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def provenance(col: Collection) -> list[tuple[str, list[list[str]]]]:
    """(section, rows) for the provenance page and the HTML: config, versions, hashes, machine, stages."""
    sections = []
    runs = []
    for run, part in ((run, part) for run in col.runs for part in run.replicates()):
        m, model = part.manifest, part.manifest.get("model", {})
        machine = m.get("machine", {})
        name = run.name if part is run else f"{run.name} ({part.name})"
        runs.append([name, str(model.get("name", "?")), f"{model.get('parameters', 0) / 1e6:.1f}M",
                     heatmap.rope_label(model), str(model.get("dtype", "?")), m.get("config_hash", "?"),
                     str(m.get("git_revision") or "–"), f"{machine.get('processor', '?')} x{machine.get('cpu_count', '?')}"
                     + (f" {', '.join(machine['gpus'])}" if machine.get("gpus") else ""), str(m.get("created", "?"))])
    sections.append(("runs: model, parameters, RoPE, dtype, config hash, git revision, machine, created", runs))
    versions = {}
    for run in col.runs:
        for k, v in run.manifest.get("versions", {}).items():
            versions.setdefault(k, set()).add(str(v))
    sections.append(("package versions", [[k, ", ".join(sorted(v))] for k, v in sorted(versions.items())]))
    for ab in col.ablations:
        c = ab["config"]
        sections.append((f"ablation {ab['config_hash']}", [[k, json.dumps(v, default=str)] for k, v in c.items()
                                                           if k != "evaluation"]
                         + [["evaluation", json.dumps({k: v for k, v in c.get("evaluation", {}).items() if v})]]))
    if col.stages:
        sections.append(("stages: seconds and tokens", [[s["stage"], f"{s['seconds']:,.1f} s",
                                                         f"{s['tokens']:,}" if s.get("tokens") else "–"]
                                                        for s in col.stages]))
    return sections


def figure_provenance(col: Collection):
    sections = provenance(col)
    lines = []
    for title, rows in sections:
        lines.append(title.upper())
        for row in rows:
            lines.append("  " + " · ".join(row))
        lines.append("")
    lines = textwrap_lines(lines, 150)
    if len(lines) > 80:  # one page; the HTML page has every line
        lines = lines[:79] + [f"... {len(lines) - 79} more lines in the HTML report"]
    fig = plt.figure(figsize=PAGE)
    fig.text(0.02, 0.94, "\n".join(lines), family="monospace", fontsize=6.2, va="top")
    fig.suptitle("Provenance", fontsize=12, fontweight="bold")
    return fig


def textwrap_lines(lines: list[str], width: int) -> list[str]:
    out = []
    for line in lines:
        out += textwrap.wrap(line, width, subsequent_indent="      ") or [""]
    return out
