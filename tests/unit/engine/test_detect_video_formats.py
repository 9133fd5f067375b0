"""Videos off the beaten path, through ``read_frames`` and the real ``lstmdet detect`` console script: variable
frame rate, odd width and height, 10-bit and 4:4:4 H.264, an audio-only file. Each gives the frames PyAV decodes
(as 8-bit RGB) or one clear error line; never a traceback."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import decode_video, digit_clip, encode_video, run_cli, save_tiny

from lstmdet.data.video import VideoReadError, read_frames

#: Frame times (ms) of the variable-frame-rate video: gaps of 40 to 300 ms.
VFR_MS = [0, 40, 80, 380, 420, 700, 740, 1000]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def encode_vfr(path: Path, frames: np.ndarray, times_ms: list[int]) -> Path:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, ms in zip(frames, times_ms, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """One video per case in one folder; 8-bit 4:2:0 ``plain.mp4`` for reference."""
    root = tmp_path_factory.mktemp("formats")
    clip = digit_clip(8, size=48, seed=3)
    encode_video(root / "plain.mp4", clip, 10)
    encode_vfr(root / "vfr.mp4", clip, VFR_MS)
    odd = np.ascontiguousarray(np.pad(clip, ((0, 0), (0, 1), (0, 3), (0, 0)))[:, :49, :51])  # 51x49
    encode_video(root / "odd.mp4", odd, 10, pix_fmt="yuv444p")  # 4:2:0 needs even sides; 4:4:4 does not
    encode_video(root / "ten_bit.mp4", clip, 10, pix_fmt="yuv420p10le")  # High 10 profile
    encode_video(root / "yuv444.mp4", clip, 10, pix_fmt="yuv444p")  # High 4:4:4 Predictive
    encode_video(root / "ten_bit_444.mkv", clip, 10, pix_fmt="yuv444p10le")
    write_audio_only(root / "audio.mp4")
    return root


def test_the_test_videos_are_what_they_claim(videos):
    expected = {"vfr.mp4": "yuv420p", "odd.mp4": "yuv444p", "ten_bit.mp4": "yuv420p10le", "yuv444.mp4": "yuv444p",
                "ten_bit_444.mkv": "yuv444p10le"}  # fmt: skip
    for name, pix_fmt in expected.items():
        with av.open(str(videos / name)) as container:
            assert container.streams.video[0].codec_context.pix_fmt == pix_fmt, name
            assert container.streams.video[0].codec_context.name == "h264", name
    with av.open(str(videos / "odd.mp4")) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (51, 49)
    with av.open(str(videos / "audio.mp4")) as container:
        assert not container.streams.video and container.streams.audio


@pytest.mark.parametrize("name", ["vfr.mp4", "odd.mp4", "ten_bit.mp4", "yuv444.mp4", "ten_bit_444.mkv"])
def test_frames_are_pyav_s_decode_in_8_bit_rgb(videos, name):
    images, times = decode_video(videos / name)
    frames = list(read_frames(videos / name))
    assert len(frames) == len(images) == 8
    assert [f.index for f in frames] == list(range(8))
    assert [f.timestamp for f in frames] == pytest.approx([t - times[0] for t in times], abs=1e-6)
    for frame, image in zip(frames, images, strict=True):
        assert frame.image.dtype == np.uint8 and np.array_equal(frame.image, image)
    reference, _ = decode_video(videos / "plain.mp4")
    if name != "odd.mp4":  # the same digits, another encoding: close to the 8-bit 4:2:0 decode
        assert min(psnr(a.image, b) for a, b in zip(frames, reference, strict=True)) > 28


def test_variable_frame_rate_keeps_each_frame_s_own_time(videos):
    assert [f.timestamp for f in read_frames(videos / "vfr.mp4")] == pytest.approx([ms / 1000 for ms in VFR_MS])
    assert [f.index for f in read_frames(videos / "vfr.mp4", start=0.4)] == [4, 5, 6, 7]  # 0.42 s onwards


def test_an_audio_only_file_is_one_clear_error(videos):
    with pytest.raises(VideoReadError, match=r"audio\.mp4: the file has no video stream \(audio only\?\)"):
        list(read_frames(videos / "audio.mp4"))


def test_lstmdet_detect_reads_every_format_and_gives_one_error_line_for_audio(tmp_path, videos):
    weights = save_tiny(tmp_path / "tiny.pt")
    out = tmp_path / "out"
    result = run_cli("detect", str(videos), "--weights", str(weights), "--out", str(out), "--save-video", "--quiet",
                     env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    errors = [r for r in records if "error" in r]
    assert errors == [{"file": "audio.mp4", "error": "the file has no video stream (audio only?)"}]
    per_file = {}
    for r in records:
        if "error" not in r:
            per_file.setdefault(r["file"], []).append(r)
    assert sorted(per_file) == ["odd.mp4", "plain.mp4", "ten_bit.mp4", "ten_bit_444.mkv", "vfr.mp4", "yuv444.mp4"]
    assert all(len(frames) == 8 for frames in per_file.values())
    assert {(r["width"], r["height"]) for r in per_file["odd.mp4"]} == {(51, 49)}
    assert [r["timestamp"] for r in per_file["vfr.mp4"]] == pytest.approx([ms / 1000 for ms in VFR_MS])
    for name in per_file:
        saved = out / "videos" / (name if name.endswith(".mp4") else f"{name}.mp4")
        frames, _ = decode_video(saved)
        assert len(frames) == 8 and frames[0].shape[:2] == (per_file[name][0]["height"], per_file[name][0]["width"])
    _, vfr_times = decode_video(out / "videos" / "vfr.mp4")
    assert [t - vfr_times[0] for t in vfr_times] == pytest.approx([ms / 1000 for ms in VFR_MS], abs=0.021)
