"""Stateful (ConvLSTM) models export one time step: feeding a clip frame by frame equals ``model.predict``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_helpers import assert_same_detections, config, digit_clips, photos, random_model, session

from lstmdet.export import export
from lstmdet.export.contract import parse_metadata


def stream(run, frames: torch.Tensor, names: list[str], shapes: list[list]) -> list[list[np.ndarray]]:
    """Feed ``frames`` ``(T, N, 3, H, W)`` step by step from the zero state; the detections of every step."""
    state = [np.zeros((frames.shape[1], *shape[1:]), dtype=np.float32) for shape in shapes]
    steps = []
    for frame in frames:
        out = run(frame, state)
        steps.append(out[:4])
        state = out[4:]
        assert [s.shape for s in state] == [(frames.shape[1], *shape[1:]) for shape in shapes]
    return steps


def test_convlstm_clip_frame_by_frame_equals_predict_in_onnx_and_torchscript(tmp_path):
    model = random_model(config("digits_video_convlstm"))
    clips = digit_clips(96, clips=2, frames=4)
    ref = model.predict(list(clips))

    path = export(model, tmp_path / "video.onnx")
    onnx_run = session(path)
    meta = parse_metadata(onnx_run.get_modelmeta().custom_metadata_map, str(path))
    names = [entry["input"] for entry in meta["state"]]
    assert names == [f"state_in_{level}_0_{part}" for level in ("c3", "c4") for part in ("h", "c")]
    assert [entry["output"] for entry in meta["state"]] == [n.replace("_in_", "_out_") for n in names]
    assert [entry["shape"] for entry in meta["state"]] == [[None, 64, 12, 12]] * 2 + [[None, 64, 6, 6]] * 2
    assert [i.name for i in onnx_run.get_inputs()] == ["images", *names]
    assert [o.name for o in onnx_run.get_outputs()][4:] == [entry["output"] for entry in meta["state"]]
    shapes = [entry["shape"] for entry in meta["state"]]

    def run_onnx(frame, state):
        return onnx_run.run(None, {"images": frame.numpy(), **dict(zip(names, state, strict=True))})

    extra = {"lstmdet.json": ""}
    scripted = torch.jit.load(
        str(export(model, tmp_path / "video.torchscript", format="torchscript")), _extra_files=extra
    )
    assert json.loads(json.loads(extra["lstmdet.json"])["state"]) == meta["state"]

    def run_script(frame, state):
        return [t.numpy() for t in scripted(frame, *[torch.from_numpy(s) for s in state])]

    for runner in (run_onnx, run_script):
        for t, detections in enumerate(stream(runner, clips.transpose(0, 1), names, shapes)):
            for b in range(2):
                assert_same_detections(detections, b, ref[b][t])
        for t, detections in enumerate(stream(runner, clips[1:].transpose(0, 1), names, shapes)):  # batch 1
            assert_same_detections(detections, 0, ref[1][t])


@pytest.mark.slow
def test_resnet18_convlstm_retinanet_clip_frame_by_frame(tmp_path):
    model = random_model(config("examples/resnet18_convlstm_retinanet", size=96, max_size=128))
    clip = photos((96, 128), 3)  # three photos as the frames of one clip
    ref = model.predict([clip])[0]
    path = export(model, tmp_path / "r18.onnx")
    run = session(path)
    meta = parse_metadata(run.get_modelmeta().custom_metadata_map, str(path))
    names = [entry["input"] for entry in meta["state"]]
    assert len(names) == 6  # c3, c4, c5: h and c each

    def run_onnx(frame, state):
        return run.run(None, {"images": frame.numpy(), **dict(zip(names, state, strict=True))})

    for t, detections in enumerate(stream(run_onnx, clip[:, None], names, [e["shape"] for e in meta["state"]])):
        assert_same_detections(detections, 0, ref[t])
