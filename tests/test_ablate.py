"""`harness ablate` end to end at tiny shapes, and `harness report` over stored runs alone.

The ablation is real: two mixtures built from the embedded corpus and trained from the suite's tiny
random Llama (its 2 layers of width 64 train about 4x cheaper than the from-scratch ``tiny`` shape:
the shared module ablation is the file's biggest cost), every model evaluated, the report written.
Pretraining a base from scratch inside `ablate` is tested once, by the seeds test (one step).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import harness_cli, one_line_error

# 8k tokens per mixture is the least at which per_source's build holds a document over 4K (the
# first test's contrast with cut_4k); the loss suite (256 tokens of each held-out document, two
# buckets) is as small as the assertions allow.
COMMON = ["--seq-len", "256", "--rope-theta", "1e5", "--suites", "needle,loss", "--lengths", "128,256",
          "--depths", "0,100", "--loss-bucket", "128", "--loss-length", "256", "--batch-tokens", "2k"]
MIXTURES = ["--mixtures", "per_source,cut_4k", "--tokens", "8k", *COMMON]


@pytest.fixture(scope="module")
def ablate_args(tiny_model_dir) -> list[str]:
    return ["--base", str(tiny_model_dir), *MIXTURES]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, ablate_args):
    out = tmp_path_factory.mktemp("ablate") / "a"
    proc = harness_cli("ablate", *ablate_args, "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_ablation_trains_each_mixture_and_evaluates_every_model(ablation, tiny_model_dir):
    out, proc = ablation
    record = json.loads((out / "ablate.json").read_text())
    assert record["plan"]["models"] == ["base", "per_source", "cut_4k"]
    assert "estimate" in proc.stderr and "TFLOP" in proc.stderr  # the plan is printed first
    stages = [json.loads(line)["stage"] for line in (out / "stages.jsonl").read_text().splitlines()]
    assert stages == ["data:per_source", "train:per_source", "data:cut_4k", "train:cut_4k",
                      "eval:base", "eval:per_source", "eval:cut_4k"]
    # Same base, same budget, same seed; the extended models carry the raised RoPE base.
    for label in ("per_source", "cut_4k"):
        cfg = json.loads((out / "train" / label / "train_config.json").read_text())["config"]
        assert cfg["base"] == str(tiny_model_dir) and cfg["tokens"] == 8000 and cfg["seed"] == 0
        assert cfg["rope_theta"] == 1e5
        manifest = json.loads((out / "eval" / label / "manifest.json").read_text())
        assert manifest["model"]["rope_parameters"]["rope_theta"] == 1e5
    base_manifest = json.loads((out / "eval" / "base" / "manifest.json").read_text())
    assert base_manifest["model"]["rope_parameters"]["rope_theta"] == 10000.0
    # The two mixtures are different data: per_source keeps long documents, cut_4k cuts them.
    data = {m["label"]: json.loads((Path(m["data"]) / "stats.json").read_text()) for m in record["plan"]["mixtures"]}
    assert data["per_source"]["strategy"] == "per_source" and data["cut_4k"]["strategy"] == "cut_4k"
    assert data["per_source"]["long_4k_share"] > data["cut_4k"]["long_4k_share"] == 0.0
    for label in record["plan"]["models"]:
        rows = [json.loads(line) for line in (out / "eval" / label / "results.jsonl").read_text().splitlines()]
        assert sum(r["suite"] == "needle" for r in rows) == 4 and any(r["suite"] == "loss" for r in rows)
    assert (out / "report.pdf").stat().st_size > 10_000 and (out / "report.html").is_file()
    assert proc.stdout.strip().endswith("report.pdf")


def test_report_pages_and_figures(ablation):
    from harness.reports.document import inspect_pdf

    out, _ = ablation
    pages = inspect_pdf(out / "report.pdf")
    titles = [p["title"] for p in pages]
    assert titles == ["Comparison table", "Needle heatmaps", "Needle difference heatmaps", "Loss by length",
                      "Mixture composition", "Provenance"]
    assert pages[1]["images"] == 3   # one heatmap per model, one colour scale
    assert pages[2]["images"] == 2   # each trained model minus the base


def test_rerun_is_a_no_op_and_a_lost_stage_is_redone_alone(ablation, ablate_args):
    out, _ = ablation
    before = {p: p.stat().st_mtime_ns for p in out.rglob("results.jsonl")}
    record = json.loads((out / "ablate.json").read_text())
    # A crash during the last evaluation: its stage line and its last cell never got written.
    stages = (out / "stages.jsonl").read_text().splitlines()
    (out / "stages.jsonl").write_text("\n".join(stages[:-1]) + "\n")
    results = out / "eval" / "cut_4k" / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-1]) + "\n")
    proc = harness_cli("ablate", *ablate_args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming the ablation" in proc.stderr
    assert "final checkpoint" not in proc.stderr      # nothing retrained
    assert "1 to run (" in proc.stderr                 # only the lost cell
    assert len(results.read_text().splitlines()) == len(lines)
    again = (out / "stages.jsonl").read_text().splitlines()
    assert again[:-1] == stages[:-1] and json.loads(again[-1])["stage"] == "eval:cut_4k"
    for path, mtime in before.items():
        if path != results:
            assert path.stat().st_mtime_ns == mtime
    assert json.loads((out / "ablate.json").read_text())["config_hash"] == record["config_hash"]


def test_report_from_stored_runs_alone_with_a_missing_suite(ablation, tmp_path):
    """`harness report` over a plain run directory and an ablation: draws what is common, names the gap."""
    out, _ = ablation
    only_needle = tmp_path / "needle-only"
    shutil.copytree(out / "eval" / "base", only_needle)
    rows = [line for line in (only_needle / "results.jsonl").read_text().splitlines()
            if json.loads(line)["suite"] == "needle"]
    (only_needle / "results.jsonl").write_text("\n".join(rows) + "\n")
    manifest = json.loads((only_needle / "manifest.json").read_text())
    del manifest["config"]["suites"]["loss"]
    (only_needle / "manifest.json").write_text(json.dumps(manifest))
    pdf = tmp_path / "cmp" / "report.pdf"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = harness_cli("report", str(out), str(only_needle), "--out", str(pdf), "--reference", "needle-only", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "missing: needle-only: loss" in proc.stderr
    assert "loading" not in proc.stderr  # no model is loaded
    from harness.reports.document import inspect_pdf

    pages = inspect_pdf(pdf)
    assert [p["images"] for p in pages if p["title"] == "Needle heatmaps"] == [4]
    assert "Suites missing" in pdf.with_suffix(".html").read_text()


def test_seeds_train_each_mixture_n_times_and_the_report_pools_them(tmp_path):
    """--seeds 2 on one mixture, and a base pretrained from scratch inside `ablate` (the ``tiny`` shape,
    2k tokens at 128: one step of 8 sequences), what --seeds does not repeat made the cheapest way (the module
    ablation covers building mixtures inside `ablate`): per_source built beforehand as a directory,
    2k tokens (one step) per seed."""
    from rich.console import Console

    from harness.data import build

    mixture = tmp_path / "per_source"   # a build directory's mixture label is its name
    build.build(source="embedded", strategy="per_source", tokens=2000, seq_len=256, tokenizer="smollm2-135m",
                seed=0, out=mixture, console=Console(quiet=True))
    out = tmp_path / "seeds"
    proc = harness_cli("ablate", "--base", "tiny", "--base-tokens", "2k", "--base-seq-len", "128",
                       "--mixtures", str(mixture), "--tokens", "2k", *COMMON, "--seeds", "2", "--out", str(out),
                       timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "seeds 0..1" in proc.stderr and "train x 2" in proc.stderr
    stages = [json.loads(line)["stage"] for line in (out / "stages.jsonl").read_text().splitlines()]
    assert stages == ["base", "data:per_source", "train:per_source-s0", "train:per_source-s1",
                      "eval:base", "eval:per_source-s0", "eval:per_source-s1"]
    # The base was pretrained here (from scratch, short context), and each seed continues from it.
    base_cfg = json.loads((out / "base" / "train_config.json").read_text())["config"]
    assert base_cfg["from_scratch"] == "tiny" and base_cfg["seq_len"] == 128 and base_cfg["tokens"] == 2000
    assert json.loads((out / "eval" / "base" / "manifest.json").read_text())["model"]["rope_parameters"][
        "rope_theta"] == 10000.0
    configs = [json.loads((out / "train" / f"per_source-s{k}" / "train_config.json").read_text())["config"]
               for k in range(2)]
    assert [c["seed"] for c in configs] == [0, 1]
    assert all(c["base"] == str(out / "base" / "final") and c["rope_theta"] == 1e5 for c in configs)
    from safetensors.numpy import load_file

    a, b = (load_file(out / "train" / f"per_source-s{k}" / "final" / "model.safetensors") for k in range(2))
    assert any(not np.array_equal(a[k], b[k]) for k in a)   # another data order: other weights
    from harness.reports import compare, document, paired

    col = compare.collect([out])
    assert [r.label for r in col.runs] == ["base", "per_source (2 seeds)"]
    found = paired.compare(col, "base")
    assert found and all("2 seeds" in c.method for c in found if c.column == "needle mean")
    pages = document.inspect_pdf(out / "report.pdf")
    assert "per_source (2 seeds)" in pages[0]["text"] and "Holm-adjusted" in pages[0]["text"]
    assert [p["images"] for p in pages if p["title"] == "Needle heatmaps"] == [2]
    proc = harness_cli("compare", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert {c["run"] for c in json.loads(proc.stdout)} == {"per_source"}


@pytest.mark.parametrize("args, message", [
    (["--mixtures", "per_source,longest_first"], "unknown mixture 'longest_first'; known: cut_4k, cut_target"),
    (["--preset", "huge"], "unknown 'huge' for ablate; known: tiny, paper"),
    (["--preset", "paper"], "--base: required with --preset paper"),
    (["--mixtures", "cut_4k,cut_4k"], "'cut_4k' is named twice"),
    (["--seeds", "0"], "--seeds: 0 must be between 1 and 100"),
    (["--launcher", "no-such-launcher -n 2"], "--launcher: 'no-such-launcher' is not a program on PATH"),
])
def test_bad_input_is_one_line_exit_2(args, message, tmp_path, capsys):
    # In process (the CLI's main): a fresh interpreter per case cost 1-5 s each under the AVX2 emulation.
    assert message in one_line_error(capsys, ["ablate", *args, "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_ablate_under_a_launcher_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """It is the one writer of its data, run directories and report: the launcher goes in --launcher."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "ablate: run it as one process" in one_line_error(capsys, ["ablate", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_mixture_built_with_another_tokenizer_is_refused(ablation, ablate_args, tmp_path):
    out, _ = ablation
    built = Path(json.loads((out / "ablate.json").read_text())["plan"]["mixtures"][0]["data"])
    other = tmp_path / "other-tokenizer-build"
    shutil.copytree(built, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"].update(name="gpt2", vocab_hash="0123456789ab")
    (other / "manifest.json").write_text(json.dumps(manifest))
    args = list(ablate_args)
    args[args.index("--mixtures") + 1] = f"cut_4k,{other}"
    proc = harness_cli("ablate", *args, "--out", str(tmp_path / "y"))
    assert proc.returncode == 2, proc.stderr
    assert "was built with tokenizer 'gpt2'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "y").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None and not os.environ.get("HARNESS_REQUIRE_CHROMIUM"),
                    reason="Debian's chromium is not installed (`make system-deps`; CI installs it)")
