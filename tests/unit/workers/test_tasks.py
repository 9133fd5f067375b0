"""Job tasks run in this process against a real Redis: arrival checks, errors, and the detect job's merge.

Each task is run with Celery's ``apply`` (in this process, with a real task id); what a task queues
goes to the real broker, where :func:`helpers.queued` reads it back, and :func:`deliver` runs a queued
message the way a worker would (twice: a redelivery of the same message).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_same_outputs, queued, save_tiny, wait_for
from PIL import Image

import lstmdet
from lstmdet.errors import Cancelled, LstmdetError
from lstmdet.workers.settings import Settings
from lstmdet.workers.specs import validate_spec
from lstmdet.workers.store import JobStore
from lstmdet.workers.tasks import JOB_MARKER, _train_out_ready, job_store, job_task

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


# --- arrival checks -------------------------------------------------------------------------------------------------


def planner(job_id: str, spec: dict) -> dict[str, Any]:
    """The first task of a detect job, as the client queues it."""
    return {"task": "lstmdet.detect", "id": job_id, "args": [job_id, spec]}


def test_a_task_of_an_unknown_job_is_dropped(app, store, redis_settings, tmp_path):
    spec = {"src": str(tmp_path), "out": str(tmp_path / "out"), "weights": None, "options": DETECT}
    deliver(app, planner("never-recorded", spec))
    assert store.get("never-recorded") is None
    assert not (tmp_path / "out").exists() and queued(redis_settings.broker_url) == []


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_a_task_of_an_ended_job_does_nothing(app, store, redis_settings, weights, tmp_path, state):
    job_id, spec = submit_detect(store, redis_settings, weights, tmp_path)
    store.finish(job_id, state, error="ended elsewhere")
    ended = store.get(job_id)
    deliver(app, planner(job_id, spec))
    assert store.get(job_id) == ended
    assert not Path(spec["out"]).exists() and queued(redis_settings.broker_url) == []


def test_a_task_delivered_past_the_cap_fails_its_job_without_running(app, store, redis_settings, weights, tmp_path):
    job_id, spec = submit_detect(store, redis_settings, weights, tmp_path)
    for _ in range(redis_settings.max_deliveries):  # three deliveries whose worker died each time
        store.count_delivery(f"{job_id}:0")
    deliver(app, planner(job_id, spec))
    record = store.get(job_id)
    assert record["state"] == "failed"
    assert "lstmdet.detect was delivered 4 times" in record["error"] and "LSTMDET_MAX_DELIVERIES=3" in record["error"]
    assert not Path(spec["out"]).exists()


def test_a_job_cancelled_while_queued_for_a_task_ends_on_arrival(app, store, redis_settings, weights, tmp_path):
    job_id, spec = submit_detect(store, redis_settings, weights, tmp_path)
    deliver(app, planner(job_id, spec))
    shards = take(redis_settings, "lstmdet.detect_shard")
    store.request_cancel(job_id)  # running: only the flag is raised
    assert store.get(job_id)["state"] == "running"
    deliver(app, shards[0])
    record = store.get(job_id)
    assert (record["state"], record["error"]) == ("cancelled", "cancelled")
    assert not list((Path(spec["out"]) / ".lstmdet-shards").glob("shard-*"))  # the shard did not run


def test_the_worker_checks_the_paths_again(app, store, redis_settings, tmp_path):
    """A spec that reached Redis without the client's check is refused before anything runs."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    spec = {"src": str(outside), "out": str(tmp_path / "out"), "weights": None, "options": DETECT}
    store.create("sneaky", "detect", "cpu", spec)
    deliver(app, planner("sneaky", spec))
    record = store.get("sneaky")
    assert record["state"] == "failed" and record["error"].startswith("refused by the worker: detect SRC")
    assert "outside the allowed data roots" in record["error"]
    assert not (tmp_path / "out").exists()


