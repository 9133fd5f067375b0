"""Job tasks run in this process against a real Redis: arrival checks, errors, and the detect job's merge.

Each task is run with Celery's ``apply`` (in this process, with a real task id); what a task queues
goes to the real broker, where :func:`helpers.queued` reads it back, and :func:`deliver` runs a queued
message the way a worker would (twice: a redelivery of the same message).
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_same_outputs, queued, save_tiny, wait_for
from PIL import Image

import lstmdet
from lstmdet.workers.settings import Settings
from lstmdet.workers.specs import validate_spec
from lstmdet.workers.store import JobStore
from lstmdet.workers.tasks import job_store

DETECT = {"device": "cpu", "workers": 0, "batch_size": 2}
FINAL = ["coco_results.json", "detections.jsonl", "images.json", "options.json", "summary.json"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def app(redis_settings: Settings) -> Any:
    from lstmdet.workers.app import create_app

    return create_app(redis_settings)


@pytest.fixture
def store(redis_settings: Settings) -> JobStore:
    return job_store(redis_settings)


def take(settings: Settings, task: str) -> list[dict[str, Any]]:
    """Remove the queued messages of ``task`` from the broker (as a worker would) and return them."""
    import redis

    messages = [m for m in queued(settings.broker_url) if m["task"] == task]
    client = redis.Redis.from_url(settings.broker_url, decode_responses=True)
    try:
        for message in messages:
            client.lrem("cpu", 1, message["raw"])
    finally:
        client.close()
    return messages


def deliver(app: Any, message: dict[str, Any]) -> None:
    """Run a queued message in this process, as a worker that took it would (same task id, same args)."""
    app.tasks[message["task"]].apply(args=message["args"], task_id=message["id"], throw=True)


def scenes(root: Path, count: int) -> Path:
    """``count`` small noise images of varied sizes."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(count):
        size = (int(rng.integers(24, 48)), int(rng.integers(24, 48)))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    return root


def submit_detect(store: JobStore, settings: Settings, weights: Path, root: Path, images: int = 4) -> tuple[str, dict]:
    """Record a detect job of ``images`` images in shards of 2 (as the client does); returns its id and spec."""
    inside = shutil.copyfile(weights, root / weights.name)  # inside the data root
    raw = {"src": str(scenes(root / "src", images)), "out": str(root / "out"), "weights": str(inside),
           "options": DETECT, "shard_size": 2}  # fmt: skip
    spec = validate_spec("detect", raw, settings.data_roots)
    job_id = str(uuid.uuid4())
    store.create(job_id, "detect", "cpu", spec)
    return job_id, spec


def run_shards(app: Any, settings: Settings, job_id: str, spec: dict) -> list[dict[str, Any]]:
    """Plan the job (its first task) and run every shard it queued, in order; returns the shard messages."""
    deliver(app, {"task": "lstmdet.detect", "id": job_id, "args": [job_id, spec]})
    shards = take(settings, "lstmdet.detect_shard")
    for message in shards:
        deliver(app, message)
    return shards


def in_process(src: Path, out: Path, weights: Path) -> Path:
    lstmdet.detect(src, out, weights, progress=False, **DETECT)
    return out


# --- the detect job's merge -----------------------------------------------------------------------------------------


def test_a_redelivered_last_shard_queues_no_second_merge(app, store, redis_settings, weights, tmp_path):
    """The defect: each delivery of the last shard queued a merge; two merges then raced on one folder."""
    job_id, spec = submit_detect(store, redis_settings, weights, tmp_path)
    shards = run_shards(app, redis_settings, job_id, spec)
    assert len(shards) == 2
    deliver(app, shards[-1])  # the last shard again: its worker died before acknowledging it
    deliver(app, shards[0])  # and a duplicate of another shard, which now also sees every shard done
    merges = take(redis_settings, "lstmdet.detect_merge")
    assert len(merges) == 1, f"the merge was queued {len(merges)} times"
    assert store.get(job_id)["progress"] == {"shards_done": 2, "shards": 2, "images": 4}

    deliver(app, merges[0])
    deliver(app, merges[0])  # the merge delivered twice: the second changes nothing
    record = store.get(job_id)
    assert record["state"] == "succeeded", record
    assert record["result"]["images"] == 4 and record["result"]["out"] == spec["out"]
    out = Path(spec["out"])
    assert sorted(p.name for p in out.iterdir()) == FINAL  # the shard folder is gone, no temporary file left
    assert_same_outputs(out, in_process(Path(spec["src"]), tmp_path / "reference", Path(spec["weights"])))
    assert queued(redis_settings.broker_url) == []


def test_a_late_duplicate_changes_nothing_once_the_job_succeeded(app, store, redis_settings, weights, tmp_path):
    job_id, spec = submit_detect(store, redis_settings, weights, tmp_path)
    shards = run_shards(app, redis_settings, job_id, spec)
    (merge,) = take(redis_settings, "lstmdet.detect_merge")
    deliver(app, merge)
    record = store.get(job_id)
    out = Path(spec["out"])
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert record["state"] == "succeeded"

    deliver(app, shards[-1])  # a late last shard
    deliver(app, merge)  # a late merge
    deliver(app, {"task": "lstmdet.detect", "id": job_id, "args": [job_id, spec]})  # a late first task
    assert store.get(job_id) == record  # state, finish time, result and progress as they were
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert queued(redis_settings.broker_url) == []


def test_a_merge_delivered_while_another_runs_leaves_the_files_to_it(
    app, store, redis_settings, weights, tmp_path, monkeypatch
):
    """Two deliveries of the merge at once (e.g. the broker gave it out again): one merges, the other waits."""
    import lstmdet.engine.shards

    job_id, spec = submit_detect(store, redis_settings, weights, tmp_path)
    run_shards(app, redis_settings, job_id, spec)
    (merge,) = take(redis_settings, "lstmdet.detect_merge")
    real_merge = lstmdet.engine.shards.merge_shards
    calls: list[str] = []
    release = threading.Event()

    def slow_merge(out: str) -> dict:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            release.wait(30)  # the first merge is busy writing until the test lets it go on
        return real_merge(out)

    monkeypatch.setattr(lstmdet.engine.shards, "merge_shards", slow_merge)
    first = threading.Thread(target=deliver, args=(app, merge), name="first-merge")
    first.start()
    try:
        wait_for(lambda: calls, 30, "the first merge to start")
        deliver(app, merge)  # the same message once more, while the first delivery is merging
        assert calls == ["first-merge"], "a second merge ran while the first was writing the same folder"
        assert store.get(job_id)["state"] == "running"
        (recheck,) = take(redis_settings, "lstmdet.detect_merge")  # it looks again later, in case the first dies
        assert recheck["task"] == merge["task"] and recheck["args"] == merge["args"] and recheck["eta"] is not None
    finally:
        release.set()
        first.join(30)
    record = store.get(job_id)
    assert record["state"] == "succeeded", record
    deliver(app, recheck)
    assert store.get(job_id) == record and calls == ["first-merge"]
    assert sorted(p.name for p in Path(spec["out"]).iterdir()) == FINAL
    assert queued(redis_settings.broker_url) == []