def test_html_report_shows_heatmaps_in_headless_chromium(ablation, tmp_path):
    from PIL import Image

    from harness.reports import heatmap

    out, _ = ablation
    assert _chromium(), "HARNESS_REQUIRE_CHROMIUM is set but chromium is not installed (make system-deps)"
    shot = tmp_path / "page.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1400,2600", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)[::3].astype(np.int16)
    # The heatmaps' colours (the default palette's dark end: these tiny models score near 0).
    cmap = heatmap.palette(None)
    palette = (np.array([cmap(v)[:3] for v in np.linspace(0, 1, 11)]) * 255).astype(np.int16)
    near = np.abs(pixels[:, None, :] - palette[None, :, :]).max(axis=2).min(axis=1) <= 12
    assert near.sum() > 2000, f"only {near.sum()} heatmap-coloured pixels in the screenshot"


def test_mini_plan_prints_each_stage_on_one_h200_within_8_minutes_and_writes_nothing(tmp_path):
    import re

    proc = harness_cli("ablate", "--preset", "mini", "--plan", "--out", str(tmp_path / "mini"))
    assert proc.returncode == 0, proc.stderr
    assert "plan on one H200" in proc.stderr and "RoPE base 1e+06" in proc.stderr
    rows = dict(re.findall(r"^\s+(\S+(?: \(.*\))?)\s+~\s*([\d.]+) min", proc.stderr, flags=re.M))
    assert {"data:per_source", "train:per_source", "train:cut_4k", "train:global", "eval:base", "eval:global",
            "report"} <= set(rows), rows
    assert float(rows["total"]) <= 8.0
    assert not (tmp_path / "mini").exists() and proc.stdout.strip() == ""
