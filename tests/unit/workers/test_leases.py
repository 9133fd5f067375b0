"""Leases against a real Redis and real kombu deliveries: renew, sweep, fencing, draining, the registry.

A message is delivered with kombu's own Redis transport (``SimpleQueue.get`` without an ack), so it
sits in kombu's ``unacked`` hash exactly as a message a worker took; :meth:`Leases.sweep` is then
asked with a clock moved past the lease.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lstmdet.workers.leases import (
    UNACKED,
    Holding,
    LeaseLost,
    Leases,
    machine_id,
    open_leases,
    process_alive,
    process_start,
)
from lstmdet.workers.settings import Settings
from lstmdet.workers.store import JobStore
from lstmdet.workers.tasks import _Guard, job_store

LEASE = 30.0


@pytest.fixture
def app(redis_settings: Settings) -> Any:
    from lstmdet.workers.app import create_app

    return create_app(redis_settings)


@pytest.fixture
def leases(redis_settings: Settings) -> Leases:
    return open_leases(redis_settings, retries=2)


def holding(message: Any, job: str | None = "job-1") -> Holding:
    return Holding(tag=message.delivery_tag, task_id=message.headers["id"], name=message.headers["task"], job=job,
                   state="active")  # fmt: skip


WORKER = {"hostname": "w1@box", "pid": 1, "queues": ["cpu"], "started": 0.0, "draining": False}


def test_a_delivery_without_a_lease_goes_back_to_the_head_of_its_queue_once(take, app, leases):
    app.send_task("lstmdet.ping", args=[1.0], queue="cpu", task_id="lost")
    app.send_task("lstmdet.ping", args=[2.0], queue="cpu", task_id="waiting")
    lost = take(app)
    assert lost.headers["id"] == "lost" and leases.holds(lost.delivery_tag)
    assert leases.sweep() == []  # younger than a lease: its worker may be about to renew it
    later = time.time() + LEASE + 1
    (event,) = leases.sweep(now=later)
    assert event["task_id"] == "lost" and event["failovers"] == 1 and event["new_tag"] != lost.delivery_tag
    assert leases.sweep(now=later) == []  # restored once
    assert not leases.holds(lost.delivery_tag)  # the old delivery is fenced off
    again = take(app)
    assert again.headers["id"] == "lost" and again.delivery_tag == event["new_tag"]  # next, before "waiting"
    assert again.delivery_info.get("redelivered") or again.headers.get("redelivered")
    lost.ack()  # the lost worker's late ack removes nothing
    assert leases.holds(again.delivery_tag)
    assert leases.failovers("lost", 0) == 1
    assert leases.failover_log()[0]["task_id"] == "lost"


def test_a_renewed_lease_keeps_the_message_however_old_the_delivery(take, app, leases):
    app.send_task("lstmdet.ping", queue="cpu", task_id="slow")
    message = take(app)
    leases.renew(WORKER, [holding(message)])
    assert leases.sweep(now=time.time() + 3600) == []
    assert leases.holds(message.delivery_tag)
    leases.renew(WORKER, [], released=[message.delivery_tag])  # acknowledged: the lease goes
    (event,) = leases.sweep(now=time.time() + LEASE + 1)  # (here it was not acked, so it comes back)
    assert event["task_id"] == "slow"


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_process_is_alive_while_it_runs_and_gone_once_killed_even_unreaped():
    child = sleeper()
    started = process_start(child.pid)
    assert started is not None and process_alive(child.pid, started)
    assert not process_alive(child.pid, started + 1)  # the pid now names a younger process: not the holder
    child.kill()
    wait = time.monotonic() + 5
    while process_start(child.pid) is not None and time.monotonic() < wait:  # a zombie until reaped
        time.sleep(0.01)
    assert not process_alive(child.pid, started)
    child.wait()
    assert process_start(child.pid) is None and not process_alive(child.pid, started)
    assert process_alive(None, None) and process_alive(child.pid, None)  # unknown: only a sure death counts


def test_the_machine_id_is_the_boot_and_pid_namespace_unless_set(monkeypatch):
    monkeypatch.delenv("LSTMDET_MACHINE_ID", raising=False)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert machine_id() == f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    monkeypatch.setenv("LSTMDET_MACHINE_ID", "rack-7")
    assert machine_id() == "rack-7"


def neighbour(pid: int, machine: str = "m-1") -> dict[str, Any]:
    return {**WORKER, "hostname": f"w{pid}@box", "pid": pid, "pid_start": process_start(pid), "machine": machine}


def test_a_lease_of_a_gone_process_on_this_machine_comes_back_at_once(take, app, redis_settings):
    here = open_leases(redis_settings, retries=2, machine="m-1")
    app.send_task("lstmdet.ping", queue="cpu", task_id="orphan")
    app.send_task("lstmdet.ping", queue="cpu", task_id="held")
    orphan, held = take(app), take(app)
    child, alive = sleeper(), sleeper()
    try:
        here.renew(neighbour(child.pid), [holding(orphan)])
        here.renew(neighbour(alive.pid), [holding(held)])
        assert here.sweep() == []  # both holders run: leases stand
        child.kill()
        child.wait()
        elsewhere = open_leases(redis_settings, retries=2, machine="m-2")
        assert elsewhere.sweep() == []  # another machine cannot see the pid: it waits for the lease
        (event,) = here.sweep()  # no lease had to expire
        assert event["task_id"] == "orphan" and event["why"] == "holder process gone"
        assert not here.redis.exists("lstmdet:lease:" + orphan.delivery_tag)
        assert not here.holds(orphan.delivery_tag) and here.holds(held.delivery_tag)
        assert take(app).headers["id"] == "orphan"
    finally:
        for process in (child, alive):
            process.kill()
            process.wait()


def test_a_lease_renewed_after_the_look_is_not_taken(take, app, redis_settings, monkeypatch):
    """The holder's lease changed between the look and the restore (a new holder renewed it): nothing happens."""
    here = open_leases(redis_settings, retries=2, machine="m-1")
    app.send_task("lstmdet.ping", queue="cpu", task_id="contended")
    message = take(app)
    here.renew({**WORKER, "pid": 1, "pid_start": -5, "machine": "m-1"}, [holding(message)])  # a dead holder
    real_get = here.redis.hget

    def renewed_meanwhile(*args: Any) -> Any:
        here.renew({**WORKER, "hostname": "w2@box", "pid": os.getpid(), "pid_start": process_start(os.getpid()),
                    "machine": "m-1"}, [holding(message)])  # fmt: skip
        return real_get(*args)

    monkeypatch.setattr(here.redis, "hget", renewed_meanwhile)
    assert here.sweep() == []
    assert here.holds(message.delivery_tag)
    assert here.redis.exists("lstmdet:lease:" + message.delivery_tag)


