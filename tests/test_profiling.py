"""harness.profiling: one call's top rows under torch.profiler, and their markdown table."""

import torch

from harness import profiling


def test_a_cpu_profile_ranks_the_matmul_and_tabulates_it():
    """A matmul and a softmax on a CPU: the profile holds aten::mm with its call count, rows come
    largest self time first, shares are of one total, and the table has a line per row."""
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def work():
        for _ in range(3):
            torch.softmax(a @ b, dim=-1)

    rows = profiling.top_kernels(work, "cpu")
    names = [r["name"] for r in rows]
    assert "aten::mm" in names and any("softmax" in name for name in names), names
    mm = rows[names.index("aten::mm")]
    assert mm["calls"] == 3 and mm["self_ms"] > 0
    assert [r["self_ms"] for r in rows] == sorted((r["self_ms"] for r in rows), reverse=True)
    assert 0 < sum(r["share_pct"] for r in rows) <= 100.5
    text = profiling.table(rows)
    assert text.splitlines()[0] == "| name | calls | self ms | share % |"
    assert len(text.splitlines()) == 2 + len(rows)
    assert "| `aten::mm` | 3 |" in text
    assert len(profiling.top_kernels(work, torch.device("cpu"), rows=2)) == 2


def test_long_names_are_cut_and_pipes_escaped():
    """Kernel names (templated CUDA kernels run to hundreds of characters) are cut to NAME_CHARS, and
    a pipe in one does not break the table."""
    class Event:
        def __init__(self, key, us):
            self.key, self.count, self.us = key, 1, us

    long = "void cutlass::Kernel<" + "x" * 200 + ">"
    rows = profiling.ranked([Event(long, 3000.0), Event("a|b", 1000.0), Event("idle", 0.0)], lambda e: e.us, 15)
    assert [r["share_pct"] for r in rows] == [75.0, 25.0]
    assert len(rows[0]["name"]) == profiling.NAME_CHARS and rows[0]["name"].endswith("...")
    assert "| `a\\|b` | 1 | 1.000 | 25.0 |" in profiling.table(rows)
