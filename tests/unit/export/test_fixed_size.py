"""A third-party part that runs at one input size only: the export falls back to that fixed size, and says why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_helpers import assert_same_detections, assert_same_prediction, config, digit_scenes, random_model, session
from torch import nn

from lstmdet import hookimpl
from lstmdet.export import export
from lstmdet.export.contract import parse_metadata
from lstmdet.export.runtime import OnnxModel
from lstmdet.manager import build_plugin_manager, build_registry


class GridBias(nn.Module):
    """A learned bias per feature-map cell: ``(B, T, C, grid, grid)`` only, as a ViT's position embedding."""

    def __init__(self, in_channels: int, grid: int = 8) -> None:
        super().__init__()
        self.out_channels = in_channels
        self.bias = nn.Parameter(torch.randn(1, 1, in_channels, grid, grid) * 0.1)

    def forward(self, x, state=None):
        return x + self.bias, None  # another h, w: a broadcast error, in PyTorch too


class _GridPlugin:
    @hookimpl
    def lstmdet_register_encoders(self, registry):
        registry.add("grid_bias", GridBias)


@pytest.fixture(scope="module")
def model():
    """``digits_det_identity`` at 64x64 with the grid bias on ``c3`` (stride 8: an 8x8 map)."""
    registry = build_registry(build_plugin_manager(disabled=[], extra_plugins=[("grid", _GridPlugin())]))
    raw = config("digits_det_identity", size=64, max_size=64)
    raw["model"]["encoder"] = {"name": "grid_bias", "grid": 8, "levels": ["c3"]}
    return random_model(raw, registry=registry)


def test_onnx_falls_back_to_the_fixed_size_and_runs_there(tmp_path, model):
    path = export(model, tmp_path / "grid.onnx")
    run = session(path)
    meta = parse_metadata(run.get_modelmeta().custom_metadata_map, str(path))
    assert meta["input"]["dynamic_size"] is False and meta["input"]["shape"] == [None, 3, 64, 64]
    why = meta["input"]["fixed_size"]
    assert why.startswith("H, W fixed at 64x64: the model itself fails in PyTorch on 77x47 images")
    assert "size of tensor a (6) must match the size of tensor b (8)" in why
    assert run.get_inputs()[0].shape == ["N", 3, 64, 64]
    images = digit_scenes(64, 3, seed=2)
    ref = model.predict(list(images))
    assert sum(len(r["scores"]) for r in ref) > 0
    got = run.run(None, {"images": images.numpy()})
    for i in range(3):
        assert_same_detections(got, i, ref[i])
    with pytest.raises(Exception, match="Got invalid dimensions"):
        run.run(None, {"images": np.zeros((1, 3, 77, 47), dtype=np.float32)})
    runtime = OnnxModel(path, device="cpu")  # detect's path: images fitted into 64x64
    assert runtime.dynamic_size is False
    for got_one, want in zip(runtime.predict(list(images)), ref, strict=True):
        assert_same_prediction(got_one, want)


def test_torchscript_records_the_same_fixed_size(tmp_path, model):
    extra = {"lstmdet.json": ""}
    path = export(model, tmp_path / "grid.torchscript", format="torchscript")
    scripted = torch.jit.load(str(path), _extra_files=extra)
    spec = json.loads(json.loads(extra["lstmdet.json"])["input"])
    assert spec["dynamic_size"] is False and "fails in PyTorch on 77x47 images" in spec["fixed_size"]
    images = digit_scenes(64, 2, seed=3)
    got = [t.numpy() for t in scripted(images)]
    for i, ref in enumerate(model.predict(list(images))):
        assert_same_detections(got, i, ref)
