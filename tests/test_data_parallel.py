"""Data-parallel grid evaluation: `torchrun --nproc_per_node 2 -m harness run ...` on CPU (gloo) shares
a grid's lengths across ranks into one store; every cell once, equal to a 1-rank run; resumable."""

import json
import os
import subprocess
import sys

from harness import distributed
from tests.conftest import harness_cli

# Three lengths (an uneven share: 512 on one rank, 256 and 384 on the other) x three depths. The
# test is about sharing, merging and resuming cells, not the answers: 8 greedy tokens (not 50) are
# enough to compare each cell's output with the 1-rank run's, at a sixth of the decoding.
GRID = ["--lengths", "256,384,512", "--depths", "0,50,100", "--protocol", "exact", "--dtype", "fp32",
        "--max-new-tokens", "8"]


def _torchrun(*args: str, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), "-m", "harness", "run", *args], capture_output=True, text=True, timeout=900, env=env)


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_store_every_cell_once_and_equal_one_rank(tmp_path, tiny_model_dir):
    one = harness_cli("run", "--model", str(tiny_model_dir), *GRID, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun("--model", str(tiny_model_dir), *GRID, "--out", str(tmp_path / "two"), port=29541)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = _rows(tmp_path / "two")
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 9                      # every cell once
    assert not list((tmp_path / "two").glob("results.rank*.jsonl"))  # the rank log merged and removed
    expected = {r["key"]: (r["output"], r["score"]) for r in _rows(tmp_path / "one")}
    assert {r["key"]: (r["output"], r["score"]) for r in rows} == expected
    assert "rank 0 of 2" in two.stderr
    assert (tmp_path / "two" / "results_lm_eval.json").is_file() and (tmp_path / "two" / "needle_heatmap.png").is_file()
    # Resume: a store missing cells (as a crash leaves it) is completed, each cell still once.
    (tmp_path / "two" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    again = _torchrun("--model", str(tiny_model_dir), *GRID, "--out", str(tmp_path / "two"), port=29542)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(r["key"] for r in _rows(tmp_path / "two")) == sorted(keys)


def test_lengths_are_shared_whole_and_balanced():
    groups = [("1k", 1.0), ("2k", 2.0), ("4k", 4.0), ("8k", 8.0)]
    shares = [distributed.share(groups, r, 2) for r in range(2)]
    assert shares == [["8k"], ["1k", "2k", "4k"]]                # 8 against 7
    assert sorted(sum(shares, [])) == sorted(g for g, _ in groups)
    assert distributed.share(groups, 0, 1) == ["1k", "2k", "4k", "8k"]
