"""``lstmdet.export``: ONNX files (run in ONNX Runtime) and TorchScript files give PyTorch's outputs.

Models: the shipped default model (a trained ``small_cnn + bilstm + fcos`` detector) and every built-in
combination that ``configs/`` and ``examples/`` use, with random weights (nothing downloaded).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from export_helpers import SCORE_TOL, assert_same_detections, config, digit_scenes, photos, random_model, session
from torch import nn

import lstmdet
from lstmdet import hookimpl
from lstmdet.errors import ExportError
from lstmdet.export import export
from lstmdet.export.contract import META_KEYS, input_size, parse_metadata
from lstmdet.manager import build_plugin_manager, build_registry


def test_default_model_matches_pytorch_on_photos_and_digit_scenes(default_model, default_onnx):
    images = torch.cat([photos((128, 128), 4), digit_scenes(128, 3)])
    ref = default_model.predict(list(images))
    assert all(len(r["scores"]) > 0 for r in ref)
    run = session(default_onnx)
    batch7 = run.run(None, {"images": images.numpy()})
    for i in range(7):
        assert_same_detections(batch7, i, ref[i])
    for i in (0, 5):
        assert_same_detections(run.run(None, {"images": images[i : i + 1].numpy()}), 0, ref[i])


def test_metadata_and_signature_round_trip(default_model, default_onnx):
    proto = onnx.load(str(default_onnx))
    assert sorted(p.key for p in proto.metadata_props) == sorted(META_KEYS)
    run = session(default_onnx)
    meta = parse_metadata(run.get_modelmeta().custom_metadata_map, str(default_onnx))
    assert meta["task"] == "detect" and meta["classes"] == default_model.classes
    assert meta["config"] == default_model.config and meta["lstmdet_version"] == lstmdet.__version__
    assert meta["input"]["shape"] == [None, 3, None, None] and meta["input"]["mean"] == [0.485, 0.456, 0.406]
    assert "aspect ratio" in meta["input"]["resize"] and meta["batch"] is None and meta["state"] == []
    post = meta["postprocess"]
    assert (post["score_thresh"], post["nms_thresh"], post["detections_per_img"]) == (0.05, 0.6, 100)
    assert meta["outputs"] == ["boxes", "scores", "labels", "num_detections"]
    assert [(i.name, i.shape, i.type) for i in run.get_inputs()] == [("images", ["N", 3, "H", "W"], "tensor(float)")]
    assert [(o.name, o.shape, o.type) for o in run.get_outputs()] == [
        ("boxes", ["N", 100, 4], "tensor(float)"),
        ("scores", ["N", 100], "tensor(float)"),
        ("labels", ["N", 100], "tensor(int64)"),
        ("num_detections", ["N"], "tensor(int64)"),
    ]
    assert {n.op_type for n in proto.graph.node} >= {"LSTM", "NonMaxSuppression", "TopK"}


LOAD_ALONE = """
import sys, numpy, torch
module = torch.jit.load(sys.argv[1])
out = module(torch.from_numpy(numpy.load(sys.argv[2])))
assert not [m for m in sys.modules if m.split(".")[0] in ("lstmdet", "torchvision")]
numpy.savez(sys.argv[3], *[o.numpy() for o in out])
"""


def test_torchscript_loads_alone_and_gives_the_onnx_contract(tmp_path, default_model, default_onnx):
    path = export(default_model, tmp_path / "default.torchscript", format="torchscript")
    images = torch.cat([photos((128, 128), 2), digit_scenes(128, 1)])
    np.save(tmp_path / "images.npy", images.numpy())
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [sys.executable, "-c", LOAD_ALONE, str(path), "images.npy", "out.npz"], cwd=tmp_path, env=env, check=True
    )
    loaded = np.load(tmp_path / "out.npz")
    scripted = [loaded[f"arr_{i}"] for i in range(4)]
    assert [a.dtype for a in scripted] == [np.float32, np.float32, np.int64, np.int64]
    onnx_out = session(default_onnx).run(None, {"images": images.numpy()})
    ref = default_model.predict(list(images))
    for i in range(3):
        assert_same_detections(scripted, i, ref[i])
        n = int(onnx_out[3][i])
        as_ref = {k: torch.from_numpy(onnx_out[j][i][:n]) for j, k in enumerate(("boxes", "scores", "labels"))}
        assert_same_detections(scripted, i, as_ref)


COMBINATIONS = [
    "mnist_rowlstm",  # rows + lstm (cols, 2 layers) + classifier (pool last)
    "mnist_cnn_bilstm",  # small_cnn + bilstm + classifier
    "digits_det_identity",  # small_cnn + FPN + identity + fcos (2 anchor points)
    "examples/digits_det_bilstm",  # small_cnn c2/c3 + FPN + bilstm + fcos (GroupNorm)
]


@pytest.mark.parametrize("name", COMBINATIONS)
def test_builtin_combination_matches_pytorch_in_onnx_and_torchscript(tmp_path, name):
    model = random_model(config(name))
    onnx_path = export(model, tmp_path / "m.onnx")
    scripted = torch.jit.load(str(export(model, tmp_path / "m.torchscript", format="torchscript")))
    size = input_size(model.config)
    images = photos(size, 7) if model.task == "classify" else torch.cat([photos(size, 4), digit_scenes(size[0], 3)])
    ref = model.predict(list(images))
    run = session(onnx_path)
    for batch in (images, images[2:3]):
        got = run.run(None, {"images": batch.numpy()})
        ts = [t.numpy() for t in scripted(batch)]
        first = 0 if len(batch) == len(images) else 2
        for i in range(len(batch)):
            if model.task == "classify":
                for out in (got, ts):
                    probs = torch.from_numpy(out[0][i]).softmax(0)
                    torch.testing.assert_close(probs, ref[first + i]["scores"], atol=SCORE_TOL, rtol=0)
                    assert int(probs.argmax()) == int(ref[first + i]["labels"])
            else:
                assert_same_detections(got, i, ref[first + i])
                assert_same_detections(ts, i, ref[first + i])


class GRURowSweep(nn.Module):
    """The README's third-party encoder: a GRU along every row, (B, T, C, H, W) -> (B, T, hidden, H, W)."""

    def __init__(self, in_channels: int, hidden: int = 16) -> None:
        super().__init__()
        self.out_channels = hidden
        self.gru = nn.GRU(in_channels, hidden, batch_first=True)

    def forward(self, x, state=None):
        b, t, c, h, w = x.shape
        rows = x.reshape(b * t, c, h, w).permute(0, 2, 3, 1).reshape(b * t * h, w, c)
        y, _ = self.gru(rows)
        return y.reshape(b, t, h, w, -1).permute(0, 1, 4, 2, 3), None


