"""Clips as H.264 MP4 files: ``lstmdet data digits-video --format mp4`` and the ``coco_video`` dataset that
reads training clips straight from the videos (seeking, no frame files), down to a short training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, decode_video

import lstmdet
from lstmdet.cli.main import main
from lstmdet.data.coco import DataFormatError
from lstmdet.data.video_dataset import CocoVideo, write_video_dataset

#: H.264 at the writer's quality keeps these grey digit frames above this PSNR (dB).
MIN_PSNR = 35.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def generated():
    return lstmdet.create_component("datasets", "digits_video", clips=3, frames=12, size=48, seed=5, split="test")


@pytest.fixture(scope="module")
def written(generated, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mp4")
    write_video_dataset(generated, out)
    return out


def test_whole_clips_equal_the_generator_within_h264_tolerance_and_boxes_exactly(generated, written):
    dataset = CocoVideo(written / "annotations.json")
    assert len(dataset) == 3 and dataset.classes == generated.classes
    for index in range(3):
        clip, target = dataset[index]
        expected, truth = generated[index]
        assert clip.shape == expected.shape == (12, 48, 48, 3) and clip.dtype == np.uint8
        assert min(psnr(a, b) for a, b in zip(clip, expected, strict=True)) >= MIN_PSNR
        for got, want in zip(target["frames"], truth["frames"], strict=True):
            assert np.array_equal(got["boxes"], want["boxes"])
            assert np.array_equal(got["labels"], want["labels"])
            assert np.array_equal(got["track_ids"] - got["track_ids"].min(), want["track_ids"])


def test_a_clip_in_the_middle_is_read_by_seeking_and_gives_the_right_frames(generated, written, monkeypatch):
    dataset = CocoVideo(written / "annotations.json", frames=4, stride=3)
    assert dataset.clips == [(v, first) for v in range(3) for first in (0, 3, 6)]
    seeks = []
    from lstmdet.data import video as video_module

    real = video_module.read_frames
    monkeypatch.setattr(
        "lstmdet.data.video_dataset.read_frames", lambda *a, **k: seeks.append(k.get("start")) or real(*a, **k)
    )
    clip, target = dataset[5]  # video 1, frames 6..9
    assert seeks == [pytest.approx(0.6)]
    decoded, _ = decode_video(written / "videos" / "000002.mp4")
    assert all(np.array_equal(a, b) for a, b in zip(clip, decoded[6:10], strict=True))  # the exact frames
    expected, truth = generated[1]
    assert min(psnr(a, b) for a, b in zip(clip, expected[6:10], strict=True)) >= MIN_PSNR
    assert [np.array_equal(f["boxes"], t["boxes"]) for f, t in zip(target["frames"], truth["frames"][6:10],
                                                                   strict=True)] == [True] * 4  # fmt: skip


def test_the_cli_writes_mp4_clips_with_coco_vid_annotations(tmp_path, capsys):
    out = tmp_path / "clips"
    assert main(["data", "digits-video", str(out), "--format", "mp4", "--clips", "2", "--frames", "5",
                 "--size", "32"]) == 0  # fmt: skip
    assert "wrote 10 images in 2 clips (H.264 MP4)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["annotations.json", "videos"]
    data = json.loads((out / "annotations.json").read_text())
    assert [v["file_name"] for v in data["videos"]] == ["videos/000001.mp4", "videos/000002.mp4"]
    assert [(i["video_id"], i["frame_id"]) for i in data["images"]] == [(v, t) for v in (1, 2) for t in range(5)]
    assert all(a["track_id"] >= 1 for a in data["annotations"])
    for video in data["videos"]:
        frames, times = decode_video(out / video["file_name"])
        assert len(frames) == 5 and times == pytest.approx([t / 10 for t in range(5)])
    assert main(["data", "digits-video", str(out), "--format", "mp4", "--clips", "1", "--frames", "2"]) == 2


def test_bad_annotations_say_what_is_wrong(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataFormatError, match="no 'videos' list"):
        CocoVideo(tmp_path / "a.json")
    with pytest.raises(DataFormatError, match="cannot read"):
        CocoVideo(tmp_path / "missing.json")


@pytest.mark.slow
def test_the_convlstm_recipe_trains_from_mp4_files_and_learns(tmp_path):
    torch.set_num_threads(2)
    for split, clips, seed in (("train", 32, 1), ("test", 8, 7)):
        digits = lstmdet.create_component("datasets", "digits_video", clips=clips, frames=4, size=64, seed=seed,
                                          split=split, occlusion=0.0)  # fmt: skip
        write_video_dataset(digits, tmp_path / split)
    config = yaml.safe_load((ROOT / "configs" / "digits_video_convlstm.yaml").read_text())
    config["model"]["input"] = {"size": 64, "max_size": 64}
    config["model"]["backbone"]["widths"] = [16, 32, 48, 64]
    config["data"] = {
        "train": {"name": "coco_video", "annotations": str(tmp_path / "train" / "annotations.json"), "frames": 4},
        "val": {"name": "coco_video", "annotations": str(tmp_path / "test" / "annotations.json"), "frames": 4},
        "augment": {"preset": "light"},
    }
    config["train"].update(epochs=3, batch_size=4, workers=0, lr=0.004)
    summary = lstmdet.train(config, tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.85 * losses[0], losses
    assert summary["metrics"]["map_50"] > 0.05, summary["metrics"]  # chance is about 0
