"""Tracking: an evaluation's summary and a training run's per-step metrics in W&B (offline mode: the
records wandb wrote, read back) and in TensorBoard event files."""

from __future__ import annotations

import json
import struct

import pytest

from harness.trainer import loop
from tests.conftest import one_line_error

pytest.importorskip("wandb")


def wandb_records(run_dir) -> dict[str, list[dict]]:
    """history and summary values of the one offline W&B run under ``run_dir``/wandb: its .wandb file
    is LevelDB-log framed (7-byte file header, 32 KiB blocks, 7-byte record headers) protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    buf, pos, block, parts, out = path.read_bytes(), 7, 32768, [], {"history": [], "summary": []}
    assert buf[:4] == b":W&B"
    while pos + 7 <= len(buf):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, size, kind = struct.unpack("<IHB", buf[pos:pos + 7])
        if kind == 0 and size == 0:
            break
        parts.append(buf[pos + 7:pos + 7 + size])
        pos += 7 + size
        if kind in (1, 4):   # a whole record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            which = record.WhichOneof("record_type")
            if which == "history":
                out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            elif which == "summary":
                out["summary"].append({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.summary.update})
    return out


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_run_with_wandb_writes_its_summary(tmp_path, tiny_model_dir, monkeypatch):
    from harness.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    try:
        main(["run", "--model", str(tiny_model_dir), "--lengths", "256,512", "--depths", "0,100", "--dtype", "fp32",
              "--wandb", "longctx-test", "--out", str(out)])
    except SystemExit as exc:
        assert exc.code in (0, None)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    mean = sum(r["score"] for r in rows) / len(rows)
    summary = {k: v for update in wandb_records(out)["summary"] for k, v in update.items()}
    assert summary["eval/needle/all cells/paper (mean)"] == pytest.approx(mean)
    assert summary["eval/needle/256/paper (mean)"] == pytest.approx(
        sum(r["score"] for r in rows if r["length"] == 256) / 2)
    scalars = tensorboard_scalars(out / "tensorboard")
    assert scalars["eval/needle/all cells/paper (mean)"] == [(0, pytest.approx(mean))]


def test_training_logs_each_step_to_wandb(tmp_path, tiny_model_dir, shards, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "train"
    loop.train(loop.TrainConfig(base=str(tiny_model_dir), data=str(shards), seq_len=128, tokens=128 * 4 * 3,
                                out=str(out), batch_tokens=128 * 4, dtype="fp32", grad_ckpt=False, wandb="longctx-test"))
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    history = [h for h in wandb_records(out)["history"] if "train/loss" in h]
    assert [h["_step"] for h in history] == [m["step"] for m in metrics]
    assert [h["train/loss"] for h in history] == pytest.approx([m["loss"] for m in metrics])
    assert [v for _, v in tensorboard_scalars(out / "tensorboard")["train/loss"]] == pytest.approx([m["loss"] for m in metrics])
    # The project is not part of what the run computes: the same run resumes without it.
    assert "wandb" not in json.loads((out / "train_config.json").read_text())["config"]


def test_bad_wandb_project_is_one_line(capsys, tmp_path, tiny_model_dir):
    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--wandb", "a/b", "--out", str(tmp_path / "x")])
    assert "--wandb: 'a/b' is not a W&B project name" in err and not (tmp_path / "x").exists()
