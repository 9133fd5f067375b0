"""Video files through ``lstmdet.detect``: the same detections as their frames given as images, state
carried through a video as ``--sequence`` carries it, frame selection, outputs, bad videos, resume, Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import TIMING, corrupt_video, decode_video, digit_clip, encode_video, save_tiny
from PIL import Image

import lstmdet
from lstmdet.data import video as video_module
from lstmdet.engine.detect import DetectOptions
from lstmdet.errors import LstmdetError

FPS = 10
FRAME_KEYS = ("file", "frame_index", "timestamp", "width", "height", "detections")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: threads only add overhead


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """``a.mp4`` (10 frames, 48x48) and ``b.mkv`` (7 frames, 40x56) of moving digits."""
    root = tmp_path_factory.mktemp("clips")
    encode_video(root / "a.mp4", digit_clip(10, size=48, seed=1), FPS)
    tall = np.stack([np.asarray(Image.fromarray(f).resize((40, 56))) for f in digit_clip(7, size=48, seed=2)])
    encode_video(root / "b.mkv", tall, FPS)
    return root


def run(src, out, weights, **options) -> dict:
    return lstmdet.detect(src, out, weights, workers=options.pop("workers", 0), progress=False, **options)


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def frames_as_pngs(video: Path, folder: Path) -> int:
    """Save PyAV's decode of ``video`` as lossless PNGs (``f000.png``...); returns the frame count."""
    folder.mkdir(parents=True)
    images, _ = decode_video(video)
    for t, image in enumerate(images):
        Image.fromarray(image).save(folder / f"f{t:03d}.png")
    return len(images)


def detections_only(records: list[dict]) -> list:
    return [(r["width"], r["height"], r["detections"]) for r in records]


def test_a_video_gives_the_detections_of_its_frames_as_images(tmp_path, clips, weights):
    frames_as_pngs(clips / "a.mp4", tmp_path / "pngs")
    summary = run(clips / "a.mp4", tmp_path / "video", weights, batch_size=4)
    run(tmp_path / "pngs", tmp_path / "images", weights, batch_size=4)
    video = lines(tmp_path / "video")
    assert [tuple(r) for r in video] == [FRAME_KEYS] * 10
    assert [(r["file"], r["frame_index"], r["timestamp"]) for r in video] == [("a.mp4", t, t / FPS) for t in range(10)]
    assert detections_only(video) == detections_only(lines(tmp_path / "images"))
    assert sum(len(r["detections"]) for r in video) > 0
    assert (summary["images"], summary["videos"], summary["frames"], summary["ok"], summary["failed"]) == (
        0, 1, 10, 10, 0)  # fmt: skip
    assert summary["fps"] > 0 and summary["detections"] == sum(len(r["detections"]) for r in video)

    # COCO-VID fields in images.json; coco_results.json refers to its ids as for images
    coco = json.loads((tmp_path / "video" / "images.json").read_text())
    assert coco["videos"] == [{"id": 1, "name": "a.mp4", "width": 48, "height": 48, "frames": 10}]
    assert [(i["id"], i["video_id"], i["frame_id"], i["file_name"]) for i in coco["images"]] == [
        (t + 1, 1, t, "a.mp4") for t in range(10)
    ]
    results = json.loads((tmp_path / "video" / "coco_results.json").read_text())
    assert results == json.loads((tmp_path / "images" / "coco_results.json").read_text())


