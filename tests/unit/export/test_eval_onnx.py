"""``lstmdet eval`` with an exported ``.onnx`` file gives the checkpoint's metrics."""

from __future__ import annotations

import json

import pytest
from export_helpers import config, random_model
from helpers import run_cli

from lstmdet.checkpoint import default_model_path, save_checkpoint
from lstmdet.engine.evaluate import evaluate_checkpoint
from lstmdet.export import export

DIGITS = {"name": "digits_det", "images": 24, "seed": 3, "size": 128, "split": "test"}
MNIST = {"name": "mnist_idx", "split": "test", "images": 200}


def assert_same_metrics(got: dict, want: dict, tol: float) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=tol), key
        elif isinstance(value, dict):
            assert_same_metrics(got[key], value, tol)
        else:
            assert got[key] == value, key


def test_default_detector_onnx_gives_the_checkpoints_map(default_onnx):
    want = evaluate_checkpoint(default_model_path(), data=DIGITS, batch_size=5, device="cpu")
    got = evaluate_checkpoint(default_onnx, data=DIGITS, batch_size=5, device="cpu")
    assert want["map"] > 0.1
    assert_same_metrics(got, want, 1e-4)


def test_classifier_onnx_gives_the_checkpoints_accuracy_and_confusion(tmp_path):
    raw = config("mnist_cnn_bilstm")
    model = random_model(raw)
    weights = save_checkpoint(tmp_path / "cls.pt", model)
    onnx_path = export(weights, tmp_path / "cls.onnx")
    want = evaluate_checkpoint(weights, data=MNIST, batch_size=32, device="cpu")
    got = evaluate_checkpoint(onnx_path, data=MNIST, batch_size=32, device="cpu")
    assert_same_metrics(got, want, 1e-6)


def test_eval_cli_takes_an_onnx_file(tmp_path, default_onnx):
    out = tmp_path / "m.json"
    result = run_cli("eval", "--weights", str(default_onnx), "--data", json.dumps(DIGITS), "--out", str(out),
                     "--device", "cpu", "--quiet", "--batch-size", "8")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["images"] == 24