class FrozenScale(nn.Module):
    """An encoder that turns a tensor into a Python number: a trace would keep the example's value."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_channels = in_channels

    def forward(self, x, state=None):
        scale = float(x.abs().amax())  # data-dependent Python value
        return x / scale, None


class RunningMax(nn.Module):
    """An encoder using an operator that has no ONNX form (``cummax``); TorchScript takes it."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_channels = in_channels

    def forward(self, x, state=None):
        return x.cummax(dim=-1).values, None


class _ThirdParty:
    @hookimpl
    def lstmdet_register_encoders(self, registry):
        registry.add("gru_sweep", GRURowSweep)
        registry.add("frozen_scale", FrozenScale)
        registry.add("running_max", RunningMax)


def _third_party_model(encoder: str):
    registry = build_registry(build_plugin_manager(disabled=[], extra_plugins=[("third_party", _ThirdParty())]))
    raw = config("digits_det_identity", size=64, max_size=64)
    raw["model"]["encoder"] = {"name": encoder, **({"hidden": 32} if encoder == "gru_sweep" else {})}
    return random_model(raw, registry=registry)


def test_third_party_gru_encoder_exports_and_matches(tmp_path):
    model = _third_party_model("gru_sweep")
    images = torch.cat([photos((64, 64), 2), digit_scenes(64, 1, seed=2)])
    got = session(export(model, tmp_path / "gru.onnx")).run(None, {"images": images.numpy()})
    for i, ref in enumerate(model.predict(list(images))):
        assert_same_detections(got, i, ref)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_part_that_freezes_a_python_value_is_named(tmp_path, fmt):
    model = _third_party_model("frozen_scale")
    with pytest.raises(ExportError) as caught:
        export(model, tmp_path / "frozen.onnx", format=fmt)
    message = str(caught.value)
    assert "encoder 'frozen_scale' on level 'c3'" in message and "test_exporter.py:" in message
    assert "turns a tensor into a Python value" in message and "torch.where" in message
    assert not (tmp_path / "frozen.onnx").exists()


