"""ONNX Runtime as a detection runtime: ``detect --weights model.onnx`` writes what the PyTorch run writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import assert_same_prediction, assert_same_records, digit_scenes
from helpers import run_cli, save_tiny
from PIL import Image

import lstmdet
from lstmdet.checkpoint import default_model_path
from lstmdet.errors import ExportError, LstmdetError
from lstmdet.export import export
from lstmdet.export.runtime import OnnxModel, providers_for

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def run(src, out, weights, **options) -> dict:
    return lstmdet.detect(src, out, weights, workers=0, progress=False, **options)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Six generated digit scenes as PNGs (the shipped model's input size), a broken file and an empty one."""
    src = tmp_path_factory.mktemp("scenes")
    for i, image in enumerate(digit_scenes(128, 6, seed=11)):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src / f"s{i}.png")
    (src / "broken.png").write_text("not a png")
    (src / "zero.jpg").write_bytes(b"")
    return src


def test_detect_cli_with_onnx_weights_writes_what_pytorch_writes(tmp_path, scenes, default_onnx):
    outs = {}
    for kind, weights in (("pt", default_model_path()), ("onnx", default_onnx)):
        outs[kind] = tmp_path / kind
        result = run_cli("detect", str(scenes), "--weights", str(weights), "--out", str(outs[kind]), "--quiet",
                         "--workers", "0", "--batch-size", "4", env=ONE_THREAD)  # fmt: skip
        assert result.returncode == 1, result.stderr  # two unreadable files, as in the PyTorch run
        assert "files: 8 (6 ok, 2 unreadable)" in result.stdout
    assert_same_records(lines(outs["onnx"]), lines(outs["pt"]))
    assert sum(len(r.get("detections", [])) for r in lines(outs["pt"])) > 6
    for name in ("images.json", "options.json"):
        a, b = (json.loads((outs[k] / name).read_text()) for k in ("onnx", "pt"))
        if name == "options.json":
            a, b = ({k: v for k, v in d.items() if k != "weights_sha256"} for d in (a, b))
            a["options"].pop("weights"), b["options"].pop("weights")  # the file given: .onnx and .pt
        assert a == b, name
    summaries = [json.loads((outs[k] / "summary.json").read_text()) for k in ("onnx", "pt")]
    assert [(s["images"], s["ok"], s["failed"], s["detections"]) for s in summaries] == [
        (8, 6, 2, summaries[1]["detections"])
    ] * 2
    assert summaries[0]["weights"] == str(default_onnx)


def test_thresholds_may_be_tightened_not_loosened(tmp_path, scenes, default_onnx):
    run(scenes, tmp_path / "pt", default_model_path(), score_thresh=0.3, max_detections=5)
    run(scenes, tmp_path / "onnx", default_onnx, score_thresh=0.3, max_detections=5)
    assert_same_records(lines(tmp_path / "onnx"), lines(tmp_path / "pt"))
    assert max(len(r.get("detections", [])) for r in lines(tmp_path / "onnx")) <= 5
    for options, words in (
        ({"score_thresh": 0.01}, "exported with score_thresh 0.05"),
        ({"nms_thresh": 0.3}, "exported with NMS IoU threshold 0.6"),
        ({"max_detections": 500}, "exported with 100 detections per image"),
    ):
        with pytest.raises(LstmdetError, match=words):
            run(scenes, tmp_path / f"bad{len(words)}", default_onnx, **options)
    result = run_cli("detect", str(scenes), "--weights", str(default_onnx), "--out", str(tmp_path / "cli"),
                     "--conf", "0.01", "--quiet", env=ONE_THREAD)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "export again with `lstmdet export ... --conf 0.01`" in result.stderr


def noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_sequence_mode_with_a_stateful_onnx_model(tmp_path):
    ckpt = save_tiny(tmp_path / "convlstm.pt", {"name": "convlstm", "hidden": 8})
    onnx_path = export(ckpt, tmp_path / "convlstm.onnx")
    src = tmp_path / "videos"
    for video, seed in (("a", 1), ("b/c", 2)):
        (src / video).mkdir(parents=True)
        for t in range(4):
            Image.fromarray(noise(32, 48, seed * 10 + t)).save(src / video / f"f{t:03d}.png")  # the input size
    run(src, tmp_path / "pt", ckpt, sequence=True, batch_size=3)
    run(src, tmp_path / "onnx", onnx_path, sequence=True, batch_size=3)
    records = lines(tmp_path / "onnx")
    assert [r["video"] for r in records] == ["a"] * 4 + ["b/c"] * 4
    assert_same_records(records, lines(tmp_path / "pt"))


def test_fixed_batch_file_takes_any_number_of_images(tmp_path):
    ckpt = save_tiny(tmp_path / "tiny.pt")
    model = OnnxModel(export(ckpt, tmp_path / "b2.onnx", batch=2), device="cpu")
    assert model.batch == 2 and model.providers == ["CPUExecutionProvider"]
    images = [torch.from_numpy(noise(32, 48, i)).permute(2, 0, 1).float() / 255 for i in range(3)]
    ref = lstmdet.load(ckpt).predict(images)
    for got, want in zip(model.predict(images), ref, strict=True):
        assert_same_prediction(got, want)


def test_files_detect_cannot_run_are_refused_clearly(tmp_path):
    classifier = {
        "task": "classify",
        "model": {"input": {"size": 16}, "backbone": {"name": "small_cnn", "widths": [8]},
                  "encoder": {"name": "identity"}, "head": {"name": "classifier", "num_classes": 2}},
    }  # fmt: skip
    path = export(lstmdet.create_model(classifier), tmp_path / "cls.onnx")
    Image.fromarray(noise(16, 16, 0)).save(tmp_path / "a.png")
    with pytest.raises(LstmdetError, match=r"detect needs a detection model, but .*cls\.onnx is a classify model"):
        run(tmp_path / "a.png", tmp_path / "out", path)
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.ReLU(), (torch.rand(1, 3, 8, 8),), str(plain), dynamo=False)
    with pytest.raises(ExportError, match="is not a file lstmdet exported"):
        OnnxModel(plain)
    with pytest.raises(ExportError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(LstmdetError, match="unknown device 'tpu'"):
        providers_for("tpu")
