"""The training engine: real training runs, outputs, exact resume, early stopping, overfitting detection."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import run_cli

import lstmdet
from lstmdet.checkpoint import read_checkpoint
from lstmdet.config import load_config
from lstmdet.engine.data import EpochSampler
from lstmdet.engine.train import Trainer
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


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run) -> list[float]:
    return [record["loss"] for record in _records(run)]


def _assert_same_training(a_run, b_run) -> None:
    """The two runs end with identical ``last.pt`` weights and log identical epoch losses."""
    a = read_checkpoint(a_run / "last.pt")["state_dict"]
    b = read_checkpoint(b_run / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _losses(a_run) == _losses(b_run)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """4 epochs straight == 2 epochs, stop, resume for 2 more (CPU), with dropout and augmentation on."""
    config = mnist_config(epochs=4, batch_size=16)
    config["data"]["train"]["images"] = 96
    config["data"]["val"]["images"] = 32
    del config["data"]["test"]
    straight = lstmdet.train(config, tmp_path / "straight")
    interrupted = Trainer(load_config(config), tmp_path / "split").fit(max_epochs=2)
    assert interrupted == {"finished": False, "epoch": 2}
    assert not (tmp_path / "split" / "summary.json").exists()
    resumed = lstmdet.train(config, tmp_path / "split", resume=True)
    _assert_same_training(tmp_path / "straight", tmp_path / "split")
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


def test_the_datasets_category_ids_are_adopted_unless_the_config_gives_others():
    from types import SimpleNamespace

    from lstmdet.engine.train import _adopt_classes
    from lstmdet.errors import ConfigError

    dataset = SimpleNamespace(classes=["cat", "dog"], category_ids=[3, 90])
    config = {"task": "detect", "data": {"train": {"name": "coco"}},
              "model": {"backbone": "small_cnn", "head": {"name": "fcos", "num_classes": 2}}}  # fmt: skip
    cfg = load_config(config)
    _adopt_classes(cfg, dataset)
    assert (cfg["model"]["classes"], cfg["model"]["category_ids"]) == (["cat", "dog"], [3, 90])
    config["model"]["category_ids"] = [1, 2]
    with pytest.raises(ConfigError, match=r"model.category_ids.*\[1, 2\].*\[3, 90\]"):
        _adopt_classes(load_config(config), dataset)


def test_a_dataset_of_another_task_is_refused(tmp_path):
    config = mnist_config()
    config["data"]["val"] = {"name": "digits_det", "images": 2}
    with pytest.raises(LstmdetError, match=r"data.val: dataset 'digits_det' is a detect dataset but the model is a"):
        lstmdet.train(config, tmp_path)


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


def _stop_after(*points: tuple[int, int]):
    """A ``should_stop`` that says yes at each ``(epoch, step)`` in ``points`` (seen via on_progress)."""
    seen: list[tuple[int, int]] = []

    def on_progress(event: dict) -> None:
        if event["phase"] == "step":
            seen.append((event["epoch"], event["step"]))

    return (lambda: bool(seen) and seen[-1] in points), on_progress


def test_sampler_start_skips_the_first_items():
    sampler = EpochSampler(10, shuffle=True, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.set_epoch(2, start=99)
    assert list(sampler) == [] and len(sampler) == 0
    sampler.set_epoch(3)
    assert len(sampler) == 10 and list(sampler) != full
    with pytest.raises(ValueError, match="start"):
        sampler.set_epoch(0, start=-1)


def test_stop_mid_epoch_and_resume_equals_an_uninterrupted_run(tmp_path):
    """2 epochs straight == stopped at batch 3 and 6 (the last) of epoch 1 and 2 of epoch 2, resumed each time."""
    config = mnist_config(epochs=2, batch_size=16)
    config["data"]["train"]["images"] = 96  # 6 batches an epoch
    config["data"]["val"]["images"] = 32
    del config["data"]["test"]
    events: list[dict] = []
    straight = Trainer(load_config(config), tmp_path / "straight").fit(on_progress=events.append)
    steps = [(e["epoch"], e["step"]) for e in events if e["phase"] == "step"]
    assert steps == [(epoch, step) for epoch in (1, 2) for step in range(1, 7)]
    assert all(e["epochs"] == 2 and e["steps"] == 6 and e["loss"] > 0 for e in events)
    ends = [e for e in events if e["phase"] == "epoch"]
    assert [(e["epoch"], e["step"]) for e in ends] == [(1, 6), (2, 6)]
    assert ends[0]["loss"] == _losses(tmp_path / "straight")[0] and 0.0 <= ends[1]["metric"] <= 1.0
    assert events.index(ends[0]) == 6  # the epoch event follows the epoch's last step

    split = tmp_path / "split"
    for stop, expected in [((1, 3), (0, 3)), ((1, 6), (0, 6)), ((2, 2), (1, 2))]:
        should_stop, on_progress = _stop_after(stop)
        result = Trainer(load_config(config), split, resume=(split / "last.pt").exists()).fit(
            should_stop=should_stop, on_progress=on_progress
        )
        assert result == {"finished": False, "epoch": expected[0], "step": expected[1], "stopped": True}
        state = read_checkpoint(split / "last.pt")["train_state"]
        assert (state["epoch"], state["step"]) == expected
        lines = len(_losses(split)) if (split / "metrics.jsonl").exists() else 0
        assert lines == expected[0]  # no line for a partial epoch
    assert not (split / "summary.json").exists()
    with pytest.raises(LstmdetError, match=r"train\.batch_size=16"):
        Trainer(load_config(config, ["train.batch_size=8"]), split, resume=True)
    resumed = Trainer(load_config(config), split, resume=True).fit()

    _assert_same_training(tmp_path / "straight", split)
    assert read_checkpoint(split / "last.pt")["train_state"]["step"] == 0
    assert len(_losses(split)) == 2
    assert straight["metrics"] == resumed["metrics"]


def test_resume_accepts_a_checkpoint_without_step(tmp_path):
    """last.pt files written before mid-epoch stops existed (no "step"/"partial") still resume."""
    config = mnist_config(epochs=2, batch_size=16)
    config["data"]["train"]["images"] = 32
    config["data"]["val"]["images"] = 16
    del config["data"]["test"]
    assert Trainer(load_config(config), tmp_path).fit(max_epochs=1) == {"finished": False, "epoch": 1}
    data = torch.load(tmp_path / "last.pt", weights_only=True)
    del data["train_state"]["step"], data["train_state"]["partial"]
    torch.save(data, tmp_path / "last.pt")
    trainer = Trainer(load_config(config), tmp_path, resume=True)
    assert (trainer.epoch, trainer.step, trainer.partial["loss"]) == (1, 0, 0.0)
    assert trainer.fit()["epochs"] == 2


def test_progress_shows_loss_and_images_per_second(tmp_path, capfd):
    config = mnist_config(epochs=1, progress=True)
    config["data"]["train"]["images"] = 64
    config["data"]["val"]["images"] = 16
    del config["data"]["test"]
    lstmdet.train(config, tmp_path)
    err = capfd.readouterr().err  # not a terminal: plain lines
    assert "\r" not in err
    last = [line for line in err.splitlines() if line.startswith("epoch 1/1: ")][-1]
    assert last.startswith("epoch 1/1: 2/2 batches (100%), ") and "loss=" in last and "img_s=" in last


def test_best_checkpoint_is_the_best_validation_epoch(tmp_path):
    from lstmdet.engine.evaluate import evaluate_checkpoint

    config = mnist_config(epochs=4, lr=0.01)
    config["data"]["train"]["images"] = 256
    config["data"]["val"]["images"] = 64
    del config["data"]["test"]
    summary = lstmdet.train(config, tmp_path)
    scores = [record["val"]["accuracy"] for record in _records(tmp_path)]
    assert summary["best_epoch"] == 1 + scores.index(max(scores))
    again = evaluate_checkpoint(tmp_path / "best.pt", data=config["data"]["val"])
    assert again["accuracy"] == max(scores) == summary["metrics"]["accuracy"]


@pytest.mark.slow
def test_resume_with_loader_processes_equals_an_uninterrupted_run(tmp_path):
    """As test_resume_equals_an_uninterrupted_run, with 2 DataLoader worker processes augmenting."""
    config = mnist_config(epochs=2, batch_size=16, workers=2)
    config["data"]["train"]["images"] = 64
    config["data"]["val"]["images"] = 16
    del config["data"]["test"]
    lstmdet.train(config, tmp_path / "straight")
    assert Trainer(load_config(config), tmp_path / "split").fit(max_epochs=1) == {"finished": False, "epoch": 1}
    lstmdet.train(config, tmp_path / "split", resume=True)
    _assert_same_training(tmp_path / "straight", tmp_path / "split")


@pytest.mark.gpu
def test_amp_training_on_cuda_learns(tmp_path):
    config = mnist_config(epochs=2, amp=True, device="cuda")
    summary = lstmdet.train(config, tmp_path)
    assert summary["device"].startswith("cuda")
    assert summary["metrics"]["accuracy"] >= 0.5, summary["metrics"]["accuracy"]  # chance is 0.1
    assert "scale" in read_checkpoint(tmp_path / "last.pt")["train_state"]["scaler"]  # the GradScaler ran