def test_a_stateful_model_carries_its_state_through_each_video_as_sequence_mode_does(tmp_path, clips):
    convlstm = save_tiny(tmp_path / "convlstm.pt", {"name": "convlstm", "hidden": 8})
    assert lstmdet.load(convlstm).stateful
    for name in ("a.mp4", "b.mkv"):
        frames_as_pngs(clips / name, tmp_path / "frames" / name)
    run(clips, tmp_path / "video", convlstm, batch_size=3)
    run(tmp_path / "frames", tmp_path / "sequence", convlstm, sequence=True, batch_size=3)
    video, sequence = lines(tmp_path / "video"), lines(tmp_path / "sequence")
    assert [(r["file"], r["frame_index"]) for r in video] == [(r["video"], r["frame_index"]) for r in sequence]
    assert detections_only(video) == detections_only(sequence)

    # whole-clip inference on the selected frames: every 2nd frame from 0.2 s
    run(clips / "a.mp4", tmp_path / "strided", convlstm, vid_stride=2, start=0.2, score_thresh=0.0)
    images, _ = decode_video(clips / "a.mp4")
    clip = torch.stack([torch.from_numpy(images[t]).permute(2, 0, 1).float() / 255 for t in (2, 4, 6, 8)])
    expected = lstmdet.load(convlstm).predict([clip])[0]
    strided = lines(tmp_path / "strided")
    assert [r["frame_index"] for r in strided] == [2, 4, 6, 8]
    for record, pred in zip(strided, expected, strict=True):
        boxes = torch.tensor([d["bbox"] for d in record["detections"]], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        assert torch.allclose(boxes, pred["boxes"].double(), atol=2e-3)
        assert [d["category_id"] for d in record["detections"]] == pred["labels"].tolist()


def test_frame_selection_and_annotated_video(tmp_path, clips, weights):
    summary = run(clips, tmp_path / "out", weights, vid_stride=2, start=0.1, end=0.75, max_frames=3, save_video=True)
    records = lines(tmp_path / "out")
    assert [(r["file"], r["frame_index"]) for r in records] == [("a.mp4", 1), ("a.mp4", 3), ("a.mp4", 5),
                                                                 ("b.mkv", 1), ("b.mkv", 3), ("b.mkv", 5)]  # fmt: skip
    assert (summary["videos"], summary["frames"]) == (2, 6)
    for name, size in (("a.mp4", (48, 48, 3)), ("b.mkv.mp4", (56, 40, 3))):
        images, times = decode_video(tmp_path / "out" / "videos" / name)
        assert len(images) == 3 and images[0].shape == size
        assert times == pytest.approx([0.1, 0.3, 0.5], abs=1e-6)  # the frames keep their times

    # every frame: the annotated video has the source's frame count, size and rate
    run(clips / "a.mp4", tmp_path / "all", weights, save_video=True)
    images, times = decode_video(tmp_path / "all" / "videos" / "a.mp4")
    assert len(images) == 10 and images[0].shape == (48, 48, 3)
    assert times == pytest.approx([t / FPS for t in range(10)], abs=1e-6)


def test_a_mixed_folder_and_bad_videos(tmp_path, clips, weights, monkeypatch):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    encode_video(src / "sub" / "c.mp4", digit_clip(5, size=32, seed=3), FPS)
    Image.fromarray(digit_clip(1, size=32, seed=4)[0]).save(src / "photo.png")
    gif = [Image.fromarray(f) for f in digit_clip(3, size=32, seed=5)]
    gif[0].save(src / "moving.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
    gif[0].save(src / "still.gif")
    (src / "empty.mp4").write_bytes(b"")
    (src / "text.mkv").write_text("not a video\n")
    (src / "breaks.mp4").write_bytes((clips / "a.mp4").read_bytes())
    real = video_module._decode

    def breaks_after_four(container, stream):  # a decode error in the middle of breaks.mp4
        for n, frame in enumerate(real(container, stream)):
            if n == 4 and container.name.endswith("breaks.mp4"):
                raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame

    monkeypatch.setattr(video_module, "_decode", breaks_after_four)
    summary = run(src, tmp_path / "out", weights, batch_size=3, start=0.0, end=10.0)
    records = lines(tmp_path / "out")
    order = [(r["file"], r.get("frame_index"), "error" in r) for r in records]
    assert order == [
        ("photo.png", None, False), ("still.gif", None, False),
        *[("breaks.mp4", t, False) for t in range(4)], ("breaks.mp4", None, True),
        ("empty.mp4", None, True),
        *[("moving.gif", t, False) for t in range(3)],
        *[("sub/c.mp4", t, False) for t in range(5)],
        ("text.mkv", None, True),
    ]  # fmt: skip
    errors = {r["file"]: r["error"] for r in records if "error" in r}
    assert "decoding stopped after frame 3" in errors["breaks.mp4"]
    assert "empty (0 bytes)" in errors["empty.mp4"] and "not a video" in errors["text.mkv"]
    assert (summary["images"], summary["videos"], summary["frames"], summary["failed"]) == (2, 5, 12, 3)
    coco = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [v["name"] for v in coco["videos"]] == ["breaks.mp4", "moving.gif", "sub/c.mp4"]
    assert "video_id" not in coco["images"][0] and coco["images"][2]["video_id"] == 1


def test_resume_after_a_cut_video_equals_an_uninterrupted_run(tmp_path, clips, weights):
    run(clips, tmp_path / "whole", weights, batch_size=2)
    run(clips, tmp_path / "cut", weights, batch_size=2)
    data = (tmp_path / "cut" / "detections.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "cut" / "detections.jsonl").write_bytes(b"".join(data[:13]) + data[13][:20])  # in b.mkv, torn
    for name in ("images.json", "coco_results.json", "summary.json"):
        (tmp_path / "cut" / name).unlink()
    summary = run(clips, tmp_path / "cut", None, resume=True)
    assert summary["resumed"] == 1  # a.mp4 kept, b.mkv (cut short) run again
    for name in ("detections.jsonl", "images.json", "coco_results.json"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k not in (*TIMING, "fps", "resumed")} == {
        k: v for k, v in whole.items() if k not in (*TIMING, "fps", "resumed")
    }


def test_ctrl_c_leaves_valid_lines_and_a_playable_video(tmp_path, clips, weights):
    calls = []

    def interrupt() -> bool:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        run(clips / "a.mp4", tmp_path / "out", weights, batch_size=3, save_video=True, should_stop=interrupt)
    assert [r["frame_index"] for r in lines(tmp_path / "out")] == list(range(6))
    images, _ = decode_video(tmp_path / "out" / "videos" / "a.mp4")
    assert len(images) == 6
    assert sorted(p.name for p in (tmp_path / "out" / "videos").iterdir()) == ["a.mp4"]  # no temporary file left
    summary = run(clips / "a.mp4", tmp_path / "out", None, resume=True)
    assert summary["frames"] == 10 and len(decode_video(tmp_path / "out" / "videos" / "a.mp4")[0]) == 10


def test_video_options_are_checked_and_harmless_for_images(tmp_path, weights):
    for bad, flag in (({"vid_stride": 0}, "--vid-stride"), ({"max_frames": 0}, "--max-frames"),
                      ({"start": -1.0}, "--start"), ({"end": 0.0}, "--end"),
                      ({"start": 3.0, "end": 2.0}, "--start"), ({"start": 2.0, "end": 2.0}, "--start"),
                      ({"save_video": "yes"}, "--save-video")):  # fmt: skip
        with pytest.raises(LstmdetError, match=flag):
            DetectOptions(**bad)
    (tmp_path / "src").mkdir()
    Image.fromarray(digit_clip(1, size=32)[0]).save(tmp_path / "src" / "a.png")
    plain = run(tmp_path / "src", tmp_path / "plain", weights)
    video = run(tmp_path / "src", tmp_path / "opts", weights, vid_stride=3, start=1.0, end=2.0, max_frames=1,
                save_video=True)  # fmt: skip
    assert (tmp_path / "plain" / "detections.jsonl").read_bytes() == (
        tmp_path / "opts" / "detections.jsonl"
    ).read_bytes()
    assert isinstance(json.loads((tmp_path / "opts" / "images.json").read_text()), list)  # no videos: as before
    assert "fps" not in video and "frames" not in plain and not (tmp_path / "opts" / "videos").exists()


def test_a_real_corrupt_packet_keeps_the_frames_before_it(tmp_path, weights):
    """PNG frames in a MOV with zeroed bytes in the middle: FFmpeg's decoder fails on that packet."""
    src = tmp_path / "src"
    src.mkdir()
    corrupt_video(src / "corrupt.mov", digit_clip(8, size=48, seed=6), FPS, at=0.6)
    encode_video(src / "fine.mp4", digit_clip(3, size=48, seed=7), FPS)
    summary = run(src, tmp_path / "out", weights)
    records = lines(tmp_path / "out")
    corrupt = [r for r in records if r["file"] == "corrupt.mov"]
    assert 1 <= len(corrupt) - 1 < 8 and all("detections" in r for r in corrupt[:-1])
    assert [r["frame_index"] for r in corrupt[:-1]] == list(range(len(corrupt) - 1))
    assert "decoding stopped after frame" in corrupt[-1]["error"] and "frame_index" not in corrupt[-1]
    assert [r["frame_index"] for r in records if r["file"] == "fine.mp4"] == [0, 1, 2]  # the run went on
    assert summary["failed"] == 1

    # --exist-ok never removes the videos it is asked to detect
    (tmp_path / "out2" / "videos").mkdir(parents=True)
    (src / "fine.mp4").rename(tmp_path / "out2" / "videos" / "fine.mp4")
    with pytest.raises(LstmdetError, match="files to detect lie inside it"):
        run(tmp_path / "out2" / "videos", tmp_path / "out2", weights, exist_ok=True)
    assert (tmp_path / "out2" / "videos" / "fine.mp4").is_file()
