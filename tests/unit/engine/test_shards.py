"""Sharded detection (the engine of queued detect jobs): shards merged equal an in-process run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_same_outputs, save_tiny
from PIL import Image

import lstmdet
from lstmdet.engine.detect import DetectOptions, open_detector
from lstmdet.engine.shards import load_plan, merge_shards, plan_shards, run_shard, shard_folder, shards_done
from lstmdet.errors import Cancelled, LstmdetError

FINAL = ("detections.jsonl", "images.json", "coco_results.json", "options.json")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def folder(root: Path, count: int, videos: int = 0) -> Path:
    """``count`` noise images of varied sizes (plus one unreadable file); in ``videos`` sub-folders if given."""
    rng = np.random.default_rng(0)
    for i in range(count):
        sub = root / f"v{i % videos}" if videos else root / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        size = (32, 40) if videos else (int(rng.integers(24, 60)), int(rng.integers(24, 60)))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(sub / f"img{i:03d}.png")
    if not videos:
        (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def sharded(src: Path, out: Path, weights: Path, shard_size: int, **options) -> dict:
    opts = DetectOptions(workers=0, **options)
    detector = open_detector(weights, device="cpu")
    plan = plan_shards(src, out, detector, opts, shard_size=shard_size, job="job-1")
    for index in reversed(range(len(plan.shards))):  # any order, any worker
        run_shard(out, plan, index, detector)
    return merge_shards(out)


def test_shards_merge_to_the_in_process_files(tmp_path, weights):
    src = folder(tmp_path / "src", 21)
    lstmdet.detect(src, tmp_path / "direct", weights, batch_size=4, workers=0, progress=False)
    summary = sharded(src, tmp_path / "job", weights, shard_size=6, batch_size=4)  # 6 -> 8: whole batches
    assert_same_outputs(tmp_path / "direct", tmp_path / "job")
    assert summary["images"] == 22 and summary["failed"] == 1
    assert not shard_folder(tmp_path / "job").exists()
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == sorted([*FINAL, "summary.json"])
    assert merge_shards(tmp_path / "job") == summary  # a second merge (a redelivered task) changes nothing


def test_shards_write_the_models_category_ids(tmp_path):
    ids = save_tiny(tmp_path / "ids.pt", category_ids=[3, 7, 90])
    src = folder(tmp_path / "src", 5)
    lstmdet.detect(src, tmp_path / "direct", ids, batch_size=2, workers=0, progress=False)
    sharded(src, tmp_path / "job", ids, shard_size=2, batch_size=2)
    assert_same_outputs(tmp_path / "direct", tmp_path / "job")
    results = json.loads((tmp_path / "job" / "coco_results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {3, 7, 90}


def test_sequence_shards_keep_videos_whole(tmp_path):
    convlstm = save_tiny(tmp_path / "convlstm.pt", {"name": "convlstm", "hidden": 8})
    src = folder(tmp_path / "videos", 18, videos=3)
    lstmdet.detect(src, tmp_path / "direct", convlstm, sequence=True, batch_size=2, workers=0, progress=False)
    opts = DetectOptions(workers=0, sequence=True, batch_size=2)
    plan = plan_shards(src, tmp_path / "job", open_detector(convlstm, device="cpu"), opts, shard_size=4, job="job-1")
    assert plan.shards == [[0, 6], [6, 12], [12, 18]]  # one video each, never cut inside a video
    sharded(src, tmp_path / "job", convlstm, shard_size=4, sequence=True, batch_size=2)
    assert_same_outputs(tmp_path / "direct", tmp_path / "job")


def test_a_done_shard_is_never_redone_and_cancel_leaves_nothing(tmp_path, weights):
    src = folder(tmp_path / "src", 10)
    out = tmp_path / "job"
    detector = open_detector(weights, device="cpu")
    plan = plan_shards(src, out, detector, DetectOptions(workers=0, batch_size=2), shard_size=4, job="j")
    assert plan_shards(src, out, detector, DetectOptions(workers=0), job="j") == plan  # the same job: kept
    with pytest.raises(LstmdetError, match="another job"):
        plan_shards(src, out, detector, DetectOptions(workers=0), job="other")
    first = run_shard(out, plan, 0, detector)
    assert first["skipped"] is False and first["files"] == 4
    before = (shard_folder(out) / "shard-00000.jsonl").stat().st_mtime_ns
    assert run_shard(out, plan, 0, detector)["skipped"] is True
    assert (shard_folder(out) / "shard-00000.jsonl").stat().st_mtime_ns == before
    with pytest.raises(Cancelled):
        run_shard(out, plan, 1, detector, should_stop=lambda: True)
    assert shards_done(out, plan) == [0]
    assert sorted(p.name for p in shard_folder(out).iterdir()) == ["plan.json", "shard-00000.json", "shard-00000.jsonl"]
    with pytest.raises(LstmdetError, match="not done"):
        merge_shards(out)
    assert not (out / "detections.jsonl").exists()


def test_a_shard_refuses_other_thresholds_than_the_plan(tmp_path, weights):
    src = folder(tmp_path / "src", 4)
    detector = open_detector(weights, device="cpu")
    plan = plan_shards(src, tmp_path / "job", detector, DetectOptions(workers=0, score_thresh=0.2), job="j")
    plan.run_options = {**plan.run_options, "score_thresh": 0.5}
    with pytest.raises(LstmdetError, match="other weights or options"):
        run_shard(tmp_path / "job", plan, 0, detector)
    assert json.loads((shard_folder(tmp_path / "job") / "plan.json").read_text())["run_options"]["score_thresh"] == 0.2
    assert load_plan(tmp_path / "job").shards == [[0, 5]]  # 4 images + 1 broken file


def test_a_job_plans_video_files_as_chunks_after_the_image_shards(tmp_path, weights):
    from helpers import digit_clip, encode_video

    src = folder(tmp_path / "src", 2)
    encode_video(src / "clip.mp4", digit_clip(20, size=32), 10)
    (src / "empty.mp4").write_bytes(b"")
    detector = open_detector(weights, device="cpu")
    plan = plan_shards(src, tmp_path / "job", detector, DetectOptions(workers=0, batch_size=4), chunk_frames=8, job="j")
    assert plan.shards == [[0, 3]] and plan.video_files == ["clip.mp4", "empty.mp4"]
    assert [(c["file"], c["first"]) for c in plan.chunks] == [("clip.mp4", 0), ("clip.mp4", 8), ("clip.mp4", 16),
                                                              ("empty.mp4", 0)]  # fmt: skip
    assert plan.count == 5 and load_plan(tmp_path / "job") == plan
