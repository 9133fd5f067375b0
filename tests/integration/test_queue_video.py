"""Queued detect jobs on video files: chunks of one long video spread over two real ``lstmdet worker``
processes through a real ``redis-server``, merged into the files of an in-process run."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_same_outputs, digit_clip, encode_video, run_cli, save_tiny
from queue_harness import Queue

import lstmdet

pytestmark = pytest.mark.redis


def test_a_chunked_video_job_on_two_workers_equals_in_process(tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    encode_video(src / "long.mp4", digit_clip(96, size=40, seed=3), 10, gop=8)
    encode_video(src / "short.mkv", digit_clip(5, size=40, seed=4), 10)
    weights = save_tiny(tmp_path / "tiny.pt")
    torch.set_num_threads(1)  # as the workers run (LSTMDET_TORCH_THREADS=1): the same float sums
    options = {"workers": 0, "batch_size": 2, "vid_stride": 2, "save_video": True}
    lstmdet.detect(src, tmp_path / "direct", weights, progress=False, **options)

    queue = Queue(tmp_path)
    try:
        workers = [queue.worker("--concurrency", "1") for _ in range(2)]
        submitted = run_cli(
            "submit", "detect", str(src), "--out", str(tmp_path / "queued"), "--weights", str(weights),
            "--workers", "0", "--batch-size", "2", "--vid-stride", "2", "--save-video", "--chunk-frames", "6",
            "--wait", "--json", env=queue.env,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        record = json.loads(submitted.stdout.split("\n", 1)[1])
        assert record["state"] == "succeeded", record
        # 48 frames of long.mp4 in 8 chunks of 6, short.mkv in one
        assert record["progress"] == {"shards_done": 9, "shards": 9, "images": 0, "videos": 2}
        assert_same_outputs(tmp_path / "direct", tmp_path / "queued", ignore=("fps",))
        assert sorted(p.name for p in (tmp_path / "queued" / "videos").iterdir()) == ["long.mp4", "short.mkv.mp4"]
        ran = [w.log.read_text().count("lstmdet.detect_shard[") for w in workers]
        assert all(ran), f"chunks received per worker: {ran}"  # both workers took chunks
    finally:
        queue.close()
