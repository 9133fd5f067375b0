"""``lstmdet detect`` and ``lstmdet submit detect`` arguments: defaults, documented in --help."""

from __future__ import annotations

import pytest

from lstmdet.cli.detect_cmds import detect_options
from lstmdet.cli.main import build_parser, main


@pytest.mark.parametrize("command", [["detect"], ["submit", "detect"]])
def test_agnostic_nms_reaches_the_detect_options(command):
    args = build_parser().parse_args([*command, "src", "--out", "out", "--agnostic-nms"])
    assert detect_options(args)["agnostic_nms"] is True
    args = build_parser().parse_args([*command, "src", "--out", "out"])
    assert not detect_options(args).get("agnostic_nms")


def test_help_documents_the_defaults(capsys):
    assert main(["detect", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default 0.25" in text and "--agnostic-nms" in text


def test_video_options_reach_detect_and_not_submit(capsys):
    args = build_parser().parse_args(
        ["detect", "src", "--out", "out", "--vid-stride", "2", "--start", "1.5", "--end", "4", "--max-frames", "9",
         "--save-video"]
    )  # fmt: skip
    assert {k: detect_options(args)[k] for k in ("vid_stride", "start", "end", "max_frames", "save_video")} == {
        "vid_stride": 2, "start": 1.5, "end": 4.0, "max_frames": 9, "save_video": True,
    }  # fmt: skip
    assert not {"vid_stride", "start", "end", "max_frames", "save_video"} & set(
        detect_options(build_parser().parse_args(["detect", "src", "--out", "out"]))
    )
    assert main(["submit", "detect", "src", "--out", "out", "--stream-timeout", "3"]) == 2  # no live stream queued
    assert "--stream-timeout" in capsys.readouterr().err
    queued = build_parser().parse_args(["submit", "detect", "src", "--out", "out", "--vid-stride", "3", "--save-video",
                                        "--chunk-frames", "64", "--warmup-frames", "8"])  # fmt: skip
    assert (detect_options(queued)["vid_stride"], queued.chunk_frames, queued.warmup_frames) == (3, 64, 8)


def test_detect_on_a_video_prints_frames_and_exits_1_on_a_bad_one(tmp_path, capsys):
    from helpers import digit_clip, encode_video, save_tiny

    weights = save_tiny(tmp_path / "tiny.pt")
    (tmp_path / "src").mkdir()
    encode_video(tmp_path / "src" / "clip.mp4", digit_clip(4, size=32), 10)
    assert main(["detect", str(tmp_path / "src"), "--weights", str(weights), "--out", str(tmp_path / "out"),
                 "--quiet", "--workers", "0", "--save-video"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "videos/" in out and "videos: 1 (4 frames" in out
    (tmp_path / "src" / "bad.webm").write_text("no video here\n")
    assert main(["detect", str(tmp_path / "src"), "--weights", str(weights), "--out", str(tmp_path / "out2"),
                 "--quiet", "--workers", "0"]) == 1  # fmt: skip
    assert "could not be read" in capsys.readouterr().err
