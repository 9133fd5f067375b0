"""Videos cut into chunks (queued detect jobs): the chunks read exactly the frames an in-process run reads,
merged chunks equal an in-process run (stateless model, exactly), a stateful model's chunks equal one pass
when the warm-up reaches back to the first frame, decode errors and the annotated video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_same_outputs, corrupt_video, decode_video, digit_clip, encode_video, save_tiny
from PIL import Image

import lstmdet
from lstmdet.data.video import frame_times, read_frames
from lstmdet.engine.detect import DetectOptions, open_detector
from lstmdet.engine.shards import merge_shards, plan_shards, run_shard
from lstmdet.engine.video_chunks import VideoChunk, plan_chunks
from lstmdet.errors import LstmdetError

FPS = 10


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """``long.mp4``: 45 frames with a key frame every 8; ``short.mkv``: 6 frames."""
    root = tmp_path_factory.mktemp("clips")
    encode_video(root / "long.mp4", digit_clip(45, size=40, seed=4), FPS, gop=8)
    encode_video(root / "short.mkv", digit_clip(6, size=40, seed=5), FPS)
    return root


@pytest.fixture(scope="module")
def stateless(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def stateful(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "convlstm.pt", encoder={"name": "convlstm", "hidden": 8})


def read(path: Path, chunk: VideoChunk, opts: DetectOptions) -> list[tuple[int, float]]:
    """(index, timestamp) of the frames ``chunk`` writes, read as :func:`run_chunk` reads them."""
    o = chunk.options(opts)
    frames = read_frames(path, stride=o.vid_stride, start=o.start, end=o.end, max_frames=o.max_frames,
                         first_index=chunk.first_index)  # fmt: skip
    return [(f.index, f.timestamp) for f in frames][chunk.warmup :]


def test_frame_times_are_the_decoded_frame_times(clips):
    times, complete = frame_times(clips / "long.mp4")
    assert complete and len(times) == 45
    assert [round(t, 6) for t in times] == [round(t, 6) for t in decode_video(clips / "long.mp4")[1]]


@pytest.mark.parametrize(
    "options",
    [{}, {"vid_stride": 2}, {"vid_stride": 3, "start": 0.65}, {"start": 1.0, "end": 3.75, "vid_stride": 2},
     {"max_frames": 21}, {"vid_stride": 2, "max_frames": 9, "start": 0.3}],
)  # fmt: skip
@pytest.mark.parametrize("stateful_model", [False, True])
def test_chunks_read_exactly_the_frames_of_one_pass(clips, options, stateful_model):
    opts = DetectOptions(batch_size=3, **options)
    path = clips / "long.mp4"
    whole = [(f.index, f.timestamp) for f in read_frames(path, stride=opts.vid_stride, start=opts.start,
                                                        end=opts.end, max_frames=opts.max_frames)]  # fmt: skip
    chunks = plan_chunks(clips, ["long.mp4"], opts, chunk_frames=4, warmup_frames=3, stateful=stateful_model)
    assert len(chunks) > 1
    pieces = [read(path, chunk, opts) for chunk in chunks]
    assert [frame for piece in pieces for frame in piece] == whole
    size = 4 if stateful_model else 6  # a stateless model's chunks are whole batches (of 3)
    assert [len(p) for p in pieces[:-1]] == [size] * (len(pieces) - 1)
    assert [c.warmup for c in chunks] == ([0] + [3] * (len(chunks) - 1) if stateful_model else [0] * len(chunks))


def test_a_video_shorter_than_a_chunk_or_unreadable_is_one_chunk(tmp_path, clips):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    opts = DetectOptions(max_frames=5)
    chunks = plan_chunks(clips, ["short.mkv", "../" + tmp_path.name + "/bad.mp4"], opts, chunk_frames=8,
                         warmup_frames=2, stateful=True)  # fmt: skip
    assert [(c.start, c.first_index, c.frames, c.warmup) for c in chunks] == [(None, None, 5, 0)] * 2


def sharded(src: Path, out: Path, weights: Path, *, chunk_frames: int, warmup_frames: int = 0, **options) -> dict:
    opts = DetectOptions(workers=0, **options)
    detector = open_detector(weights, device="cpu")
    plan = plan_shards(src, out, detector, opts, shard_size=4, chunk_frames=chunk_frames,
                       warmup_frames=warmup_frames, job="job-v")  # fmt: skip
    for index in reversed(range(plan.count)):  # any order, any worker
        run_shard(out, plan, index, detector)
    return merge_shards(out)


def test_chunked_videos_and_images_merge_to_the_in_process_files(tmp_path, clips, stateless):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("long.mp4", "short.mkv"):
        (src / name).write_bytes((clips / name).read_bytes())
    for i in range(5):
        Image.fromarray(digit_clip(1, size=36, seed=9 + i)[0]).save(src / f"img{i}.png")
    options = {"batch_size": 4, "vid_stride": 2, "save_video": True}
    direct = lstmdet.detect(src, tmp_path / "direct", stateless, workers=0, progress=False, **options)
    summary = sharded(src, tmp_path / "job", stateless, chunk_frames=5, **options)  # 5 -> 8: whole batches
    assert_same_outputs(tmp_path / "direct", tmp_path / "job", ignore=("fps",))
    assert (summary["images"], summary["videos"], summary["frames"]) == (5, 2, 23 + 3) == (
        direct["images"], direct["videos"], direct["frames"])  # fmt: skip
    assert summary["detections"] > 0


def test_a_stateful_models_chunks_equal_one_pass_when_warmed_up_from_the_first_frame(tmp_path, clips, stateful):
    src = tmp_path / "src"
    src.mkdir()
    (src / "long.mp4").write_bytes((clips / "long.mp4").read_bytes())
    lstmdet.detect(src, tmp_path / "direct", stateful, workers=0, progress=False, batch_size=4)
    sharded(src, tmp_path / "full", stateful, chunk_frames=10, warmup_frames=45, batch_size=4)
    assert_same_outputs(tmp_path / "direct", tmp_path / "full", ignore=("fps",))

    # a short warm-up: the same frames, and the state differs only near the chunk starts
    sharded(src, tmp_path / "short", stateful, chunk_frames=10, warmup_frames=2, batch_size=4)
    direct, short = (lines(tmp_path / name) for name in ("direct", "short"))
    assert [(r["frame_index"], r["timestamp"]) for r in short] == [(r["frame_index"], r["timestamp"]) for r in direct]
    assert short[:10] == direct[:10]  # the first chunk is the one pass
    assert short != direct  # the model's state matters


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]


def test_a_decode_error_mid_video_ends_the_video_as_in_process(tmp_path, stateless):
    """PNG frames (each its own key frame) with zeroed bytes at 40 %: the chunk that meets the packet writes
    the frames before it and the error line; the later chunks (which decode fine) are dropped."""
    src = tmp_path / "src"
    src.mkdir()
    corrupt_video(src / "corrupt.mov", digit_clip(24, size=40, seed=6), FPS, at=0.4)
    direct = lstmdet.detect(src, tmp_path / "direct", stateless, workers=0, progress=False, batch_size=2)
    sharded(src, tmp_path / "job", stateless, chunk_frames=4, batch_size=2)
    assert lines(tmp_path / "job") == lines(tmp_path / "direct")
    assert "decoding stopped" in lines(tmp_path / "job")[-1]["error"] and 0 < direct["ok"] < 20


def test_a_live_stream_is_refused_for_a_queued_job(tmp_path, stateless):
    detector = open_detector(stateless, device="cpu")
    with pytest.raises(LstmdetError, match=r"cannot read the live stream rtsp://127\.0\.0\.1:9/x.*lstmdet detect URL"):
        plan_shards("rtsp://127.0.0.1:9/x", tmp_path / "job", detector, DetectOptions(), job="j")


def test_bad_chunk_settings_say_what_to_pass(tmp_path, clips, stateless):
    with pytest.raises(LstmdetError, match="chunk_frames must be >= 1"):
        plan_chunks(clips, ["long.mp4"], DetectOptions(), chunk_frames=0, warmup_frames=0, stateful=False)
    with pytest.raises(LstmdetError, match="warmup_frames must be >= 0"):
        plan_chunks(clips, ["long.mp4"], DetectOptions(), chunk_frames=4, warmup_frames=-1, stateful=False)
