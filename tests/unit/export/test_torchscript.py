"""TorchScript files take ``image_sizes`` as the ONNX file does: a padded batch of mixed sizes equals PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from export_helpers import PHOTOS, assert_same_prediction, config, digit_clips, random_model

from lstmdet.data.images import read_image
from lstmdet.export import export
from lstmdet.export.runtime import OnnxModel

#: Runs the file with torch.jit.load alone (no lstmdet, no torchvision), with and without image_sizes.
LOAD_ALONE = """
import json, sys, numpy, torch
extra = {"lstmdet.json": ""}
module = torch.jit.load(sys.argv[1], _extra_files=extra)
images, sizes = (torch.from_numpy(numpy.load(name)) for name in sys.argv[2:4])
with_sizes = module(images, image_sizes=sizes)
without = module(images)
assert not [m for m in sys.modules if m.split(".")[0] in ("lstmdet", "torchvision")]
numpy.savez(sys.argv[4], *[o.numpy() for o in (*with_sizes, *without)])
print(json.dumps({"schema": str(module.forward.schema), "meta": json.loads(extra["lstmdet.json"])}))
"""


def test_mixed_size_padded_batch_through_torch_jit_load_alone_equals_pytorch(tmp_path, default_model, default_onnx):
    path = export(default_model, tmp_path / "default.torchscript", format="torchscript")
    images = [torch.from_numpy(read_image(p)).permute(2, 0, 1).float() / 255 for p in PHOTOS[:8]]
    batch, sizes = OnnxModel(default_onnx, device="cpu")._batch(images)  # padded as PyTorch pads (README recipe)
    assert len(set(sizes)) > 2 and batch.shape[0] == 8
    np.save(tmp_path / "images.npy", batch)
    np.save(tmp_path / "sizes.npy", np.asarray(sizes, dtype=np.int64))
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_ALONE, str(path), "images.npy", "sizes.npy", "out.npz"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    info = json.loads(done.stdout)
    assert "Tensor? image_sizes=None" in info["schema"]
    assert "image_sizes" in json.loads(info["meta"]["input"])["optional_inputs"]
    loaded = np.load(tmp_path / "out.npz")
    outputs = [loaded[f"arr_{i}"] for i in range(8)]
    originals = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
    onnx_model = OnnxModel(default_onnx, device="cpu")
    want = default_model.predict(images)
    got = onnx_model._detections(outputs[:4], sizes, originals)
    for path_, g, w in zip(PHOTOS, got, want, strict=False):
        assert_same_prediction(g, w, what=path_.name)
    # without image_sizes the boxes are clipped to the canvas: some padded images differ (the input matters)
    unclipped = onnx_model._detections(outputs[4:], sizes, originals)
    differ = 0
    for g, w in zip(unclipped, want, strict=True):
        try:
            assert_same_prediction(g, w)
        except AssertionError:
            differ += 1
    assert differ > 0


def test_stateful_torchscript_takes_image_sizes_after_the_state(tmp_path):
    model = random_model(config("digits_video_convlstm"))
    scripted = torch.jit.load(str(export(model, tmp_path / "v.torchscript", format="torchscript")))
    names = [a.name for a in scripted.forward.schema.arguments][1:]
    assert names == ["images", *[f"state_in_{lv}_0_{p}" for lv in ("c3", "c4") for p in ("h", "c")], "image_sizes"]
    frame = digit_clips(96, clips=1, frames=1)[:, 0]
    state = [torch.zeros(1, 64, 12, 12)] * 2 + [torch.zeros(1, 64, 6, 6)] * 2
    plain = scripted(frame, *state)
    sized = scripted(frame, *state, image_sizes=torch.tensor([[96, 96]]))
    for a, b in zip(plain, sized, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        scripted(frame, *state[:3])
