"""Whole workers lost, frozen or stopped mid-job, at default settings (30 s leases renewed every 5 s).

Real ``redis-server`` and ``lstmdet worker`` process groups; faults are real signals to whole
process groups. No setting is shortened: a lost task must come back within the minute the defaults
promise, and nothing it did may happen twice. Workers given distinct ``LSTMDET_MACHINE_ID`` values
stand for separate hosts: their tasks come back when the lease expires. Workers on one machine
(the default here) also see a neighbour's process gone and take its tasks back within seconds. These tests take
minutes (each waits for a lease to expire), so they carry the ``faults`` marker: ``make test``
leaves them out and CI runs them (``make test-faults``).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ROOT, classify_config, install_plugin, wait_for
from queue_harness import DETECT, Queue, Worker, assert_same_files

import lstmdet
from lstmdet.checkpoint import read_checkpoint
from lstmdet.workers.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.faults]

DEFAULTS = Settings()
#: A kill is noticed one lease after the last heartbeat, then swept within a heartbeat.
FAILOVER_S = DEFAULTS.lease_seconds + 2 * DEFAULTS.heartbeat_seconds


def grace_period() -> int:
    """The seconds the CPU worker's Kubernetes manifest gives a worker between SIGTERM and SIGKILL."""
    text = (ROOT / "deploy" / "k8s" / "worker-cpu.yaml").read_text()
    return int(re.search(r"terminationGracePeriodSeconds:\s*(\d+)", text).group(1))


def holder(q: Queue, task: str, timeout: float = 60) -> Worker:
    """The live worker that holds a ``task`` now (running it, or reserved for it), as its heartbeat reports it."""

    def find() -> Worker | None:
        for record in q.client.workers():
            if any(t["name"] == task for t in record.get("tasks", ())):
                for worker in q.workers:
                    if worker.hostname == record["hostname"] and worker.process.poll() is None:
                        return worker
        return None

    return wait_for(find, timeout, f"a worker running {task}", every=0.1)


def restored(q: Queue) -> list[dict[str, Any]]:
    """What the lease sweep put back on the queue (newest first)."""
    return q.client.leases.failover_log()


