"""Queued jobs through a real ``redis-server`` and real ``lstmdet worker`` processes, faults included.

Every test talks to its own server on a free loopback port. Workers run at default settings unless
a test says otherwise; the faults that need leases to expire (a whole worker killed, stopped or
terminated) are in ``test_failover.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import install_plugin, run_cli, wait_for
from queue_harness import DETECT, FINAL, Queue, assert_same_files, make_certificates

import lstmdet
from lstmdet.checkpoint import read_checkpoint
from lstmdet.workers.client import JobClient
from lstmdet.workers.settings import Settings
from lstmdet.workers.store import BrokerUnavailable

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def queue(scenes, tmp_path_factory):
    """A server and one worker with two pool processes, shared by the tests that kill nothing."""
    q = Queue(scenes.parent.parent)
    q.worker("--concurrency", "2")
    yield q
    q.close()


def test_queued_detect_equals_in_process(queue, scenes, reference):
    out = scenes.parent.parent / "queued"
    job = queue.client.submit_detect(scenes, out, shard_size=24, **DETECT)
    record = queue.client.wait(job, timeout=120)
    assert record["state"] == "succeeded", record
    assert record["progress"] == {"shards_done": 7, "shards": 7, "images": 160}
    assert record["result"]["images"] == 160
    assert_same_files(out, reference)
    listed = run_cli("jobs", "list", "--json", env=queue.env)
    assert job in [r["id"] for r in json.loads(listed.stdout)]
    status = run_cli("jobs", "status", job, env=queue.env)
    assert status.returncode == 0 and "succeeded" in status.stdout and "shards 7/7" in status.stdout


def test_a_live_worker_is_seen_listening_on_its_queue_only(queue, scenes):
    assert queue.client.listening("cpu") is True
    assert queue.client.listening("gpu") is False
    done = run_cli("submit", "eval", "--weights", str(scenes.parent / "none.pt"), "--queue", "cpu", env=queue.env)
    assert done.returncode == 0 and "follow it" in done.stderr and "no worker" not in done.stderr, done.stderr


def test_paths_outside_the_roots_are_refused_at_submit_and_by_the_worker(queue, scenes, tmp_path):
    done = run_cli("submit", "detect", str(tmp_path), "--out", str(scenes.parent / "x"), env=queue.env)
    assert done.returncode == 2 and "outside the allowed data roots" in done.stderr
    link = scenes.parent.parent / "escape"
    link.symlink_to(tmp_path)  # inside a root by name, outside once resolved
    done = run_cli("submit", "detect", str(scenes), "--out", str(link / "out"), env=queue.env)
    assert done.returncode == 2 and "outside the allowed data roots" in done.stderr
    # a spec that reaches Redis without the client's check is refused by the worker itself
    spec = {"src": str(tmp_path), "out": str(scenes.parent.parent / "sneaky"), "weights": None, "options": {}}
    queue.client.store.create("sneaky-job", "detect", "cpu", spec)
    queue.client.app.send_task("lstmdet.detect", args=["sneaky-job", spec], task_id="sneaky-job", queue="cpu")
    record = queue.client.wait("sneaky-job", timeout=60)
    assert record["state"] == "failed" and "refused by the worker" in record["error"], record
    assert not (scenes.parent.parent / "sneaky").exists()


def test_cancel_ends_the_job_without_final_files(queue, scenes):
    out = scenes.parent.parent / "cancelled"
    job = queue.client.submit_detect(scenes, out, shard_size=8, workers=0, batch_size=1)
    wait_for(lambda: queue.progress(job) >= 1, 60, "a first shard", every=0.02)
    queue.client.cancel(job)
    record = queue.client.wait(job, timeout=60)
    assert record["state"] == "cancelled", record
    assert 0 < record["progress"]["shards_done"] < 20
    time.sleep(1.0)  # shards already running notice the flag at their next batch
    assert not any((out / name).exists() for name in [*FINAL, "summary.json"])
    waited = run_cli("jobs", "wait", job, env=queue.env)
    assert waited.returncode == 1 and "cancelled" in waited.stdout
    again = run_cli("jobs", "cancel", job, env=queue.env)  # an ended job stays as it ended
    assert again.returncode == 0 and "cancelled" in again.stdout


def test_a_hundred_small_jobs_all_complete_once(queue, scenes):
    src = scenes.parent.parent / "pair"
    src.mkdir()
    for name in sorted(p.name for p in scenes.iterdir())[:2]:
        (src / name).write_bytes((scenes / name).read_bytes())
    outs = {queue.client.submit_detect(src, src.parent / "many" / f"{i:03d}", **DETECT): i for i in range(100)}
    records = {job: queue.client.wait(job, timeout=300) for job in outs}
    assert [r["state"] for r in records.values()].count("succeeded") == 100, [r.get("error") for r in records.values()]
    redis = queue.client.store.redis
    for job, i in outs.items():
        lines = (src.parent / "many" / f"{i:03d}" / "detections.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["file"] for line in lines) == sorted(p.name for p in src.iterdir())
        assert redis.get(f"lstmdet:deliveries:{job}:0") == "1"  # each job's first task ran exactly once


def test_redis_restarted_mid_job_with_aof_the_job_completes(scenes, reference):
    q = Queue(scenes.parent.parent / "restart", data=scenes.parent)
    try:
        q.worker()
        out = q.folder / "out"
        # Short shards: a consumer often waits on BRPOP, and kombu's Redis transport loses a message whose
        # BRPOP reply dies with the server (popped, never recorded as unacked). Leases cannot see such a
        # loss; the job reconciler queues the job's work again a lease later (lstmdet.workers.reconcile).
        job = q.client.submit_detect(scenes, out, shard_size=8, **DETECT)
        wait_for(lambda: q.progress(job) >= 1, 90, "one shard", every=0.02)
        q.server.kill()
        time.sleep(1.0)
        q.server.start()  # same port and folder: the AOF brings back queues, unacked tasks and job records
        record = wait_for(lambda: (r := q.client.status(job))["state"] in ("succeeded", "failed") and r, 180, "the job")
        assert record["state"] == "succeeded", record
        assert_same_files(out, reference)
    finally:
        q.close()


def test_redis_down_at_submit_fails_clearly_and_fast(scenes):
    env = {**os.environ, "LSTMDET_BROKER_URL": "redis://127.0.0.1:9/0", "LSTMDET_DATA_ROOTS": str(scenes.parent)}
    started = time.monotonic()
    done = run_cli("submit", "detect", str(scenes), "--out", str(scenes.parent / "never"), env=env)
    assert time.monotonic() - started < 60
    assert done.returncode == 2 and "cannot reach Redis at redis://127.0.0.1:9/0" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_password_protected_redis(scenes, tmp_path):
    q = Queue(scenes.parent.parent / "secured", data=scenes.parent, password="s3cret-pass")
    try:
        q.worker()
        job = q.client.submit_detect(scenes / sorted(os.listdir(scenes))[0], q.folder / "out", **DETECT)
        assert q.client.wait(job, timeout=60)["state"] == "succeeded"
        wrong = {
            **q.env,
            "LSTMDET_BROKER_URL": q.server.url(0, "wrong"),
            "LSTMDET_RESULT_URL": q.server.url(1, "wrong"),
        }
        with pytest.raises(BrokerUnavailable, match="refused the credentials") as caught:
            JobClient(Settings.from_env(wrong)).submit_detect(scenes, q.folder / "out2", **DETECT)
        assert "wrong" not in str(caught.value)  # the password is never printed
        done = run_cli("jobs", "list", env=wrong)
        assert done.returncode == 2 and "refused the credentials" in done.stderr
    finally:
        q.close()


def test_tls_redis_through_the_url(scenes, tmp_path):
    """``rediss://`` with the CA in the URL: the client, the worker and the job store all speak TLS."""
    q = Queue(tmp_path, data=scenes.parent, password="tls-pass", tls=make_certificates(tmp_path / "certs"))
    try:
        assert q.env["LSTMDET_BROKER_URL"].startswith("rediss://")
        q.worker()
        job = q.client.submit_detect(scenes / sorted(os.listdir(scenes))[0], tmp_path / "out", **DETECT)
        assert q.client.wait(job, timeout=60)["state"] == "succeeded"
        plain = {**q.env, "LSTMDET_BROKER_URL": f"redis://:tls-pass@127.0.0.1:{q.server.port}/0",
                 "LSTMDET_RESULT_URL": f"redis://:tls-pass@127.0.0.1:{q.server.port}/1"}  # fmt: skip
        done = run_cli("jobs", "list", env=plain)  # no TLS against a TLS-only server: refused, clearly
        assert done.returncode == 2 and "cannot reach Redis" in done.stderr
    finally:
        q.close()


