"""``detect --weights model.onnx`` on video files (H.264 through PyAV) writes what the PyTorch run writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import assert_same_records
from helpers import digit_clip, encode_video, run_cli, save_tiny
from PIL import Image

import lstmdet
from lstmdet.export import export

FPS = 10


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """``a.mp4`` (9 frames, 48x48) and ``b.mkv`` (6 frames, 40x56) of moving digits, H.264."""
    root = tmp_path_factory.mktemp("clips")
    encode_video(root / "a.mp4", digit_clip(9, size=48, seed=1), FPS)
    tall = np.stack([np.asarray(Image.fromarray(f).resize((40, 56))) for f in digit_clip(6, size=48, seed=2)])
    encode_video(root / "b.mkv", tall, FPS)
    return root


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("encoder", [None, {"name": "convlstm", "hidden": 8}], ids=["stateless", "convlstm"])
def test_video_through_onnx_runtime_equals_pytorch(tmp_path, clips, encoder):
    ckpt = save_tiny(tmp_path / "m.pt", encoder)
    onnx_path = export(ckpt, tmp_path / "m.onnx")
    assert lstmdet.load(ckpt).stateful is (encoder is not None)
    summaries = {}
    for kind, weights in (("pt", ckpt), ("onnx", onnx_path)):
        summaries[kind] = lstmdet.detect(clips, tmp_path / kind, weights, workers=0, progress=False, batch_size=4)
    pytorch, exported = lines(tmp_path / "pt"), lines(tmp_path / "onnx")
    assert [(r["file"], r["frame_index"]) for r in pytorch] == [("a.mp4", t) for t in range(9)] + [
        ("b.mkv", t) for t in range(6)
    ]
    assert sum(len(r["detections"]) for r in pytorch) > 15
    assert_same_records(exported, pytorch)
    keys = ("videos", "frames", "ok", "failed", "detections")
    assert [summaries["onnx"][k] for k in keys] == [summaries["pt"][k] for k in keys]


def test_stateful_onnx_video_carries_its_state(tmp_path, clips):
    """The ConvLSTM file's detections on a video depend on the earlier frames: state is fed back, not reset."""
    ckpt = save_tiny(tmp_path / "m.pt", {"name": "convlstm", "hidden": 8})
    onnx_path = export(ckpt, tmp_path / "m.onnx")
    result = run_cli("detect", str(clips / "a.mp4"), "--weights", str(onnx_path), "--out", str(tmp_path / "video"),
                     "--quiet", "--workers", "0", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    lstmdet.detect(clips / "a.mp4", tmp_path / "from3", onnx_path, workers=0, progress=False, start=0.3)
    whole, cut = lines(tmp_path / "video"), lines(tmp_path / "from3")
    assert [r["frame_index"] for r in cut] == list(range(3, 9))
    assert whole[3]["detections"] != cut[0]["detections"]  # frame 3 after frames 0-2, and as a first frame
