"""The continual-pretraining trainer on real tiny models and real packed shards (CPU)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from harness import distributed, models
from harness.cli import main
from harness.errors import UserError
from harness.data import build
from harness.trainer import loop
from harness.data import shards as shard_io


def _cfg(tiny_model_dir, shards, out, **kw):
    base = dict(base=str(tiny_model_dir), data=str(shards), seq_len=128, tokens=128 * 8 * 12, out=str(out),
                lr=3e-3, batch_tokens=128 * 8, warmup_steps=1, dtype="fp32", grad_ckpt=False)
    base.update(kw)
    return loop.TrainConfig(**base)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_fits_a_tiny_packed_set(tiny_model_dir, shards, tmp_path):
    # 4 sequences seen 60 times: a 2-layer model must memorise them far below its start (~10.8;
    # it reaches about 1.8).
    data = shards.parent / "tiny4"
    if not data.exists():
        build.build(source=f"jsonl:{shards.parent / 'docs.jsonl'}", strategy="cut_target", tokens=4 * 128,
                    seq_len=128, tokenizer=str(tiny_model_dir), seed=0, out=data)
    final = loop.train(_cfg(tiny_model_dir, data, tmp_path / "fit", tokens=128 * 4 * 60, batch_tokens=128 * 4,
                            lr=1e-2, micro_batch=4))
    losses = _losses(tmp_path / "fit")
    assert losses[0] > 10.0 and losses[-1] < 2.5, losses[::10]
    record = json.loads((tmp_path / "fit" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["tokens_per_s"] > 0 and 0 < record["mfu"] < 1 and record["grad_norm"] > 0
    assert list((tmp_path / "fit" / "tensorboard").glob("events.out.tfevents.*"))
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(final).config.vocab_size == 49152


def test_resume_gives_the_uninterrupted_losses(tiny_model_dir, shards, tmp_path):
    small = dict(tokens=128 * 4 * 8, batch_tokens=128 * 4, save_every=4)  # 8 steps of 4 sequences
    whole = tmp_path / "whole"
    loop.train(_cfg(tiny_model_dir, shards, whole, **small))
    split = tmp_path / "split"
    cfg = _cfg(tiny_model_dir, shards, split, **small)
    loop.train(cfg, stop_after=4)
    assert len(_losses(split)) == 4 and (split / "checkpoints" / "step-000004" / "model.safetensors").is_file()
    loop.train(cfg, resume=True)
    a, b = _losses(whole), _losses(split)
    assert len(a) == len(b) == 8
    assert b == pytest.approx(a, rel=1e-5, abs=1e-5)
    with pytest.raises(UserError, match="different config"):
        loop.train(_cfg(tiny_model_dir, shards, split, **{**small, "lr": 1e-3}), resume=True)
    assert loop.train(cfg) == split / "final"   # finished: nothing is redone (test_faults_resume)
    assert _losses(split) == b


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_metrics_record_the_rate_each_step_updated_with(tiny_model_dir, shards, tmp_path, engine):
    """metrics.jsonl's lr is the rate of that step's update: lr * k / warmup for step k of the warm-up
    (it was the next step's rate: 2/4, 3/4, 1, ... for a 4-step warm-up). A warm-up of 1 is none."""
    if engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    out = tmp_path / engine
    launch_env = {key: os.environ.get(key) for key in distributed.LAUNCH_ENV}
    loop.train(_cfg(tiny_model_dir, shards, out, tokens=128 * 4 * 6, batch_tokens=128 * 2, micro_batch=1,
                    warmup_steps=4, lr=1e-3, engine=engine))
    # DeepSpeed's group of one set RANK, LOCAL_RANK and WORLD_SIZE: gone when the run ends (a later
    # lm_eval CLI took the inherited LOCAL_RANK for a launch).
    assert {key: os.environ.get(key) for key in distributed.LAUNCH_ENV} == launch_env
    rates = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    from harness.trainer.engines import _optimizer

    opt, sched = _optimizer(torch.nn.Linear(2, 2), 1e-4, 0.0, warmup=1)
    assert sched.get_last_lr() == [1e-4]   # the first update at the full rate


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
def test_document_masking_matches_documents_run_separately(tiny_model_dir, attn):
    """Packed rows with per-document positions equal each document run alone, with sdpa (a dense
    mask: CPU only) and flex_attention (block masks, what CUDA gets without flash-attn), two rows."""
    loaded = models.load(str(tiny_model_dir), dtype="fp32", attn=attn)
    model = loaded.model
    assert model.config._attn_implementation == attn
    # Each document alone is also checked against sdpa: on an AVX2 CPU, flex_attention's C++ kernel
    # gave NaN for the 40-token one until harness.flex_cpu padded it to a whole block.
    sdpa = models.load(str(tiny_model_dir), dtype="fp32", attn="sdpa").model if attn != "sdpa" else model
    torch.manual_seed(0)
    rows = [[40, 70, 18], [60, 68]]
    docs = [[torch.randint(100, 40000, (n,)) for n in lens] for lens in rows]
    batch = shard_io.Batch(torch.stack([torch.cat(d) for d in docs]), rows)
    with torch.no_grad():
        packed = model(input_ids=batch.input_ids, position_ids=shard_io.position_ids(batch.doc_lens),
                       use_cache=False).logits
        for r, row_docs in enumerate(docs):
            start = 0
            for doc in row_docs:
                alone = model(input_ids=doc[None], use_cache=False).logits[0]
                assert torch.isfinite(alone).all(), (attn, len(doc))
                assert torch.allclose(alone, sdpa(input_ids=doc[None], use_cache=False).logits[0], atol=1e-4), len(doc)
                assert torch.allclose(packed[r, start:start + len(doc)], alone, atol=1e-4), (attn, r, start)
                start += len(doc)
        # Without the per-document positions attention crosses documents: the later ones differ.
        crossed = model(input_ids=batch.input_ids, use_cache=False).logits[0]
        assert not torch.allclose(crossed[40:110], packed[0, 40:110], atol=1e-2)
    labels = shard_io.labels(batch, doc_mask=True)
    assert labels[0, 40] == -100 and labels[0, 110] == -100 and labels[0, 0] != -100
    if attn != "sdpa":  # the one-row layout is shard_io's: once is enough (a third flex compile: 28 s cold on AVX2)
        return
    # The micro-batch as one row (what FlashAttention-2's varlen path needs): the same loss, exactly
    # the same targets (a row's first token does not become the previous row's last target).
    from harness.trainer.lm_head_loss import ChunkedLossModel

    pos = shard_io.position_ids(batch.doc_lens)
    flat = shard_io.one_row(batch.input_ids, labels, pos)
    assert flat[0].shape == (1, 256) and flat[1][0, 128] == -100 and flat[2][0, 128] == 0
    with torch.no_grad():
        fused = ChunkedLossModel(model, chunk=64)
        assert torch.allclose(fused(*flat), fused(batch.input_ids, labels, pos), atol=1e-5)


def test_attention_is_chosen_never_silently():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert models.attn_implementation(cpu) == "sdpa"
    assert models.attn_implementation(cpu, "flex_attention", doc_mask=True) == "flex_attention"
    if importlib.util.find_spec("flash_attn") is None:
        assert models.attn_implementation(cuda, doc_mask=True) == "flex_attention"   # never a dense T x T mask
        assert models.attn_implementation(cuda) == "sdpa"
        with pytest.raises(UserError, match="needs CUDA and the flash-attn package"):
            models.attn_implementation(cuda, "flash_attention_2")
    with pytest.raises(UserError, match="dense T x T"):
        models.attn_implementation(cuda, "sdpa", doc_mask=True)
    with pytest.raises(UserError, match="--attn: 'flash' is not known"):
        models.attn_implementation(cpu, "flash")


def test_rope_settings_are_written_and_read_back(tiny_model_dir, shards, tmp_path):
    # One step of two sequences: what is checked is what the checkpoint carries, not the training (bf16
    # is emulated, and slow, on a CPU without AVX512-BF16: 2 steps of 8 sequences took 27 s under AVX2).
    final = loop.train(_cfg(tiny_model_dir, shards, tmp_path / "rope", tokens=128 * 2, batch_tokens=128 * 2,
                            rope_theta=5e5, rope_scaling=("linear", 2.0), grad_ckpt=True, dtype="bf16"))
    assert len(_losses(tmp_path / "rope")) == 1
    saved = json.loads((tmp_path / "rope" / "train_config.json").read_text())
    assert saved["config"]["dtype"] == "bf16" and saved["precision"]["requested"] == "bf16"
    config = json.loads((final / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 5e5 and config["rope_parameters"]["factor"] == 2.0
    info = models.load(str(final), dtype="fp32").info  # no flags: the checkpoint carries its RoPE
    assert info["rope_parameters"]["rope_theta"] == 5e5 and info["rope_parameters"]["rope_type"] == "linear"
    assert info["effective_max_positions"] == 4096


def test_deepspeed_zero3_two_cpu_processes(tiny_model_dir, shards, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "harness", "train", "--base", str(tiny_model_dir), "--data", str(shards), "--seq-len", "128",
           "--tokens", str(128 * 4 * 3), "--batch-tokens", str(128 * 4), "--engine", "deepspeed", "--dtype", "fp32",
           "--no-grad-ckpt", "--lr", "1e-3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_losses(out)) == 3
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(out / "final")
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert trained.config.vocab_size == start.config.vocab_size
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(trained.state_dict()[name], start.state_dict()[name])  # it trained
    assert (out / "final" / "deepspeed").is_dir()  # optimizer state, for --resume


def _err(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err and err[-1].startswith("error: "), err
    return err[-1]


def test_bad_training_input(capsys, tiny_model_dir, shards, tmp_path):
    args = ["train", "--base", str(tiny_model_dir), "--data", str(shards), "--dtype", "fp32"]
    assert "above the shards'" in _err(capsys, [*args, "--seq-len", "256", "--tokens", "10k", "--out", str(tmp_path / "a")])
    assert "smaller than one batch" in _err(capsys, [*args, "--seq-len", "128", "--tokens", "1000",
                                                     "--batch-tokens", "1024", "--out", str(tmp_path / "b")])
    assert "known: torch, deepspeed" in _err(capsys, [*args, "--seq-len", "128", "--tokens", "10k", "--engine", "jax",
                                                      "--out", str(tmp_path / "c")])
    assert "does not exist" in _err(capsys, [*args, "--seq-len", "128", "--tokens", "10k", "--engine", "deepspeed",
                                             "--deepspeed-config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "d")])
    (tmp_path / "bad.json").write_text("{\"zero_optimization\": {\"stage\": 7}}")
    assert "stage in 0-3" in _err(capsys, [*args, "--seq-len", "128", "--tokens", "10k", "--engine", "deepspeed",
                                           "--deepspeed-config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "e")])
    (tmp_path / "file").write_text("x")
    assert "--out" in _err(capsys, [*args, "--seq-len", "128", "--tokens", "10k", "--out", str(tmp_path / "file" / "x")])
    # Shards from another tokenizer: their vocabulary hash does not match the base's.
    other = tmp_path / "other-shards"
    shutil.copytree(shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"]["vocab_hash"] = "0123456789abcdef"
    (other / "manifest.json").write_text(json.dumps(manifest))
    err = _err(capsys, ["train", "--base", str(tiny_model_dir), "--data", str(other), "--seq-len", "128",
                        "--tokens", "10k", "--out", str(tmp_path / "f")])
    assert "not the base's tokenizer" in err
    for name in "abcdef":
        assert not (tmp_path / name / "final").exists()


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr: nan is not accepted"), (["--lr", "-1"], "--lr: -1.0 is not accepted"),
    (["--lr", "inf"], "--lr: inf"), (["--micro-batch", "0"], "--micro-batch: 0"),
    (["--seed", "-1"], "--seed: -1"), (["--seq-len", "1"], "at least 16 tokens"),
    (["--warmup-steps", "-3"], "--warmup-steps: -3"), (["--peak-tflops", "nan"], "--peak-tflops: nan"),
])
def test_numbers_out_of_range_are_refused_before_anything_is_made(capsys, tiny_model_dir, shards, tmp_path,
                                                                   flags, message):
    args = ["train", "--base", str(tiny_model_dir), "--data", str(shards), "--dtype", "fp32", "--tokens", "10k"]
    if "--seq-len" not in flags:
        args += ["--seq-len", "128"]
    with pytest.raises(SystemExit) as exc:
        main([*args, *flags, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_chunked_loss_equals_transformers_loss_and_gradients(tiny_model_dir):
    from harness.trainer.lm_head_loss import ChunkedLossModel

    model = models.load(str(tiny_model_dir), dtype="fp32").model.train()
    torch.manual_seed(1)
    ids = torch.randint(100, 40000, (2, 300))
    labels = ids.clone()
    labels[0, 50] = -100
    ref = model(input_ids=ids, labels=labels, use_cache=False).loss
    ref.backward()
    ref_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    ours = ChunkedLossModel(model, chunk=64)(ids, labels)
    ours.backward()
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(model.model.layers[0].mlp.up_proj.weight.grad, ref_grad, atol=1e-6)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tiny_model_dir, shards, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(loop.Diverged, match=r"loss became (nan|inf) at step \d+; training stopped; last good checkpoint: .*step-"):
        loop.train(_cfg(tiny_model_dir, shards, out, lr=1e9, clip=1e12, save_every=1, tokens=128 * 8 * 8))
    good = loop.latest_checkpoint(out)
    assert good is not None and (good / "model.safetensors").is_file()
    assert not list((out / "checkpoints").glob(".*.tmp")) and not (out / "final").exists()


def test_deepspeed_engine_without_a_launcher(tiny_model_dir, shards, tmp_path):
    """`harness train --engine deepspeed` as a plain process: a process group of one (DeepSpeed alone
    would look for mpi4py)."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "ds1"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-m", "harness", "train", "--base", str(tiny_model_dir), "--data", str(shards),
                           "--seq-len", "128", "--tokens", str(128 * 4 * 2), "--batch-tokens", str(128 * 4),
                           "--engine", "deepspeed", "--dtype", "fp32", "--no-grad-ckpt", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_losses(out)) == 2 and "mpi4py" not in proc.stderr
    # ZeRO-3 computes the fused chunked loss inside the LM head's call (its weight gathered there):
    # the same losses as the torch engine's fused loss on the same batches (fp32; rounding apart).
    # The torch run in process, from the same command line (a second interpreter costs seconds under AVX2).
    torch_out = tmp_path / "torch1"
    main(["train", "--base", str(tiny_model_dir), "--data", str(shards), "--seq-len", "128", "--tokens",
          str(128 * 4 * 2), "--batch-tokens", str(128 * 4), "--dtype", "fp32", "--no-grad-ckpt", "--out", str(torch_out)])
    assert _losses(out) == pytest.approx(_losses(torch_out), abs=2e-4)


def test_ablation_stage_through_a_launcher_rebuilds_the_same_config(tiny_model_dir, shards, tmp_path):
    """`harness ablate --launcher CMD`: a training stage runs as CMD's processes (here torchrun with two
    CPU ranks), from flags that rebuild exactly the stage's config (its hash), and resumes as a stage."""
    from rich.console import Console

    from harness import ablate

    cfg = loop.TrainConfig(base=str(tiny_model_dir), data=str(shards), seq_len=128, tokens=128 * 4 * 2,
                           batch_tokens=128 * 4, lr=1e-3, grad_ckpt=False, dtype="fp32", rope_theta=2e4,
                           doc_mask=True, out=str(tmp_path / "stage"))
    launcher = f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 --master_port 29541"
    final = ablate._train(cfg, Console(quiet=True), launcher)
    assert final == tmp_path / "stage" / "final" and (final / "config.json").is_file()
    assert json.loads((tmp_path / "stage" / "train_config.json").read_text())["config"] == cfg.hashed()
    assert len(_losses(tmp_path / "stage")) == 2
    assert ablate._train(cfg, Console(quiet=True), launcher) == final     # finished: left as it is
    with pytest.raises(UserError, match="--launcher: 'no-such-launcher' is not a program on PATH"):
        ablate.launcher_argv("no-such-launcher --nproc_per_node 2")
    if shutil.which("deepspeed"):   # its launcher takes the harness as --module
        assert ablate.launcher_argv("deepspeed --num_gpus 8")[-2:] == ["--module", "harness"]