def _train_config(tmp_path: Path) -> dict:
    return {
        "task": "classify",
        "model": {
            "input": {"size": 28, "mean": [0.13] * 3, "std": [0.31] * 3},
            "backbone": {"name": "tiny_cnn", "width": 8},
            "encoder": {"name": "gru_sweep", "hidden": 16},
            "head": {"name": "classifier", "num_classes": 10},
        },
        "data": {"train": {"name": "mnist_idx", "split": "train", "images": 1536},
                 "val": {"name": "mnist_idx", "split": "val", "images": 200}},
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.01, "workers": 0, "progress": False, "seed": 3},
    }  # fmt: skip


def test_queued_train_with_a_plugin_runs_in_pieces_and_equals_in_process(plugin_site, tmp_path):
    """A soft time limit of 1 s cuts the job; each piece checkpoints mid-epoch and the next resumes."""
    q = Queue(tmp_path, pythonpath=plugin_site, soft=1, hard=30, visibility=40)
    try:
        q.worker()
        job = q.client.submit_train(_train_config(tmp_path), tmp_path / "queued")
        seen = set()
        while (record := q.client.status(job))["state"] not in ("succeeded", "failed", "cancelled"):
            if record.get("progress"):
                seen.add((record["progress"]["epoch"], record["progress"]["step"]))
            time.sleep(0.2)
        assert record["state"] == "succeeded", record
        assert record["result"]["epochs"] == 4 and record["result"]["metrics"]["accuracy"] > 0.2  # chance: 0.1
        assert len({epoch for epoch, _ in seen}) >= 2  # progress moved through epochs
        assert record["result"]["continued"] >= 1  # cut by the soft limit, checkpointed, continued
        log = "".join(w.log.read_text() for w in q.workers)
        assert log.count("soft time limit at epoch") == record["result"]["continued"], log[-3000:]
        sys.path.insert(0, str(plugin_site))
        torch.set_num_threads(1)  # as the worker (LSTMDET_TORCH_THREADS=1)
        try:
            lstmdet.train(_train_config(tmp_path), tmp_path / "direct")
        finally:
            sys.path.remove(str(plugin_site))
        queued = read_checkpoint(tmp_path / "queued" / "last.pt")["state_dict"]
        direct = read_checkpoint(tmp_path / "direct" / "last.pt")["state_dict"]
        assert all(torch.equal(queued[k], direct[k]) for k in direct)
    finally:
        q.close()


