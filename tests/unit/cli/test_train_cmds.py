"""``lstmdet train`` and ``lstmdet eval`` from the command line: arguments, messages, and output that reads well
in a log file."""

from __future__ import annotations

import json
import re

import pytest
from helpers import classify_config, detect_config, run_cli

import lstmdet
from lstmdet.checkpoint import save_checkpoint
from lstmdet.cli.main import main


def test_eval_logs_plain_progress_lines_when_stderr_is_a_pipe(tmp_path):
    model = lstmdet.create_model(classify_config({"name": "identity"}, backbone={"name": "small_cnn", "widths": [8]}))
    save_checkpoint(tmp_path / "m.pt", model)
    done = run_cli("eval", "--weights", str(tmp_path / "m.pt"), "--batch-size", "4",
                   "--data", "{name: mnist_idx, split: test, images: 40}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("eval: ")]
    assert len(lines) == 10, done.stderr  # ten batches of 4: one line per tenth
    assert re.fullmatch(r"eval: 40/40 items \(100%\), [\d.]+ items/s", lines[-1]), lines[-1]
    assert 0.0 <= json.loads(done.stdout)["accuracy"] <= 1.0
    quiet = run_cli("eval", "--weights", str(tmp_path / "m.pt"), "--quiet",
                    "--data", "{name: mnist_idx, split: test, images: 8}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert quiet.returncode == 0 and "eval: " not in quiet.stderr, quiet.stderr


def test_train_help_documents_the_config_defaults(capsys):
    assert main(["train", "--help"]) == 0
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