def test_a_lease_expires_when_its_worker_stops_renewing(redis_settings):
    short = Leases(open_leases(redis_settings, retries=2).redis, lease=1.0, heartbeat=0.3)
    short.renew(WORKER, [Holding("tag-1", "t", "lstmdet.ping", None, "active")])
    assert short.redis.exists("lstmdet:lease:tag-1")
    time.sleep(1.3)
    assert not short.redis.exists("lstmdet:lease:tag-1")
    assert short.workers() == []  # the worker's record went with it


def test_sweeping_workers_race_and_restore_each_message_once(take, app, leases):
    for i in range(20):
        app.send_task("lstmdet.ping", queue="cpu", task_id=f"t{i}")
    for _ in range(20):
        take(app)
    later = time.time() + LEASE + 1
    results: list[list[dict[str, Any]]] = []
    threads = [threading.Thread(target=lambda: results.append(leases.sweep(now=later))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    restored = sorted(e["task_id"] for r in results for e in r)
    assert restored == sorted(f"t{i}" for i in range(20))
    assert leases.redis.llen("cpu") == 20 and leases.redis.hlen(UNACKED) == 0


def test_the_registry_lists_live_workers_with_their_tasks(take, app, leases):
    app.send_task("lstmdet.ping", queue="cpu", task_id="p1")
    message = take(app)
    leases.renew(WORKER, [holding(message, job="job-9")])
    (worker,) = leases.workers()
    assert worker["hostname"] == "w1@box" and worker["queues"] == ["cpu"]
    assert worker["tasks"][0]["job"] == "job-9" and abs(worker["heartbeat"] - time.time()) < 5
    lease = json.loads(leases.redis.get("lstmdet:lease:" + message.delivery_tag))
    assert lease["worker"] == "w1@box" and lease["job"] == "job-9"
    leases.drain("w1@box")
    assert leases.draining("w1@box") and not leases.draining("w2@box")
    assert leases.workers()[0]["draining"] is True
    leases.forget("w1@box", [message.delivery_tag])
    assert leases.workers() == [] and not leases.draining("w1@box")


def fake_task(settings: Settings, tag: str | None, hostname: str = "w1@box") -> Any:
    request = SimpleNamespace(properties={"delivery_tag": tag}, hostname=hostname, id="x", retries=0)
    return SimpleNamespace(request=request, name="lstmdet.detect_shard",
                           app=SimpleNamespace(conf=SimpleNamespace(lstmdet_settings=settings)))  # fmt: skip


def test_the_guard_stops_for_cancel_and_drain_and_raises_once_the_lease_is_lost(take, app, leases, redis_settings):
    store: JobStore = job_store(redis_settings)
    store.create("job-1", "detect", "cpu", {})
    app.send_task("lstmdet.ping", queue="cpu", task_id="g")
    message = take(app)
    guard = _Guard(fake_task(redis_settings, message.delivery_tag), store, "job-1", every=0.0)
    assert guard() is False
    leases.drain("w1@box")
    assert guard() is True and guard.reason == "drain"
    store.request_cancel("job-1")
    cancel = _Guard(fake_task(redis_settings, message.delivery_tag, "w2@box"), store, "job-1", every=0.0)
    assert cancel() is True and cancel.reason == "cancel"
    leases.sweep(now=time.time() + LEASE + 1)  # the message goes to another worker
    lost = _Guard(fake_task(redis_settings, message.delivery_tag, "w2@box"), store, "job-1", every=0.0)
    with pytest.raises(LeaseLost):
        lost()
    with pytest.raises(LeaseLost):
        lost.fence()


def test_the_guard_asks_redis_at_most_every_interval(redis_settings, monkeypatch):
    import lstmdet.workers.tasks as tasks

    store = job_store(redis_settings)
    store.create("job-2", "detect", "cpu", {})
    guard = _Guard(fake_task(redis_settings, None), store, "job-2", every=0.5)
    asked = []
    monkeypatch.setattr(store, "cancelled", lambda job: asked.append(job) or False)
    now = {"t": 100.0}
    monkeypatch.setattr(tasks.time, "monotonic", lambda: now["t"])
    assert [guard(), guard()] == [False, False] and len(asked) == 1
    now["t"] = 100.6
    assert guard() is False and len(asked) == 2
