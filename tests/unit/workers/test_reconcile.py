"""The job reconciler against a real Redis, with messages published and delivered by kombu itself."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from lstmdet.workers.leases import open_leases
from lstmdet.workers.reconcile import LOCK, SUSPECTS, Reconciler, message_jobs
from lstmdet.workers.settings import Settings
from lstmdet.workers.store import JobStore
from lstmdet.workers.tasks import job_store

EVERY, GRACE = 15.0, 30.0


@pytest.fixture
def app(redis_settings: Settings) -> Any:
    from lstmdet.workers.app import create_app

    return create_app(redis_settings)


@pytest.fixture
def store(redis_settings: Settings) -> JobStore:
    return job_store(redis_settings)


@pytest.fixture
def broker(redis_settings: Settings) -> Any:
    return open_leases(redis_settings, retries=2).redis


def make(app: Any, store: JobStore, broker: Any, name: str = "w1@box") -> Reconciler:
    def send(task: str, args: list, queue: str, task_id: str, root_id: str) -> None:
        app.send_task(task, args=args, queue=queue, task_id=task_id, root_id=root_id)

    return Reconciler(broker, store, send, every=EVERY, grace=GRACE, name=name)


def queued(broker: Any, queue: str = "cpu") -> list[dict[str, Any]]:
    """The headers (and ``args``) of the messages waiting in ``queue``, next to be taken first."""
    out = []
    for raw in reversed(broker.lrange(queue, 0, -1)):
        message = json.loads(raw)
        out.append({**message["headers"], "args": json.loads(base64.b64decode(message["body"]))[0]})
    return out


def submit(app: Any, store: JobStore, job_id: str, kind: str = "train") -> dict[str, Any]:
    """What the client does: record the job, then queue its first task under the job id."""
    spec = {"out": f"/data/{job_id}"}
    store.create(job_id, kind, "cpu", spec)
    first = {"train": "lstmdet.train", "detect": "lstmdet.detect", "eval": "lstmdet.eval"}[kind]
    app.send_task(first, args=[job_id, spec], queue="cpu", task_id=job_id)
    return spec


def test_a_job_whose_message_was_lost_is_queued_again_after_the_grace_and_only_then(app, store, broker):
    spec = submit(app, store, "lost-job", "eval")
    broker.delete("cpu")  # the message vanished (Redis died as a worker's BRPOP took it)
    r, now = make(app, store, broker), time.time()
    assert r.run(now) == []  # a suspect, not yet lost: it may be on its way to a worker
    assert broker.hexists(SUSPECTS, "lost-job")
    assert r.run(now + GRACE - 1) == []
    assert r.run(now + GRACE) == ["lost-job"]
    (message,) = queued(broker)
    assert message["task"] == "lstmdet.eval" and message["args"] == ["lost-job", spec]
    assert message["id"] != "lost-job" and message["root_id"] == "lost-job"  # a fresh delivery count, same job
    assert r.run(now + 10 * GRACE) == []  # the new message is recognised as the job's
    assert not broker.hexists(SUSPECTS, "lost-job")


def test_jobs_with_a_message_queued_delivered_or_of_a_child_task_are_left_alone(app, store, broker, take):
    submit(app, store, "waiting", "train")
    submit(app, store, "delivered", "eval")
    submit(app, store, "sharded", "detect")
    take(app)  # "waiting" was queued first: a worker holds it now (kombu's unacked)
    broker.delete("cpu")
    app.send_task("lstmdet.detect_shard", args=["sharded", {}, 3], queue="cpu", task_id="shard-3",
                  root_id="sharded")  # fmt: skip
    app.send_task("lstmdet.eval", args=["delivered", {}], queue="cpu", task_id="delivered", priority=6)
    r, now = make(app, store, broker), time.time()
    assert r.run(now) == [] and r.run(now + 3 * GRACE) == []
    assert broker.hlen(SUSPECTS) == 0


def test_a_detect_job_whose_merge_was_claimed_gets_its_merge_again(app, store, broker):
    submit(app, store, "merging", "detect")
    broker.delete("cpu")
    store.claim_merge("merging", "shard-task-7")
    store.merge_queued("merging")
    r, now = make(app, store, broker), time.time()
    r.run(now)
    assert r.run(now + GRACE) == ["merging"]
    assert [m["task"] for m in queued(broker)] == ["lstmdet.detect_merge"]


def test_a_detect_job_without_a_merge_gets_its_first_task_which_queues_the_missing_shards(app, store, broker):
    submit(app, store, "planned", "detect")
    broker.delete("cpu")
    r, now = make(app, store, broker), time.time()
    r.run(now)
    assert r.run(now + GRACE) == ["planned"]
    assert [m["task"] for m in queued(broker)] == ["lstmdet.detect"]


def test_ended_and_expired_jobs_leave_the_open_set(app, store, broker):
    submit(app, store, "done", "eval")
    submit(app, store, "expired", "eval")
    broker.delete("cpu")
    store.finish("done", "succeeded", result={})
    store.redis.delete("lstmdet:job:expired")
    assert store.open_jobs() == []
    r, now = make(app, store, broker), time.time()
    assert r.run(now) == [] and r.run(now + 3 * GRACE) == []
    assert queued(broker) == []


def test_one_worker_looks_at_a_time_and_each_at_most_every_interval(app, store, broker):
    submit(app, store, "gone", "train")
    broker.delete("cpu")
    first, second = make(app, store, broker, "w1@box"), make(app, store, broker, "w2@box")
    now = time.time()
    first.maybe_run(now)
    assert broker.get(LOCK) == "w1@box" and broker.hexists(SUSPECTS, "gone")
    broker.delete(SUSPECTS)
    second.maybe_run(now + 1)  # w1 holds the lock for this interval: w2 does not look
    assert not broker.hexists(SUSPECTS, "gone")
    broker.delete(LOCK)
    first.maybe_run(now + 2)  # too soon for w1 itself
    assert not broker.hexists(SUSPECTS, "gone")
    second.maybe_run(now + 3)  # w2 tried at now + 1: its next look is an interval later
    assert not broker.hexists(SUSPECTS, "gone")
    second.maybe_run(now + 1 + EVERY)
    assert broker.hexists(SUSPECTS, "gone")


def test_message_jobs_reads_ids_and_root_ids_of_queued_and_unacked_envelopes():
    queued_message = json.dumps({"headers": {"id": "job-a", "root_id": None}})
    unacked = json.dumps([{"headers": {"id": "t2", "root_id": "job-b"}}, "", "cpu"])
    assert message_jobs([queued_message, unacked, "not json", json.dumps([1, 2]), json.dumps({"x": 1})]) == {
        "job-a", "t2", "job-b"
    }  # fmt: skip


def test_a_backlog_deeper_than_the_scan_limit_skips_the_look(app, store, broker, monkeypatch):
    import lstmdet.workers.reconcile as reconcile

    submit(app, store, "deep", "train")
    broker.delete("cpu")
    for i in range(3):
        app.send_task("lstmdet.ping", queue="cpu", task_id=f"p{i}")
    monkeypatch.setattr(reconcile, "MAX_SCAN", 2)
    r, now = make(app, store, broker), time.time()
    assert r.run(now) == [] and r.run(now + 3 * GRACE) == []
    assert not broker.hexists(SUSPECTS, "deep")
    monkeypatch.setattr(reconcile, "MAX_SCAN", 3)
    r.run(now + 4 * GRACE)
    assert broker.hexists(SUSPECTS, "deep")