def test_queued_eval_scores_a_checkpoint(queue, scenes):
    from lstmdet.checkpoint import default_model_path

    weights = scenes.parent.parent / "default.pt"
    weights.write_bytes(default_model_path().read_bytes())
    out = scenes.parent.parent / "eval" / "metrics.json"
    data = {"name": "digits_det", "images": 24, "seed": 5, "size": 128, "split": "test"}
    job = queue.client.submit_eval(weights, data=data, out=out, batch_size=8)
    record = queue.client.wait(job, timeout=120)
    assert record["state"] == "succeeded", record
    metrics = json.loads(out.read_text())
    assert metrics["map"] == pytest.approx(record["result"]["metrics"]["map"]) and metrics["map"] > 0.5


@pytest.mark.gpu
def test_gpu_worker_runs_detect_on_cuda_and_equals_in_process(scenes, tmp_path):
    q = Queue(tmp_path, data=scenes.parent)
    try:
        q.worker("--queues", "gpu", "--gpus", "0")
        job = q.client.submit_detect(scenes, tmp_path / "out", device="cuda", **DETECT)
        record = q.client.wait(job, timeout=300)
        assert record["state"] == "succeeded" and record["queue"] == "gpu", record
        assert record["result"]["device"].startswith("cuda")
        lstmdet.detect(scenes, tmp_path / "direct", device="cuda", progress=False, **DETECT)
        assert_same_files(tmp_path / "out", tmp_path / "direct")
    finally:
        q.close()


POISON_SOURCE = """
import os
import signal

from lstmdet import hookimpl


def poison(**options):
    os.kill(os.getpid(), signal.SIGKILL)  # kills the worker process that builds it, every time


@hookimpl
def lstmdet_register_backbones(registry):
    registry.add("poison", poison)
"""


def test_a_poison_job_fails_after_the_delivery_cap(tmp_path):
    """A job that kills its worker process on every delivery ends failed instead of looping forever."""
    site = install_plugin(tmp_path / "site", "lstmdet_poison", POISON_SOURCE, "poison")
    q = Queue(tmp_path, pythonpath=site)
    try:
        worker = q.worker()
        config = _train_config(tmp_path)
        config["model"]["backbone"] = {"name": "poison"}
        sys.path.insert(0, str(site))  # the client validates the config against the installed plugins
        try:
            job = q.client.submit_train(config, tmp_path / "poisoned")
        finally:
            sys.path.remove(str(site))
        record = q.client.wait(job, timeout=180)
        assert record["state"] == "failed" and "delivered 4 times" in record["error"], record
        assert worker.process.poll() is None  # the worker itself lives on (only its pool process died)
        assert q.client.store.redis.get(f"lstmdet:deliveries:{job}:0") == "4"
    finally:
        q.close()