def test_a_shard_without_its_jobs_plan_fails_the_job(app, store, redis_settings, weights, tmp_path):
    job_id, spec = submit_detect(store, redis_settings, weights, tmp_path)
    deliver(app, {"task": "lstmdet.detect_shard", "id": "s0", "args": [job_id, spec, 0]})
    record = store.get(job_id)
    assert record["state"] == "failed" and f"holds no shard plan of job {job_id}" in record["error"]


def test_a_cancelled_jobs_plan_makes_way_for_a_new_job_but_a_running_ones_does_not(
    app, store, redis_settings, weights, tmp_path
):
    first, spec = submit_detect(store, redis_settings, weights, tmp_path)
    deliver(app, planner(first, spec))
    take(redis_settings, "lstmdet.detect_shard")
    second = str(uuid.uuid4())
    store.create(second, "detect", "cpu", spec)  # the same --out
    deliver(app, planner(second, spec))
    record = store.get(second)
    assert record["state"] == "failed" and f"is the output of another job ({first})" in record["error"]

    store.finish(first, "cancelled", error="cancelled")
    third = str(uuid.uuid4())
    store.create(third, "detect", "cpu", spec)
    deliver(app, planner(third, spec))
    assert store.get(third)["state"] == "running"
    assert {m["args"][0] for m in take(redis_settings, "lstmdet.detect_shard")} == {third}
    assert json.loads((Path(spec["out"]) / ".lstmdet-shards" / "plan.json").read_text())["job"] == third


def test_an_eval_of_a_missing_checkpoint_fails_with_the_engines_message(app, store, redis_settings, tmp_path):
    spec = validate_spec("eval", {"weights": str(tmp_path / "missing.pt"), "device": "cpu"}, redis_settings.data_roots)
    store.create("e1", "eval", "cpu", spec)
    deliver(app, {"task": "lstmdet.eval", "id": "e1", "args": ["e1", spec]})
    record = store.get("e1")
    assert record["state"] == "failed" and "missing.pt does not exist" in record["error"]


def test_late_duplicates_of_a_train_and_an_eval_job_change_nothing(app, store, redis_settings, tmp_path):
    """Each job's first task delivered again after the job succeeded: no second run, no file touched."""
    from helpers import classify_config

    config = classify_config({"name": "identity"}, {"name": "small_cnn", "widths": [8, 8]})
    config["data"] = {"train": {"name": "mnist_idx", "split": "train", "images": 64}}
    config["train"] = {"epochs": 1, "batch_size": 32, "workers": 0, "progress": False, "seed": 1}
    out = tmp_path / "run"
    train = validate_spec("train", {"config": config, "out": str(out), "resume": False}, redis_settings.data_roots)
    store.create("t1", "train", "cpu", train)
    message = {"task": "lstmdet.train", "id": "t1", "args": ["t1", train]}
    deliver(app, message)
    assert store.get("t1")["state"] == "succeeded"
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    evaluation = validate_spec("eval", {"weights": str(out / "last.pt"), "out": str(tmp_path / "eval.json"),
                                        "device": "cpu", "data": {"name": "mnist_idx", "split": "val", "images": 32}},
                               redis_settings.data_roots)  # fmt: skip
    store.create("e1", "eval", "cpu", evaluation)
    deliver(app, {"task": "lstmdet.eval", "id": "e1", "args": ["e1", evaluation]})
    scored = (tmp_path / "eval.json").stat().st_mtime_ns
    time.sleep(0.01)
    deliver(app, message)  # the train job's first task once more (a lost worker's task, put back)
    deliver(app, {"task": "lstmdet.eval", "id": "e1", "args": ["e1", evaluation]})
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written
    assert (tmp_path / "eval.json").stat().st_mtime_ns == scored
    assert store.get("t1")["state"] == store.get("e1")["state"] == "succeeded"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


# --- what a task body raises ----------------------------------------------------------------------------------------


