"""The training engine: real training runs, outputs, exact resume, early stopping, overfitting detection."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import run_cli

import lstmdet
from lstmdet.checkpoint import read_checkpoint
from lstmdet.engine.train import Trainer, prepare_config
from lstmdet.errors import LstmdetError


def mnist_config(**train) -> dict:
    return {
        "task": "classify",
        "model": {
            "input": {"size": 28, "mean": [0.13] * 3, "std": [0.31] * 3},
            "backbone": {"name": "small_cnn", "widths": [16, 32]},
            "encoder": {"name": "bilstm", "hidden": 16},
            "head": {"name": "classifier", "num_classes": 10, "dropout": 0.2},
        },
        "data": {
            "train": {"name": "mnist_idx", "split": "train", "images": 2000},
            "val": {"name": "mnist_idx", "split": "val", "images": 500},
            "test": {"name": "mnist_idx", "split": "test", "images": 1000},
            "augment": {"preset": "light"},
        },
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.003, "workers": 0, "progress": False, **train},
    }


@pytest.mark.slow
def test_short_mnist_run_learns_and_writes_every_output(tmp_path):
    config = mnist_config(epochs=3)
    config["data"]["train"]["images"] = 4000
    summary = lstmdet.train(config, tmp_path)
    assert summary["task"] == "classify" and summary["epochs"] == 3 and summary["split"] == "test"
    assert summary["metrics"]["accuracy"] >= 0.85, summary["metrics"]["accuracy"]
    assert len(summary["metrics"]["confusion"]) == 10
    for name in ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "curves.png", "summary.json"):
        assert (tmp_path / name).is_file(), name
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "accuracy" in json.loads(lines[-1])["val"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert read_checkpoint(tmp_path / "best.pt")["classes"] == [str(i) for i in range(10)]


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """4 epochs straight == 2 epochs, stop, resume for 2 more (CPU), with dropout and augmentation on."""
    config = mnist_config(epochs=4, batch_size=16)
    config["data"]["train"]["images"] = 96
    config["data"]["val"]["images"] = 32
    del config["data"]["test"]
    straight = lstmdet.train(config, tmp_path / "straight")
    interrupted = Trainer(prepare_config(config), tmp_path / "split").fit(max_epochs=2)
    assert interrupted == {"finished": False, "epoch": 2}
    assert not (tmp_path / "split" / "summary.json").exists()
    resumed = lstmdet.train(config, tmp_path / "split", resume=True)
    a = read_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "split" / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [json.loads(line)["loss"] for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    resumed_losses = [
        json.loads(line)["loss"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    ]
    assert losses == resumed_losses
    assert straight["metrics"] == resumed["metrics"]


def test_out_dir_and_resume_guards(tmp_path):
    config = mnist_config(epochs=1)
    config["data"]["train"]["images"] = 32
    config["data"]["val"]["images"] = 16
    del config["data"]["test"]
    with pytest.raises(LstmdetError, match="cannot resume"):
        lstmdet.train(config, tmp_path / "new", resume=True)
    lstmdet.train(config, tmp_path / "run")
    with pytest.raises(LstmdetError, match="already holds a run"):
        lstmdet.train(config, tmp_path / "run")
    with pytest.raises(LstmdetError, match="differs from the checkpoint"):
        lstmdet.train(config, tmp_path / "run", overrides=["model.encoder.hidden=8"], resume=True)


def test_early_stopping(tmp_path):
    config = mnist_config(epochs=6, lr=0.0, warmup=0.0, scheduler="none", patience=2)
    config["data"]["train"]["images"] = 32
    config["data"]["val"]["images"] = 16
    del config["data"]["test"]
    summary = lstmdet.train(config, tmp_path)
    assert summary["epochs"] == 3  # epoch 1 sets the best; 2 and 3 do not improve with lr 0


@pytest.mark.slow
def test_overfits_a_tiny_detection_set(tmp_path):
    """FCOS on the built-in CNN learns 8 digit scenes by heart: mAP on those scenes > 0.9."""
    scenes = {"name": "digits_det", "images": 8, "seed": 3, "size": 64, "digits": [1, 2], "scale": [1.2, 1.6]}
    config = {
        "task": "detect",
        "model": {
            "input": {"size": 64, "max_size": 64},
            "backbone": {"name": "small_cnn", "widths": [32, 64, 64], "levels": ["c2", "c3"]},
            "neck": {"channels": 64},
            "encoder": {"name": "identity"},
            "head": {"name": "fcos", "num_classes": 10, "score_thresh": 0.05},
        },
        "data": {"train": scenes, "val": scenes, "augment": {"preset": "none"}},
        "train": {"epochs": 150, "batch_size": 8, "lr": 0.003, "workers": 0, "progress": False, "warmup": 0.1},
    }
    summary = lstmdet.train(config, tmp_path)
    assert summary["metrics"]["map"] > 0.9, summary["metrics"]


def test_cli_train_then_eval(tmp_path):
    config = mnist_config(epochs=1)
    config["data"]["train"]["images"] = 64
    config["data"]["val"]["images"] = 32
    config["data"]["test"]["images"] = 32
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("train", str(path), "--out", str(tmp_path / "run"), "--set", "train.batch_size=16")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["epochs"] == 1
    out = tmp_path / "eval.json"
    result = run_cli("eval", "--weights", str(tmp_path / "run" / "best.pt"), "--out", str(out),
                     "--data", "{name: mnist_idx, split: test, images: 50}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and len(metrics["confusion"]) == 10
    bad = run_cli("train", str(path), "--out", str(tmp_path / "bad"), "--set", "train.optimizer=adam")
    assert bad.returncode == 2 and "train.optimizer" in bad.stderr and "adamw, sgd" in bad.stderr
