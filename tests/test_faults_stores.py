"""Bad input, class "stores and data builds": a run's results, a data build's manifest and shards,
an ablation's record, edited or damaged, are one line naming the file (exit 2): never a
traceback, never a silently wrong report; names read from them stay inside their directory."""

import json
import shutil

import pytest

from tests.conftest import harness_cli, one_line_error


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "run"
    proc = harness_cli("run", "--model", str(tiny_model_dir), "--lengths", "256", "--depths", "0,100",
                       "--protocol", "exact", "--dtype", "fp32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def _edit_results(src, dst, edit):
    shutil.copytree(src, dst)
    rows = [json.loads(line) for line in (dst / "results.jsonl").read_text().splitlines()]
    edit(rows[0])
    (dst / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("score"), "result 1 has score None, not a number"),
    (lambda r: r.update(score="high"), "result 1 has score 'high'"),
    (lambda r: r.update(score=True), "result 1 has score True"),
    (lambda r: r.pop("key"), "result 1 has no suite or key"),
    (lambda r: r.update(suite="martian"), "result 1 is from suite 'martian', which this run does not hold (needle)"),
])
@pytest.mark.parametrize("command", ["report", "compare"])
def test_a_result_off_the_schema_is_named(capsys, run_dir, tmp_path, edit, message, command):
    bad = _edit_results(run_dir, tmp_path / "bad", edit)
    err = one_line_error(capsys, [command, str(bad)])
    assert f"{bad / 'results.jsonl'}: {message}" in err


def test_resuming_over_a_result_off_the_schema_is_refused(capsys, run_dir, tmp_path, tiny_model_dir):
    bad = _edit_results(run_dir, tmp_path / "bad", lambda r: r.pop("score"))
    before = (bad / "results.jsonl").read_bytes()
    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--lengths", "256", "--depths", "0,100",
                                  "--protocol", "exact", "--dtype", "fp32", "--out", str(bad)])
    assert "has score None" in err
    assert (bad / "results.jsonl").read_bytes() == before


def test_a_run_with_no_results_is_not_compared_silently(capsys, run_dir, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(run_dir, empty)
    (empty / "results.jsonl").write_text("")
    for argv in (["compare", str(empty), str(run_dir)], ["report", str(empty), str(run_dir), "--out", str(tmp_path / "r.pdf")]):
        assert "holds no results yet" in one_line_error(capsys, argv)
    assert not (tmp_path / "r.pdf").exists()


@pytest.mark.parametrize("body", ["[1, 2]", "{\"config\": "])
def test_a_manifest_that_is_not_a_record(capsys, run_dir, tmp_path, body):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "manifest.json").write_text(body)
    assert "manifest.json" in one_line_error(capsys, ["report", str(bad)])


def test_an_ablation_record_cannot_point_outside_itself(capsys, run_dir, tmp_path):
    root = tmp_path / "ablation"
    (root / "eval").mkdir(parents=True)
    shutil.copytree(run_dir, tmp_path / "outside")
    (root / "ablate.json").write_text(json.dumps({"plan": {"models": ["m"], "evals": {"m": ["../../outside"]},
                                                           "mixtures": []}}))
    assert "not a plain name inside its directory" in one_line_error(capsys, ["compare", str(root)])


# -- data builds, as training reads them ---------------------------------------------------------------

@pytest.fixture
def build_copy(shards, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(shards, d)
    return d


def _manifest(d, **changes):
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "shards" / "part-00000.parquet").unlink(), "part-00000.parquet is missing"),
    (lambda d: (d / "shards" / "part-00000.parquet").write_bytes(b"PAR1 not really"), "part-00000.parquet is damaged"),
    (lambda d: (d / "manifest.json").write_text("{oops"), "is not valid JSON"),
    (lambda d: _manifest(d, shards=["../../../etc/passwd"]), "not a plain name inside its directory"),
    (lambda d: _manifest(d, seq_len="long"), "not a complete `harness data build` manifest"),
])
def test_training_names_a_damaged_data_build(capsys, tiny_model_dir, build_copy, tmp_path, damage, message):
    damage(build_copy)
    out = tmp_path / "never"
    err = one_line_error(capsys, ["train", "--base", str(tiny_model_dir), "--data", str(build_copy), "--seq-len", "128",
                                  "--tokens", "10k", "--dtype", "fp32", "--out", str(out)])
    assert message in err
    assert not out.exists()


@pytest.mark.parametrize("body", ["{oops", "[]"])
def test_data_stats_names_a_damaged_stats_file(capsys, build_copy, body):
    (build_copy / "stats.json").write_text(body)
    assert "stats.json" in one_line_error(capsys, ["data", "stats", str(build_copy)])
