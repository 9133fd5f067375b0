"""Stream URLs through ``lstmdet.detect``: a real H.264 MPEG-TS served over HTTP on 127.0.0.1, ``file:`` URLs,
a server that never answers (time-out), one that closes mid-stream, ``--max-frames`` on a live stream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import decode_video, digit_clip, encode_video, run_cli, save_tiny
from stream_server import StreamServer

import lstmdet
from lstmdet.cli.main import main
from lstmdet.data.video import DEFAULT_STREAM_TIMEOUT, read_frames
from lstmdet.engine.detect_options import DetectOptions
from lstmdet.errors import LstmdetError

FPS = 10
FRAMES = 30


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def ts(tmp_path_factory) -> Path:
    """30 frames (48x48, 10 fps) of moving digits, H.264 in MPEG-TS."""
    path = tmp_path_factory.mktemp("stream") / "x.ts"
    return encode_video(path, digit_clip(FRAMES, size=48, seed=1), FPS, container="mpegts")


def as_file(ts: Path) -> Path:
    """The same bytes under a video extension (``.ts`` is not one; FFmpeg reads the content, not the name)."""
    path = ts.with_name("x_ts.mkv")
    if not path.exists():
        shutil.copyfile(ts, path)
    return path


def run(src, out, weights, **options) -> dict:
    return lstmdet.detect(src, out, weights, workers=0, progress=False, **options)


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def frames_only(records: list[dict]) -> list:
    return [(r["frame_index"], r["timestamp"], r["width"], r["height"], r["detections"]) for r in records]


def test_an_http_stream_gives_the_detections_of_the_file(tmp_path, ts, weights):
    run(as_file(ts), tmp_path / "file", weights, batch_size=4)
    with StreamServer(ts) as server:
        summary = run(server.url, tmp_path / "http", weights, batch_size=4, save_video=True)
        url, port = server.url, server.port
    got = lines(tmp_path / "http")
    assert [r["file"] for r in got] == [url] * FRAMES
    assert frames_only(got) == frames_only(lines(tmp_path / "file"))
    assert (summary["videos"], summary["frames"], summary["failed"], summary["interrupted"]) == (1, FRAMES, 0, False)
    images = json.loads((tmp_path / "http" / "images.json").read_text())
    assert images["videos"] == [{"id": 1, "name": url, "width": 48, "height": 48, "frames": FRAMES}]
    saved = tmp_path / "http" / "videos" / f"127.0.0.1_{port}_x.ts.mp4"
    decoded, _ = decode_video(saved)
    assert len(decoded) == FRAMES and decoded[0].shape == (48, 48, 3)


def test_a_file_url_is_read_as_a_stream(tmp_path, ts, weights):
    run(as_file(ts), tmp_path / "file", weights)
    url = f"file:{ts}"
    summary = run(url, tmp_path / "url", weights)
    got = lines(tmp_path / "url")
    assert [r["file"] for r in got] == [url] * FRAMES and summary["frames"] == FRAMES
    assert frames_only(got) == frames_only(lines(tmp_path / "file"))


def test_a_server_that_never_answers_times_out_with_a_message(tmp_path, ts, weights):
    with StreamServer(ts, "silent") as server:
        started = time.monotonic()
        result = run_cli("detect", server.url, "--weights", str(weights), "--out", str(tmp_path / "out"),
                         "--stream-timeout", "0.5", "--quiet", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
        elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = lines(tmp_path / "out")
    assert line["file"] == server.url and line["error"].endswith(
        "no answer within 0.5 s; check the URL, or raise --stream-timeout for a slow source"
    )
    assert "no answer within 0.5 s" in result.stderr or "see their error lines" in result.stderr
    assert elapsed < 120  # interpreter and model loading included (a loaded machine); the time-out is 0.5 s
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["failed"], summary["frames"], summary["interrupted"]) == (1, 0, False)


def test_the_default_stream_timeout_is_the_documented_10_seconds(capsys):
    assert DEFAULT_STREAM_TIMEOUT == 10.0
    assert DetectOptions().stream_timeout == DEFAULT_STREAM_TIMEOUT
    assert main(["detect", "--help"]) == 0
    assert "reading, before it is given up with an error line (default 10)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(LstmdetError, match="stream_timeout"):
        DetectOptions(stream_timeout=0)


def test_a_server_closing_mid_stream_keeps_the_frames_before_and_records_the_end(tmp_path, ts, weights):
    whole, _ = decode_video(ts)
    with StreamServer(ts, "cut", cut=ts.stat().st_size // 2) as server:
        summary = run(server.url, tmp_path / "out", weights, batch_size=4, save_video=True)
    got = lines(tmp_path / "out")
    *frames, end = got
    assert 5 <= len(frames) < FRAMES
    assert [r["frame_index"] for r in frames] == list(range(len(frames)))
    # the last frame may come from the packet the cut split (FFmpeg conceals what is missing): the others are exact
    assert frames_only(frames[:-1]) == frames_only(lines_of_file(tmp_path, ts, weights)[: len(frames) - 1])
    assert set(end) == {"file", "error"} and f"decoding stopped after frame {len(frames) - 1}" in end["error"]
    assert (summary["frames"], summary["failed"]) == (len(frames), 1)
    decoded, _ = decode_video(next((tmp_path / "out" / "videos").iterdir()))
    assert len(decoded) == len(frames) and len(whole) == FRAMES


def lines_of_file(tmp_path: Path, ts: Path, weights: Path) -> list[dict]:
    run(as_file(ts), tmp_path / "file", weights, batch_size=4)
    return lines(tmp_path / "file")


def test_max_frames_ends_a_live_stream_with_complete_outputs(tmp_path, weights):
    long = encode_video(tmp_path / "long.ts", digit_clip(300, size=48, seed=2), FPS, container="mpegts")
    with StreamServer(long, "slow", chunk=2048, pause=0.25) as server:  # about 40 s for the whole stream
        started = time.monotonic()
        summary = run(server.url, tmp_path / "out", weights, max_frames=4, save_video=True, batch_size=2)
        elapsed = time.monotonic() - started
    got = lines(tmp_path / "out")
    assert [r["frame_index"] for r in got] == [0, 1, 2, 3] and summary["frames"] == 4
    assert elapsed < 30  # it hung up after 4 frames instead of reading the stream to its end
    assert len(json.loads((tmp_path / "out" / "images.json").read_text())["images"]) == 4
    decoded, _ = decode_video(next((tmp_path / "out" / "videos").iterdir()))
    assert len(decoded) == 4


def test_read_frames_gives_the_file_frames_over_http(ts):
    images, times = decode_video(ts)
    with StreamServer(ts) as server:
        frames = list(read_frames(server.url))
    assert [f.timestamp for f in frames] == pytest.approx([t - times[0] for t in times], abs=1e-6)  # from the start
    assert all((f.image == image).all() for f, image in zip(frames, images, strict=True))


def test_ctrl_c_while_a_stream_is_still_connecting_ends_the_run_at_once(tmp_path, ts, weights):
    with StreamServer(ts, "silent") as server:
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        started = time.monotonic()
        summary = run(server.url, tmp_path / "out", weights, stream_timeout=20)
        elapsed = time.monotonic() - started
        timer.join()
    assert elapsed < 15  # not the 20 s time-out
    assert lines(tmp_path / "out") == [{"file": server.url, "error": "stopped by Ctrl-C before the first frame came"}]
    assert (summary["interrupted"], summary["frames"], summary["failed"]) == (True, 0, 1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
