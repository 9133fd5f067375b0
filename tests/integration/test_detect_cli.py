"""``lstmdet detect`` as a user runs it: the installed console script in a subprocess, and its exit status."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

import lstmdet
from lstmdet.checkpoint import save_checkpoint
from lstmdet.cli.main import main

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny model: threads only add overhead


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    config = {
        "task": "detect",
        "model": {
            "input": {"size": 32, "max_size": 48},
            "backbone": {"name": "small_cnn", "widths": [8, 8], "levels": ["c2"]},
            "encoder": {"name": "identity"},
            "head": {"name": "fcos", "num_classes": 2, "num_convs": 1, "norm": "none", "score_thresh": 0.0},
        },
    }
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", lstmdet.create_model(config))


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(src / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(src / "nested" / "B.PNG")
    return src


def test_all_readable_exit_0_and_unreadable_exit_1(tmp_path, weights, folder):
    out = tmp_path / "out"
    result = run_cli("detect", str(folder), "--weights", str(weights), "--out", str(out), "--workers", "1",
                     "--batch-size", "2", "--quiet", env=ONE_THREAD)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"outputs in {out}" in result.stdout and "files: 2 (2 ok, 0 unreadable)" in result.stdout
    assert [json.loads(line)["file"] for line in (out / "detections.jsonl").read_text().splitlines()] == [
        "a.jpg",
        "nested/B.PNG",
    ]

    (folder / "zero.jpg").write_bytes(b"")
    (folder / "nested" / "text.png").write_text("not a png")
    out = tmp_path / "out2"
    result = run_cli("detect", str(folder), "--weights", str(weights), "--out", str(out), "--workers", "0",
                     "--save-images", "--conf", "0.0", "--max-det", "3", "--quiet", env=ONE_THREAD)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "files: 4 (2 ok, 2 unreadable)" in result.stdout and "could not be read" in result.stderr
    assert "Traceback" not in result.stderr
    records = {r["file"]: r for r in map(json.loads, (out / "detections.jsonl").read_text().splitlines())}
    assert "empty" in records["zero.jpg"]["error"] and "not an image" in records["nested/text.png"]["error"]
    assert len(records["a.jpg"]["detections"]) == 3
    assert (out / "images" / "a.jpg").is_file() and (out / "images" / "nested" / "B.PNG").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["ok"], summary["failed"], summary["max_detections"]) == (4, 2, 2, 3)


def test_default_model_is_announced_once(tmp_path, folder):
    """Without --weights the shipped digit detector runs, and one stderr line says so and how to change it."""
    for i in range(5):
        Image.new("RGB", (20, 20)).save(folder / f"extra{i}.png")
    result = run_cli("detect", str(folder), "--out", str(tmp_path / "out"), "--quiet", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "--weights" in line]
    assert len(notes) == 1 and "shipped with lstmdet" in notes[0] and "digits" in notes[0]
    with_weights = run_cli("detect", str(folder), "--out", str(tmp_path / "out2"), "--quiet", "--weights",
                           str(tmp_path / "missing.pt"), env=ONE_THREAD)  # fmt: skip
    assert "shipped with lstmdet" not in with_weights.stderr


def test_usage_errors_exit_2_with_one_line(tmp_path, weights, folder, capsys):
    result = run_cli("detect", str(tmp_path / "missing"), "--weights", str(weights), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr

    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    assert main(["detect", str(folder), "--weights", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert main(["detect", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "exit status" in help_text and "1  some files could not be read" in help_text


def test_rerun_with_exist_ok_and_resume_with_the_recorded_options(tmp_path, weights, folder, capsys):
    out = tmp_path / "out"
    first = ["detect", str(folder), "--out", str(out), "--weights", str(weights), "--batch-size", "1", "--conf", "0.1",
             "--workers", "0", "--quiet"]  # fmt: skip
    assert main(first) == 0
    capsys.readouterr()
    assert main(first) == 2
    assert "--exist-ok to replace it" in capsys.readouterr().err
    assert main([*first, "--exist-ok"]) == 0
    reference = (out / "detections.jsonl").read_text()

    # an interrupted run (one of two lines kept) resumed with no flags: the recorded weights and options
    (out / "detections.jsonl").write_text(reference.splitlines(keepends=True)[0])
    assert main(["detect", str(folder), "--out", str(out), "--resume", "--quiet"]) == 0
    assert (out / "detections.jsonl").read_text() == reference
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["resumed"], summary["weights"], summary["score_thresh"]) == (1, str(weights), 0.1)
    assert "shipped with lstmdet" not in capsys.readouterr().err

    assert main(["detect", str(folder), "--out", str(out), "--resume", "--conf", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--conf" in err and "0.3" in err and "0.1" in err


def test_weights_default_names_the_shipped_model(tmp_path, folder, capsys):
    out = tmp_path / "out"
    assert main(["detect", str(folder), "--out", str(out), "--weights", "default", "--workers", "0", "--quiet"]) == 0
    assert "shipped with lstmdet" not in capsys.readouterr().err  # asked for by name: no note
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == "default" and summary["classes"] == [str(d) for d in range(10)]