@pytest.fixture
def body(app, store, redis_settings, tmp_path):
    """Register ``fn(task, job)`` as a task body of an eval job and run it once; returns the job's record."""

    def run(fn, name: str = "test.body", throw: bool = True) -> dict[str, Any]:
        app.task(name=name, bind=True, shared=False)(job_task("eval")(fn))
        spec = {"weights": f"{tmp_path}/models/../w.pt", "device": "cpu"}
        store.create("b1", "eval", "cpu", spec)
        app.tasks[name].apply(args=["b1", spec], task_id="b1", throw=throw)
        return store.get("b1")

    return run


@pytest.mark.parametrize(
    "exc, state, error",
    [
        (LstmdetError("--conf 1.5 is not in [0, 1]; pass a score between 0 and 1"), "failed",
         "--conf 1.5 is not in [0, 1]; pass a score between 0 and 1"),
        (Cancelled("cancelled"), "cancelled", "cancelled"),
        (ValueError("boom"), "failed", "ValueError: boom (traceback in the worker log)"),
    ],
)  # fmt: skip
def test_what_a_body_raises_ends_the_job(body, exc, state, error):
    def fail(task, job):
        raise exc

    record = body(fail)
    assert (record["state"], record["error"]) == (state, error)


def test_the_soft_time_limit_fails_the_job_naming_the_settings(body):
    from celery.exceptions import SoftTimeLimitExceeded

    def slow(task, job):
        raise SoftTimeLimitExceeded()

    record = body(slow)
    assert record["state"] == "failed"
    assert "test.body ran past its soft time limit (20 s)" in record["error"]
    assert all(name in record["error"] for name in ("LSTMDET_SOFT_TIME_LIMIT", "LSTMDET_TIME_LIMIT"))


def test_a_body_runs_on_the_checked_spec_of_a_running_job(body, store, tmp_path):
    seen = {}

    def look(task, job):
        seen.update(spec=job.spec, state=store.get(job.job_id)["state"], queue=job.queue)
        store.finish(job.job_id, "succeeded", result={"ok": 1})

    record = body(look)
    assert seen["spec"]["weights"] == str(tmp_path.resolve() / "w.pt")  # resolved by the worker's check
    assert (seen["state"], seen["queue"]) == ("running", "cpu")
    assert (record["state"], record["result"]) == ("succeeded", {"ok": 1})


def test_a_retry_passes_through_and_the_next_delivery_is_counted_afresh(body, store):
    calls = []

    def again(task, job):
        calls.append(task.request.retries)
        if len(calls) == 1:
            raise task.retry(countdown=0, max_retries=None)
        store.finish(job.job_id, "succeeded", result={"retries": task.request.retries})

    record = body(again, throw=False)  # apply() runs the retry at once, as a worker would run the new message
    assert calls == [0, 1]
    assert (record["state"], record["result"]) == ("succeeded", {"retries": 1})
    assert store.redis.get("lstmdet:deliveries:b1:0") == store.redis.get("lstmdet:deliveries:b1:1") == "1"


# --- helpers of the tasks -------------------------------------------------------------------------------------------


def test_a_train_folder_is_claimed_by_its_job(tmp_path):
    out = tmp_path / "run"
    assert _train_out_ready(out, "job-a", resume=False) is False
    assert (out / JOB_MARKER).read_text() == "job-a\n"
    (out / "last.pt").write_bytes(b"checkpoint")
    assert _train_out_ready(out, "job-a", resume=False) is True  # the job redelivered: resume its run
    with pytest.raises(LstmdetError, match="holds the run of job job-a; choose another --out, or submit with --resume"):
        _train_out_ready(out, "job-b", resume=False)
    assert (out / JOB_MARKER).read_text() == "job-a\n"
    assert _train_out_ready(out, "job-b", resume=True) is True
    assert (out / JOB_MARKER).read_text() == "job-b\n"


def test_ping_reports_where_and_when_it_ran(app):
    result = app.tasks["lstmdet.ping"].apply(args=[12.5], throw=True).get()
    assert result["sent"] == 12.5 and result["pid"] == os.getpid()
    assert abs(result["started"] - time.time()) < 60
