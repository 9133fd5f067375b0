"""Detectors with dynamic ``H, W``: photos of any aspect ratio give PyTorch's detections through ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import PHOTOS, assert_same_prediction, assert_same_records, config, random_model, session

import lstmdet
from lstmdet.checkpoint import default_model_path, save_checkpoint
from lstmdet.data.images import read_image
from lstmdet.export import export
from lstmdet.export.contract import parse_metadata
from lstmdet.export.runtime import OnnxModel


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def detect_both(tmp_path: Path, weights: Path, onnx_path: Path, src: Path, **options) -> None:
    """``lstmdet.detect`` with the checkpoint and with the ONNX file write the same records."""
    for kind, w in (("pt", weights), ("onnx", onnx_path)):
        lstmdet.detect(src, tmp_path / kind, w, workers=0, progress=False, **options)
    pytorch = lines(tmp_path / "pt")
    assert sum(len(r.get("detections", [])) for r in pytorch) > 0
    assert_same_records(lines(tmp_path / "onnx"), pytorch)


def test_metadata_says_h_and_w_are_dynamic(default_onnx):
    meta = parse_metadata(session(default_onnx).get_modelmeta().custom_metadata_map, "default")
    assert meta["input"]["shape"] == [None, 3, None, None]
    assert meta["input"]["dynamic_size"] is True and meta["input"]["fixed_size"] is None
    assert meta["input"]["size_divisible"] == 16
    assert "image_sizes" in meta["input"]["optional_inputs"]
    names = [i.name for i in session(default_onnx).get_inputs()]
    assert names == ["images"]  # image_sizes is optional (an overridable initializer)


def test_default_model_on_coco30_photos_equals_pytorch_detect(tmp_path, default_onnx):
    """30 COCO photos of many aspect ratios, batches of 4 (mixed sizes padded together)."""
    detect_both(tmp_path, default_model_path(), default_onnx, PHOTOS[0].parent, batch_size=4)


def test_default_model_one_image_per_call_at_its_own_size(default_model, default_onnx):
    model = OnnxModel(default_onnx, device="cpu")
    for path in PHOTOS[:6]:
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1).float() / 255
        (got,) = model.predict([image])
        (want,) = default_model.predict([image])
        assert_same_prediction(got, want, what=path.name)


@pytest.mark.parametrize("name", ["examples/digits_det_bilstm", "examples/resnet18_convlstm_retinanet"])
def test_other_combination_on_coco30_photos_equals_pytorch_detect(tmp_path, name):
    raw = config(name)
    if "resnet" in name:
        raw["model"]["backbone"] = {**raw["model"]["backbone"], "pretrained": False}
        raw["model"]["input"] = {**raw["model"]["input"], "size": 96, "max_size": 160}
    model = random_model(raw)
    weights = save_checkpoint(tmp_path / "m.pt", model)
    onnx_path = export(weights, tmp_path / "m.onnx")
    meta = parse_metadata(session(onnx_path).get_modelmeta().custom_metadata_map, "m")
    assert meta["input"]["dynamic_size"] is True
    src = tmp_path / "photos"
    src.mkdir()
    for path in PHOTOS[:12]:
        (src / path.name).symlink_to(path)
    detect_both(tmp_path, weights, onnx_path, src, batch_size=5, score_thresh=0.015)
