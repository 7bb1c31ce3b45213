"""The CLI end to end on a tiny random Llama, and its one-line errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import harness_cli, one_line_error

FIELDS = {"suite", "key", "length", "tokens", "depth", "score", "scores", "output", "seconds"}


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    args = ["run", "--model", str(tiny_model_dir), "--suite", "needle", "--lengths", "256,512",
            "--depths", "0,100", "--protocol", "exact", "--dtype", "fp32", "--out", str(out)]
    proc = harness_cli(*args)
    assert proc.returncode == 0, proc.stderr
    return out, args, proc


def test_two_by_two_grid_end_to_end(tiny_run):
    out, _, proc = tiny_run
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("config", "config_hash", "model", "versions", "git_revision", "machine", "created"):
        assert key in manifest
    assert manifest["model"]["rope_parameters"]["rope_theta"] == 10000.0
    assert manifest["model"]["effective_max_positions"] == 2048
    assert manifest["config"]["suites"]["needle"]["lengths"] == [256, 512]
    assert manifest["config"]["suites"]["needle"]["haystack"]["name"] == "kjv"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(FIELDS <= set(r) for r in rows)
    assert {(r["length"], r["depth"]) for r in rows} == {(256, 0), (256, 100), (512, 0), (512, 100)}
    assert all(abs(r["tokens"] - r["length"]) <= 0.01 * r["length"] for r in rows)
    assert set(rows[0]["scores"]) == {"paper", "word_recall", "rouge1_f", "exact"}
    assert (out / "needle_heatmap.png").stat().st_size > 0 and (out / "needle_heatmap.pdf").stat().st_size > 0
    assert "4 cells, 4 to run" in proc.stderr and "prompt tokens" in proc.stderr
    assert "float32: requested" in proc.stderr  # the dtype in force and why
    assert manifest["model"]["precision"]["dtype"] == "fp32"
    # Not a terminal (a pipe): one progress line per finished cell instead of a live bar.
    progress = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("[")]
    assert [line.split()[0] for line in progress] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"], proc.stderr
    assert {line.split()[1] for line in progress} == {r["key"] for r in rows}
    assert all("s elapsed, ETA " in line for line in progress)


def test_rerun_skips_finished_cells(tiny_run):
    out, args, _ = tiny_run
    before = (out / "results.jsonl").read_text()
    proc = harness_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "0 to run" in proc.stderr
    assert (out / "results.jsonl").read_text() == before


def test_report_redraws_from_the_store_alone(tiny_run, tmp_path):
    out, _, _ = tiny_run
    proc = harness_cli("report", str(out), "--out", str(tmp_path / "figs"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "figs" / "needle_heatmap.png").stat().st_size > 0
    assert "transformers" not in proc.stderr


@pytest.mark.parametrize("extra, message", [
    (["--suite", "bogus"], "known: needle"),
    (["--preset", "huge"], "known: paper, quick, mini, tiny"),
    (["--lengths", "-1k"], "--lengths"),
    (["--lengths", "0"], "--lengths"),
    (["--lengths", "ten"], "--lengths"),
    (["--depths", "101"], "outside 0-100"),
    (["--depths", "abc"], "--depths"),
    (["--rope-scaling", "linear"], "--rope-scaling"),
    (["--rope-scaling", "cubic:2"], "--rope-scaling"),
    (["--rope-theta", "-5"], "--rope-theta"),
    (["--rope-theta", "big"], "rope-theta"),
])
def test_bad_flags_exit_2_with_one_line(capsys, tmp_path, tiny_model_dir, extra, message):
    out = tmp_path / "never"
    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--out", str(out), *extra])
    assert message in err
    assert not out.exists()


def test_bad_model_paths(capsys, tmp_path):
    err = one_line_error(capsys, ["run", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert "neither a known model" in err
    (tmp_path / "notamodel").mkdir()
    err = one_line_error(capsys, ["run", "--model", str(tmp_path / "notamodel"), "--out", str(tmp_path / "o")])
    assert "no config.json" in err
    assert not (tmp_path / "o").exists()


def test_empty_haystack_file(capsys, tmp_path, tiny_model_dir):
    (tmp_path / "empty.txt").write_text("  \n")
    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--haystack", str(tmp_path / "empty.txt"),
                                   "--out", str(tmp_path / "o")])
    assert "is empty" in err and not (tmp_path / "o").exists()


def test_unwritable_run_dir(capsys, tmp_path, tiny_model_dir):
    (tmp_path / "file").write_text("x")
    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--lengths", "256", "--depths", "0",
                                   "--out", str(tmp_path / "file" / "run")])
    assert "--out: cannot create" in err and "is a file" in err
    assert (tmp_path / "file").read_text() == "x"


def test_run_dir_with_a_different_config(capsys, tiny_run, tiny_model_dir):
    out, _, _ = tiny_run
    before = (out / "results.jsonl").read_text()
    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--lengths", "256,1k", "--depths", "0,100",
                                   "--dtype", "fp32", "--out", str(out)])
    assert "different config" in err and "lengths" in err
    assert (out / "results.jsonl").read_text() == before


def test_sigkill_mid_grid_then_rerun_holds_every_cell_once(tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "harness", "run", "--model", str(tiny_model_dir), "--lengths", "256:1k:6",
            "--depths", "0:100:5", "--dtype", "fp32", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the grid finished before it could be killed: " + proc.stderr.read()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = results.read_bytes()
    assert partial.endswith(b"\n")  # only whole lines, whatever the moment of the kill
    done_before = [json.loads(line)["key"] for line in partial.splitlines()]
    assert 3 <= len(done_before) < 30

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{30 - len(done_before)} to run" in rerun.stderr
    final = results.read_bytes()
    assert final.startswith(partial)  # finished cells were neither redone nor rewritten
    keys = [json.loads(line)["key"] for line in final.splitlines()]
    assert len(keys) == 30 and len(set(keys)) == 30


def test_samples_store_one_line_per_draw_and_resume_per_draw(tiny_model_dir, tmp_path):
    out = tmp_path / "k2"
    args = ["run", "--model", str(tiny_model_dir), "--suite", "needle", "--lengths", "256", "--depths", "0,100",
            "--protocol", "exact", "--samples", "2", "--max-new-tokens", "4", "--dtype", "fp32", "--out", str(out)]
    assert harness_cli(*args).returncode == 0
    results = out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["depth"], r["sample"]) for r in rows) == [(0, 0), (0, 1), (100, 0), (100, 1)]
    results.write_text("".join(line + "\n" for line in results.read_text().splitlines()[:1]))  # lose three draws
    proc = harness_cli(*args)
    assert proc.returncode == 0 and "3 to run (1 already done)" in proc.stderr
    keys = [json.loads(line)["key"] for line in results.read_text().splitlines()]
    assert sorted(keys) == sorted(r["key"] for r in rows)  # every draw once


def test_version():
    from importlib.metadata import version

    proc = harness_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"harness {version('longctx-harness')}"


def test_default_run_dirs_never_collide(tiny_model_dir, tmp_path):
    """No --out: two configs get two directories; the same command again resumes its own."""
    args = ["run", "--model", str(tiny_model_dir), "--suite", "needle", "--lengths", "256", "--depths", "50",
            "--protocol", "exact", "--dtype", "fp32"]
    first = harness_cli(*args, cwd=tmp_path)
    second = harness_cli(*args, "--rope-theta", "2e4", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    def runs():  # the run directories (each has its writer's lock file, .NAME.lock, beside it)
        return sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))

    assert len(runs()) == 2 and all(d.startswith(f"{tiny_model_dir.name}-needle-") for d in runs())
    again = harness_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "0 to run" in again.stderr
    assert len(runs()) == 2


@pytest.mark.parametrize("argv, rest, rank", [
    (["--local_rank=3", "train", "--out", "x"], ["train", "--out", "x"], "3"),       # deepspeed's launcher
    (["train", "--local-rank", "1", "--out", "x"], ["train", "--out", "x"], "1"),
    (["run", "--model", "m"], ["run", "--model", "m"], None),
])
def test_local_rank_is_taken_wherever_the_launcher_puts_it(argv, rest, rank):
    from harness.cli import take_local_rank

    assert take_local_rank(argv) == (rest, rank)


def test_rank0_only_commands_leave_the_other_ranks_idle(tmp_path, monkeypatch, capsys):
    """Under a launcher, `data`, `report` and `compare` run on rank 0 alone: another rank returns at
    once (here it would otherwise fail on a missing directory)."""
    from harness.cli import main

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")   # main() sets it from --local_rank: undone after the test
    main(["--local_rank=1", "report", str(tmp_path / "none")])
    main(["data", "stats", str(tmp_path / "none")])
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "none")])
    assert exc.value.code == 2
