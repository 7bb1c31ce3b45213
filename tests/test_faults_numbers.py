"""Bad input, class "numbers at the edges": every command refuses an out-of-range, non-finite or
absurdly large number with one line and exit code 2, before it allocates or creates anything.

(Training's own numbers: test_trainer.test_numbers_out_of_range_are_refused_before_anything_is_made.)
"""

import pytest

from tests.conftest import one_line_error


@pytest.mark.parametrize("extra, message", [
    (["--lengths", "1e400"], "--lengths: '1e400' is too large"),
    (["--lengths", "1k:2k:100000000000"], "asks for 100,000,000,000 values; at most 10,000"),
    (["--depths", "0:100:99999999"], "at most 10,000"),
    (["--rope-theta", "inf"], "--rope-theta: inf is not accepted"),
    (["--rope-theta", "nan"], "--rope-theta: nan is not accepted"),
    (["--rope-scaling", "linear:inf"], "must be a finite number > 1"),
    (["--rope-scaling", "yarn:nan"], "must be a finite number > 1"),
    (["--seed", "-1"], "--seed: -1 is not accepted"),
    (["--seed", str(2**32)], "--seed: 4294967296 is not accepted"),
    (["--device", "bogus"], "--device: 'bogus' is not known"),
    (["--device", "cuda:0"], "no CUDA device"),
    (["--backend", "vllm", "--tensor-parallel", "0"], "--tensor-parallel: 0 must be at least 1"),
    (["--tensor-parallel", "2"], "--tensor-parallel: only for --backend vllm"),   # the backend's own flag
])
def test_run_refuses_numbers_out_of_range(capsys, tmp_path, tiny_model_dir, extra, message):
    out = tmp_path / "never"
    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--lengths", "256", "--depths", "50",
                                  "--out", str(out), *extra])
    assert message in err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--loss-bucket", "0"], "--loss-bucket: '0' must be a positive whole number"),
    (["--loss-length", "-5"], "--loss-length: '-5' is not a number"),
    (["--regression-limit", "0"], "--regression-limit: 0 is not accepted"),
    (["--regression-fewshot", "-1"], "--regression-fewshot: -1 must be >= 0"),
])
def test_suite_numbers_are_refused_before_any_suite_prepares(capsys, monkeypatch, tmp_path, tiny_model_dir,
                                                             extra, message):
    """A suite's numbers are checked when its options are made: BookQA prepares first and builds the
    corpus (a minute on an empty cache), which a later suite's bad number must not wait for."""
    from harness.data import embedded

    def no_corpus(*args, **kwargs):
        raise AssertionError("the corpus was built before the options were checked")

    monkeypatch.setattr(embedded, "build", no_corpus)
    out = tmp_path / "never"
    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--suite", "bookqa,regression,loss",
                                  "--out", str(out), *extra])
    assert message in err
    assert not out.exists()


def test_lengths_far_past_the_positions_need_a_rope_override(capsys, tmp_path, tiny_model_dir):
    """Past the positions runs (that is the finding), up to 32x; 5,000x is a typo, refused after the
    config is read and before the run directory exists."""
    out = tmp_path / "never"
    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--lengths", "10000k", "--depths", "50",
                                  "--out", str(out)])
    assert "5,000x the model's 2,048 positions; at most 32x (65,536)" in err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--tokens", "1e400"], "--tokens: '1e400' is too large"),
    (["--tokens", "1e14"], "too large (at most 10,000,000,000,000)"),
    (["--seq-len", "1"], "--seq-len: 1 is not accepted; give at least 16"),
    (["--max-bad-fraction", "nan"], "--max-bad-fraction: nan"),
    (["--max-bad-fraction", "1.5"], "--max-bad-fraction: 1.5"),
    (["--num-proc", "0"], "--num-proc: 0"),
    (["--seed", "-3"], "--seed: -3"),
])
def test_data_build_refuses_numbers_out_of_range(capsys, tmp_path, smollm2_dir, extra, message):
    out = tmp_path / "never"
    argv = ["data", "build", "--strategy", "per_source", "--tokens", "10k", "--seq-len", "1k",
            "--tokenizer", str(smollm2_dir), "--out", str(out), *extra]
    assert message in one_line_error(capsys, argv)
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--tokens", "1e400"], "--tokens: '1e400' is too large"),
    (["--lengths", "1k:2k:100000000000"], "at most 10,000"),
    (["--seeds", "0"], "--seeds: 0"),
    (["--seed", str(2**32 - 1), "--seeds", "2"], "--seed + --seeds - 1"),
    (["--lr", "nan"], "--lr: nan"),
    (["--save-every", "-1"], "--save-every: -1"),
    (["--regression-limit", "0"], "--regression-limit: 0"),
    (["--rope-theta", "inf"], "--rope-theta: inf"),
])
def test_ablate_refuses_numbers_out_of_range(capsys, tmp_path, extra, message):
    out = tmp_path / "never"
    assert message in one_line_error(capsys, ["ablate", "--preset", "tiny", "--out", str(out), *extra])
    assert not out.exists()