def train_config() -> dict[str, Any]:
    """A small MNIST classifier from the shipped digits: 3 epochs of 24 steps, deterministic on one thread."""
    config = classify_config({"name": "lstm", "hidden": 16}, {"name": "small_cnn", "widths": [8, 16]})
    config["data"] = {"train": {"name": "mnist_idx", "split": "train", "images": 768},
                      "val": {"name": "mnist_idx", "split": "val", "images": 128}}  # fmt: skip
    config["train"] = {"epochs": 3, "batch_size": 32, "lr": 0.01, "workers": 0, "progress": False, "seed": 5}
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of the uninterrupted in-process run (one thread, as the workers)."""
    out = tmp_path_factory.mktemp("train-reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lstmdet.train(train_config(), out)
    finally:
        torch.set_num_threads(threads)
    return read_checkpoint(out / "last.pt")["state_dict"]


def assert_same_weights(run: Path, reference: dict[str, torch.Tensor]) -> None:
    weights = read_checkpoint(run / "last.pt")["state_dict"]
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # every epoch once: resumed from the newest checkpoint, never an older one


def test_a_whole_worker_killed_mid_detect_the_survivor_finishes_within_90_s(scenes, reference, tmp_path):
    q = Queue(tmp_path, data=scenes.parent)
    try:
        q.worker(machine="host-a"), q.worker(machine="host-b")  # two hosts: only the lease tells
        job = q.client.submit_detect(scenes, tmp_path / "out", shard_size=8, **DETECT)
        victim = holder(q, "lstmdet.detect_shard")
        victim.kill()  # SIGKILL to the supervisor, Celery's main process and its pool process at once
        killed = time.monotonic()
        record = q.client.wait(job, timeout=120)
        assert record["state"] == "succeeded", record
        assert time.monotonic() - killed < 90
        events = [e for e in restored(q) if e["name"] == "lstmdet.detect_shard"]
        assert events and all(e["why"] == "lease expired" for e in events)  # a lease expired: it came back
        assert_same_files(tmp_path / "out", reference)
    finally:
        q.close()


def test_a_whole_worker_killed_its_neighbour_on_the_same_machine_takes_its_task_within_seconds(
    scenes, reference, tmp_path
):
    q = Queue(tmp_path, data=scenes.parent)
    try:
        q.worker(), q.worker()  # one machine, as several workers (one per GPU) on a host
        job = q.client.submit_detect(scenes, tmp_path / "out", shard_size=8, **DETECT)
        holder(q, "lstmdet.detect_shard").kill()
        killed = time.time()
        events = wait_for(lambda: restored(q), DEFAULTS.lease_seconds, "the killed worker's task restored")
        assert all(e["why"] == "holder process gone" for e in events)
        assert events[-1]["restored"] - killed < 2 * DEFAULTS.heartbeat_seconds + 1  # a heartbeat, not a lease
        record = q.client.wait(job, timeout=120)
        assert record["state"] == "succeeded", record
        assert_same_files(tmp_path / "out", reference)
    finally:
        q.close()


def test_a_whole_worker_killed_and_replaced_a_second_later_the_job_finishes_within_90_s(scenes, reference, tmp_path):
    q = Queue(tmp_path, data=scenes.parent)
    try:
        q.worker(machine="host-a")
        job = q.client.submit_detect(scenes, tmp_path / "out", shard_size=8, **DETECT)
        holder(q, "lstmdet.detect_shard").kill()
        killed = time.monotonic()
        time.sleep(1.0)
        q.worker(machine="host-b")  # a new host: the lost shard waits out its lease
        record = q.client.wait(job, timeout=120)
        assert record["state"] == "succeeded", record
        assert time.monotonic() - killed < 90
        assert_same_files(tmp_path / "out", reference)
    finally:
        q.close()


def test_a_worker_killed_mid_train_the_job_resumes_from_its_last_checkpoint_and_equals_an_uninterrupted_run(
    trained, tmp_path
):
    q = Queue(tmp_path)
    try:
        q.worker()
        job = q.client.submit_train(train_config(), tmp_path / "run")
        wait_for(lambda: (q.client.status(job).get("progress") or {}).get("epoch", 0) >= 2, 180, "epoch 2")
        holder(q, "lstmdet.train").kill()
        q.worker()
        record = q.client.wait(job, timeout=240)
        assert record["state"] == "succeeded", record
        assert_same_weights(tmp_path / "run", trained)
    finally:
        q.close()


def test_sigterm_mid_train_checkpoints_and_the_job_goes_on_elsewhere_at_once(trained, tmp_path):
    q = Queue(tmp_path)
    try:
        q.worker(), q.worker()
        job = q.client.submit_train(train_config(), tmp_path / "run")
        wait_for(lambda: (q.client.status(job).get("progress") or {}).get("step", 0) >= 3, 180, "three steps")
        stopping = holder(q, "lstmdet.train")
        started = time.monotonic()
        assert stopping.terminate() < grace_period()
        survivor = holder(q, "lstmdet.train", timeout=30)  # the re-queued task, not a lease expiry
        assert survivor is not stopping and time.monotonic() - started < DEFAULTS.lease_seconds
        record = q.client.wait(job, timeout=240)
        assert record["state"] == "succeeded", record
        assert "its worker is stopping" in stopping.log.read_text()
        assert_same_weights(tmp_path / "run", trained)
    finally:
        q.close()


def test_sigterm_mid_detect_the_shard_goes_back_at_once_and_the_files_are_complete(scenes, reference, tmp_path):
    q = Queue(tmp_path, data=scenes.parent)
    try:
        q.worker(), q.worker()
        job = q.client.submit_detect(scenes, tmp_path / "out", shard_size=8, **DETECT)
        stopping = holder(q, "lstmdet.detect_shard")
        assert stopping.terminate() < grace_period()
        record = q.client.wait(job, timeout=120)
        assert record["state"] == "succeeded", record
        assert restored(q) == []  # nothing waited for a lease: the shard finished or went back at once
        assert_same_files(tmp_path / "out", reference)
    finally:
        q.close()


def test_a_worker_frozen_past_its_lease_then_woken_has_no_duplicate_effect(scenes, reference, tmp_path):
    q = Queue(tmp_path, data=scenes.parent)
    try:
        q.worker(), q.worker()
        job = q.client.submit_detect(scenes, tmp_path / "out", shard_size=8, **DETECT)
        frozen = holder(q, "lstmdet.detect_shard")
        frozen.signal_group(signal.SIGSTOP)  # a frozen VM: no heartbeat, no progress
        try:
            wait_for(lambda: restored(q), FAILOVER_S + 30, "the frozen worker's task restored")
        finally:
            frozen.signal_group(signal.SIGCONT)
        record = q.client.wait(job, timeout=120)
        assert record["state"] == "succeeded", record
        assert_same_files(tmp_path / "out", reference)  # every image exactly once
        woken = ("the lease was lost", "the job already succeeded; nothing to do")  # mid-shard, or not started
        wait_for(lambda: any(m in frozen.log.read_text() for m in woken), 30, "the woken task to stop")
        time.sleep(2.0)
        assert q.client.status(job)["state"] == "succeeded"  # the woken task changed nothing
        assert_same_files(tmp_path / "out", reference)
    finally:
        q.close()


def test_redis_restarted_with_aof_during_a_failover_the_job_finishes(scenes, reference, tmp_path):
    q = Queue(tmp_path, data=scenes.parent)
    try:
        q.worker(), q.worker()
        # Shards of 40: fewer moments when a consumer waits on BRPOP (see test_queue.py's restart test).
        job = q.client.submit_detect(scenes, tmp_path / "out", shard_size=40, **DETECT)
        holder(q, "lstmdet.detect_shard").kill()
        time.sleep(5.0)  # the lost shard's lease is running out
        q.server.kill()
        time.sleep(1.0)
        q.server.start()  # same port and folder: the AOF brings back queues, unacked tasks, leases and records
        record = wait_for(lambda: (r := q.client.status(job))["state"] in ("succeeded", "failed") and r, 180, "the job")
        assert record["state"] == "succeeded", record
        assert_same_files(tmp_path / "out", reference)
    finally:
        q.close()


def test_a_shard_message_lost_with_redis_is_queued_again_and_the_job_finishes(scenes, reference, tmp_path):
    """The one loss leases cannot see: a message taken off its queue that no worker ever recorded.

    Redis dying as a worker's ``BRPOP`` takes a message loses it that way (the reply dies with the
    server). Here the message is removed from the queue by hand, the same end state, at a moment
    the test controls; the job reconciler must notice that the job has no message anywhere.
    """
    from kombu.utils.json import loads

    q = Queue(tmp_path, data=scenes.parent)
    try:
        q.worker()
        job = q.client.submit_detect(scenes, tmp_path / "out", shard_size=8, **DETECT)
        broker = q.client.leases.redis

        def waiting_shard() -> str | None:
            raws = broker.lrange("cpu", 0, -1)
            return next((raw for raw in raws if loads(raw)["headers"]["task"] == "lstmdet.detect_shard"), None)

        raw = wait_for(waiting_shard, 60, "a shard waiting in the queue", every=0.05)
        assert broker.lrem("cpu", 1, raw) == 1  # lost
        lost = time.monotonic()
        record = q.client.wait(job, timeout=180)
        assert record["state"] == "succeeded", record
        # found within a look (half a lease) after a lease without any message of the job
        assert time.monotonic() - lost < 2 * DEFAULTS.lease_seconds + 60
        assert "had no message anywhere" in q.workers[0].log.read_text()
        assert restored(q) == []  # not a lease: nobody held the message
        assert_same_files(tmp_path / "out", reference)
    finally:
        q.close()


SLOW_SOURCE = """
import time

