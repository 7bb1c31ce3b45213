"""Mixture statistics: what a plan feeds the model, by domain and by document length.

``long_4k_share`` is the share of a domain's mixture tokens that sit in (effective) documents
longer than 4K tokens: a document cut into 4K pieces counts as its pieces, since that is what
the model sees in a row. The source columns describe the corpus before the strategy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness import rundir
from harness.data.mixture import Plan

LONG_4K, LONG_32K = 4096, 32768
BINS = [2 ** k for k in range(6, 19)]  # 64 .. 256K tokens, log2 bins


def _long_share(lengths: np.ndarray, weights: np.ndarray, threshold: int) -> float:
    total = weights.sum()
    return float(weights[lengths > threshold].sum() / total) if total else 0.0


def compute(plan: Plan, domains: np.ndarray, lengths: np.ndarray, *, strategy: str, seq_len: int) -> dict:
    domains = np.asarray(domains)
    lengths = np.asarray(lengths, dtype=np.int64)
    seg = plan.segments
    seg_len = seg[:, 2] - seg[:, 1]
    seg_dom = domains[seg[:, 0]] if len(seg) else np.array([], dtype=domains.dtype)
    total = int(seg_len.sum())
    source_total = int(lengths.sum())
    out = {"strategy": strategy, "seq_len": seq_len, "total_tokens": total,
           "documents": int(len(seg)), "source_tokens": source_total,
           "long_4k_share": _long_share(seg_len, seg_len, LONG_4K),
           "long_32k_share": _long_share(seg_len, seg_len, LONG_32K),
           "source_long_4k_share": _long_share(lengths, lengths, LONG_4K),
           "missing_domains": plan.missing, "domains": {}}
    for d in sorted(set(domains.tolist()) | set(plan.weights)):
        mine = seg_dom == d
        tokens = int(seg_len[mine].sum())
        src = lengths[domains == d]
        # Unique tokens used: every segment starts inside [0, doc length); per document the
        # furthest end reached is what was read at least once.
        docs = seg[mine]
        unique = 0
        if len(docs):
            furthest = {}
            for doc, _, end in docs.tolist():
                furthest[doc] = max(furthest.get(doc, 0), end)
            unique = sum(furthest.values())
        hist, _ = np.histogram(np.clip(seg_len[mine], BINS[0], BINS[-1]), bins=BINS, weights=seg_len[mine])
        out["domains"][d] = {
            "tokens": tokens,
            "share": tokens / total if total else 0.0,
            "target_share": plan.weights.get(d, 0.0),
            "source_tokens": int(src.sum()),
            "source_share": float(src.sum() / source_total) if source_total else 0.0,
            "documents": int(mine.sum()),
            "long_4k_share": _long_share(seg_len[mine], seg_len[mine], LONG_4K),
            "long_32k_share": _long_share(seg_len[mine], seg_len[mine], LONG_32K),
            "source_long_4k_share": _long_share(src, src, LONG_4K),
            "repeat": tokens / unique if unique else 0.0,
            "epochs": plan.epochs.get(d, 0),
            "length_hist_tokens": hist.astype(int).tolist(),
        }
    out["length_bins"] = BINS
    return out


def table(stats: dict):
    """A rich table: one row per domain, source vs mixture."""
    from rich.table import Table

    stand_in = stats.get("stand_in_domains")
    t = Table(title=f"mixture {stats['strategy']} · target mix {stats.get('target_mix', '?')} · "
                    f"{stats['total_tokens']:,} tokens · seq_len {stats['seq_len']:,} · "
                    f"long(>4K) {stats['long_4k_share']:.1%} (source {stats['source_long_4k_share']:.1%})",
              caption=f"stand-ins (documentation, not web crawl): {', '.join(stand_in)}" if stand_in else None)
    for col in ("domain", "tokens", "share", "target", "source share", ">4K", "source >4K", ">32K", "repeat"):
        t.add_column(col, justify="left" if col == "domain" else "right")
    for d, s in stats["domains"].items():
        t.add_row(d, f"{s['tokens']:,}", f"{s['share']:.1%}", f"{s['target_share']:.1%}", f"{s['source_share']:.1%}",
                  f"{s['long_4k_share']:.1%}", f"{s['source_long_4k_share']:.1%}", f"{s['long_32k_share']:.1%}",
                  f"{s['repeat']:.2f}x")
    return t


def plot(stats: dict, dest: Path) -> Path:
    """The paper's Figure 2 analogue: domain shares (source, target, mixture) and length mix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats["domains"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(names))
    for i, (key, label) in enumerate([("source_share", "source"), ("target_share", "target"), ("share", "mixture")]):
        ax1.bar(x + (i - 1) * 0.27, [stats["domains"][n][key] for n in names], 0.27, label=label)
    ax1.set_xticks(x, names, rotation=30, ha="right")
    ax1.set_ylabel("share of tokens")
    ax1.set_title(f"Domain mix (target: {stats.get('target_mix', '?')})")
    ax1.legend()
    bins = stats["length_bins"]
    bottom = np.zeros(len(bins) - 1)
    total = max(stats["total_tokens"], 1)
    for n in names:
        h = np.array(stats["domains"][n]["length_hist_tokens"], dtype=float) / total
        ax2.bar(np.arange(len(bins) - 1), h, bottom=bottom, label=n)
        bottom += h
    ax2.set_xticks(np.arange(len(bins) - 1)[::2], [f"{b // 1024}K" if b >= 1024 else str(b) for b in bins[:-1]][::2])
    ax2.axvline(np.searchsorted(bins, LONG_4K) - 0.5, color="black", linestyle="--", linewidth=1)
    ax2.set_xlabel("document length (tokens, log2 bins)")
    ax2.set_ylabel("share of mixture tokens")
    ax2.set_title(f"Length mix: {stats['long_4k_share']:.0%} of tokens in >4K documents")
    ax2.legend(fontsize=7, loc="upper left")
    stand_in = stats.get("stand_in_domains")
    note = f"\nstand-ins (documentation, not web crawl): {', '.join(stand_in)}" if stand_in else ""
    fig.suptitle(f"{stats['strategy']} · target mix {stats.get('target_mix', '?')} · "
                 f"{stats['total_tokens']:,} tokens{note}", fontsize=10)
    fig.tight_layout()
    with rundir.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return dest