def test_part_with_an_operator_onnx_lacks_is_named(tmp_path, capfd):
    model = _third_party_model("running_max")
    with pytest.raises(ExportError) as caught:
        export(model, tmp_path / "max.onnx")
    assert str(caught.value) == (
        "encoder 'running_max' on level 'c3' cannot be exported: UnsupportedOperatorError: Exporting the operator "
        "'aten::cummax' to ONNX opset version 17 is not supported"
    )
    assert "graph" not in capfd.readouterr().out  # torch's IR dump on failure is not shown
    assert export(model, tmp_path / "max.torchscript", format="torchscript").is_file()


def test_fixed_batch_and_threshold_overrides(tmp_path):
    model = random_model(config("digits_det_identity", size=64, max_size=64))
    path = export(model, tmp_path / "b2.onnx", batch=2, score_thresh=0.2, max_detections=7, opset=13)
    run = session(path)
    assert run.get_inputs()[0].shape == [2, 3, "H", "W"] and run.get_outputs()[0].shape == [2, 7, 4]
    meta = parse_metadata(run.get_modelmeta().custom_metadata_map, str(path))
    assert meta["batch"] == 2 and meta["postprocess"]["score_thresh"] == 0.2 and "opset 13" in meta["exporter"]
    images = digit_scenes(64, 2, seed=2)
    got = run.run(None, {"images": images.numpy()})
    model.head.score_thresh, model.head.detections_per_img = 0.2, 7
    for i, ref in enumerate(model.predict(list(images))):
        assert_same_detections(got, i, ref)


def test_bad_options_say_what_to_pass(tmp_path):
    classifier = random_model(config("mnist_rowlstm"))
    cases = [
        ({"format": "tflite"}, "unknown export format 'tflite'; choose onnx or torchscript"),
        ({"batch": 0}, "batch must be 'dynamic' or a positive integer, got 0"),
        ({"opset": 9}, "opset 9 is not supported; choose one in [11, "),
        ({"score_thresh": 0.3}, "score_thresh applies to detectors; this is a classify model"),
        ({"format": "torchscript", "opset": 17}, "opset applies to --format onnx only"),
    ]
    for options, words in cases:
        with pytest.raises(ExportError) as caught:
            export(classifier, tmp_path / "x.onnx", **options)
        assert words in str(caught.value)
    with pytest.raises(ExportError, match="give out="):
        lstmdet.export(classifier)  # the package lstmdet.export is callable as the Python API's function


def test_half_precision_graph_keeps_float32_io(tmp_path):
    raw = config("digits_det_identity", size=64, max_size=64)
    raw["model"]["encoder"] = {"name": "bilstm", "hidden": 32}
    model = random_model(raw)
    path = export(model, tmp_path / "half.onnx", half=True)
    proto = onnx.load(str(path))
    assert {"precision": "float16"}.items() <= {p.key: p.value for p in proto.metadata_props}.items()
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer)
    run = session(path)
    assert [i.type for i in run.get_inputs()] == ["tensor(float)"] and run.get_outputs()[1].type == "tensor(float)"
    images = digit_scenes(64, 2, seed=2)
    got = run.run(None, {"images": images.numpy()})
    for i, ref in enumerate(model.predict(list(images))):
        np.testing.assert_allclose(got[1][i][:10], ref["scores"][:10].numpy(), atol=2e-3, rtol=0)