from lstmdet import FeatureInfo, hookimpl
from torch import nn


class Stubborn(nn.Module):
    \"\"\"A backbone whose construction holds the GIL for 45 s in pure Python (longer than a lease).\"\"\"

    def __init__(self):
        super().__init__()
        end = time.monotonic() + 45
        while time.monotonic() < end:
            pass
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.feature_info = [FeatureInfo("c1", 8, 2)]

    def forward(self, x):
        return {"c1": self.conv(x).relu()}


@hookimpl
def lstmdet_register_backbones(registry):
    registry.add("stubborn", Stubborn)
"""


def test_a_slow_task_keeps_its_lease_while_its_worker_lives(tmp_path):
    """45 s without a step in a GIL-bound pool process: the main process's heartbeat keeps the lease."""
    site = install_plugin(tmp_path / "site", "lstmdet_stubborn", SLOW_SOURCE, "stubborn")
    q = Queue(tmp_path, pythonpath=site)
    try:
        q.worker(), q.worker()  # a second, idle worker sweeps for lost tasks the whole time
        config = classify_config({"name": "identity"}, {"name": "small_cnn", "widths": [8, 8]})
        config["model"]["backbone"] = {"name": "stubborn"}
        config["data"] = {"train": {"name": "mnist_idx", "split": "train", "images": 64}}
        config["train"] = {"epochs": 1, "batch_size": 32, "workers": 0, "progress": False, "seed": 1}
        sys.path.insert(0, str(site))  # the client checks the config against the installed plugins
        try:
            job = q.client.submit_train(config, tmp_path / "run")
        finally:
            sys.path.remove(str(site))
        record = q.client.wait(job, timeout=180)
        assert record["state"] == "succeeded", record
        assert restored(q) == []
        assert q.client.store.redis.get(f"lstmdet:deliveries:{job}:0") == "1"  # ran once, on one worker
    finally:
        q.close()
