"""``lstmdet train`` and ``lstmdet eval`` arguments and messages."""

from __future__ import annotations

import json

import pytest
from helpers import classify_config, detect_config

import lstmdet
from lstmdet.checkpoint import save_checkpoint
from lstmdet.cli.main import main


def test_train_help_documents_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "model.encoder identity" in text and "512 (detect" in text and "224 (classify)" in text


@pytest.mark.parametrize("model_task", ["detect", "classify"])
def test_eval_refuses_a_dataset_of_the_other_task(model_task, tmp_path, capsys):
    config = detect_config({"name": "identity"}) if model_task == "detect" else classify_config({"name": "identity"})
    weights = save_checkpoint(tmp_path / "m.pt", lstmdet.create_model(config))
    data = "{name: mnist_idx, split: test, images: 8}" if model_task == "detect" else "{name: digits_det, images: 2}"
    assert main(["eval", "--weights", str(weights), "--data", data]) == 2
    err = capsys.readouterr().err
    other = "classify" if model_task == "detect" else "detect"
    assert err.count("\n") == 1 and f"is a {other} dataset but the model is a {model_task} model" in err


def test_eval_takes_the_shipped_model_by_the_name_default(capsys):
    assert main(["eval", "--weights", "default", "--data", "{name: digits_det, images: 4, split: test, seed: 7}"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 4 and metrics["map"] > 0.3
