"""Loss-by-length curves: one line per domain, x = position bucket, y = mean token loss."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness import rundir  # noqa: E402
from harness.tasks import loss  # noqa: E402


def write(run_dir: Path, results: list[dict], manifest: dict, out_dir: Path | None = None) -> list[Path]:
    table = loss.summary(results)
    if not table:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    for domain, buckets in table.items():
        names = list(buckets)
        ax.plot(range(len(names)), [buckets[b]["loss"] for b in names], marker="o", label=domain)
    longest = max(table.values(), key=len)
    ax.set_xticks(range(len(longest)), list(longest), rotation=30 if len(longest) > 6 else 0)
    ax.set_xlabel("token position bucket")
    ax.set_ylabel("mean loss (nats/token)")
    model = manifest.get("model", {})
    ax.set_title(f"{model.get('name', run_dir.name)}: held-out loss by position\n"
                 f"(max positions {model.get('effective_max_positions')})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        dest = Path(out_dir or run_dir) / f"loss_by_length.{ext}"
        with rundir.atomic_path(dest) as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
        paths.append(dest)
    plt.close(fig)
    return paths
