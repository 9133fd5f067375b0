"""Job records in Redis: errors explained, states forward only, records listed and expired."""

from __future__ import annotations

import time

import pytest
from helpers import RedisServer, free_port

from lstmdet.errors import LstmdetError
from lstmdet.workers.settings import Settings
from lstmdet.workers.store import BrokerUnavailable, JobStore, explain


def test_explain_masks_password():
    import redis

    url = "redis://:secret@h:1/0"
    down = explain(redis.ConnectionError("Connection refused"), url)
    auth = explain(redis.AuthenticationError("WRONGPASS invalid password"), url)
    assert isinstance(down, BrokerUnavailable) and isinstance(auth, BrokerUnavailable)
    assert "cannot reach" in str(down) and "credentials" in str(auth)
    assert all("secret" not in str(e) and "redis://:***@h:1/0" in str(e) for e in (down, auth))


# --- job records (a real Redis) -------------------------------------------------------------------------------------

SPEC = {"src": "/data/in", "out": "/data/out", "weights": None, "options": {"batch_size": 2}, "shard_size": 8}


@pytest.fixture
def store(redis_settings: Settings) -> JobStore:
    return JobStore(redis_settings.result_url, expires=600, retries=0)


def test_a_new_record_is_queued_with_its_spec_and_no_expiry(store):
    before = time.time()
    store.create("j1", "detect", "cpu", SPEC)
    record = store.get("j1")
    assert {k: record[k] for k in ("id", "kind", "queue", "spec", "state", "cancel")} == {
        "id": "j1", "kind": "detect", "queue": "cpu", "spec": SPEC, "state": "queued", "cancel": False,
    }  # fmt: skip
    assert before <= record["created"] <= time.time()
    assert record.get("started") is None and record.get("finished") is None
    assert store.redis.ttl("lstmdet:job:j1") == -1  # a job that has not ended never expires
    assert store.get("unknown") is None


def test_states_move_forward_and_the_end_sets_expiry(store):
    store.create("j1", "detect", "cpu", SPEC)
    assert store.start("j1", store.get("j1")) is True
    started = store.get("j1")
    assert started["state"] == "running" and started["started"] >= started["created"]
    assert store.start("j1", started) is True  # a redelivery: still running, first start time kept
    assert store.get("j1")["started"] == started["started"]
    assert store.update("j1", progress={"shards_done": 1, "shards": 2}) is True
    store.shard_done("j1", 0)
    assert store.finish("j1", "succeeded", result={"images": 4}) is True
    record = store.get("j1")
    assert (record["state"], record["result"], record["progress"]) == ("succeeded", {"images": 4},
                                                                      {"shards_done": 1, "shards": 2})  # fmt: skip
    assert record["finished"] >= record["started"]
    assert 0 < store.redis.ttl("lstmdet:job:j1") <= 600
    assert 0 < store.redis.ttl("lstmdet:job:j1:shards") <= 600


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_a_final_state_is_never_overwritten_by_a_late_duplicate(store, final):
    """A late message (a duplicate merge, a redelivered shard) can neither revive nor re-end an ended job."""
    store.create("j1", "detect", "cpu", SPEC)
    store.start("j1", store.get("j1"))
    assert store.finish("j1", final, result={"images": 4} if final == "succeeded" else None, error="first") is True
    ended = store.get("j1")
    running = {**ended, "state": "running"}  # what a duplicate read before the job ended
    assert store.start("j1", running) is False
    assert store.update("j1", state="running", progress={"shards_done": 0}) is False
    for state in ("succeeded", "failed", "cancelled"):
        assert store.finish("j1", state, result={"images": 0}, error="late") is False
    store.request_cancel("j1")
    assert store.get("j1") == ended


def test_finish_refuses_a_state_that_is_not_final(store):
    store.create("j1", "detect", "cpu", SPEC)
    with pytest.raises(ValueError, match="running"):
        store.finish("j1", "running")
    assert store.get("j1")["state"] == "queued"


def test_updates_of_an_unknown_job_create_nothing(store):
    assert store.update("gone", state="running") is False
    assert store.finish("gone", "failed", error="x") is False
    assert store.get("gone") is None


def test_list_is_newest_first_limited_and_drops_expired_records(store):
    for i in range(4):
        store.create(f"j{i}", "eval", "cpu", {"weights": f"/w{i}.pt"})
        time.sleep(0.01)
    assert [r["id"] for r in store.list()] == ["j3", "j2", "j1", "j0"]
    assert [r["id"] for r in store.list(limit=2)] == ["j3", "j2"]
    store.redis.delete("lstmdet:job:j2")  # the record expired; the index still names it
    assert [r["id"] for r in store.list()] == ["j3", "j1", "j0"]
    assert store.redis.zrange("lstmdet:jobs", 0, -1) == ["j0", "j1", "j3"]


def test_list_pages_and_filters_by_state_and_kind(store):
    for i in range(12):
        store.create(f"j{i:02d}", "detect" if i % 2 else "train", "cpu", SPEC)
        time.sleep(0.002)
    for i in range(0, 12, 3):
        store.finish(f"j{i:02d}", "succeeded")
    newest = [f"j{i:02d}" for i in reversed(range(12))]
    assert [r["id"] for r in store.list(5)] == newest[:5]
    assert [r["id"] for r in store.list(5, offset=5)] == newest[5:10]
    assert [r["id"] for r in store.list(5, offset=10)] == newest[10:]
    assert [r["id"] for r in store.list(50, state="succeeded")] == ["j09", "j06", "j03", "j00"]
    assert [r["id"] for r in store.list(2, offset=1, state="queued", kind="detect")] == ["j07", "j05"]


def test_progress_never_moves_back(store):
    store.create("j1", "detect", "cpu", SPEC)
    assert store.progress("j1", {"shards_done": 3}, 3) is True
    assert store.progress("j1", {"shards_done": 2}, 2) is False  # a shard that finished earlier, reported late
    assert store.get("j1")["progress"] == {"shards_done": 3}
    assert store.progress("j1", {"shards_done": 3, "images": 9}, 3) is True  # same order: newer fields win
    store.finish("j1", "succeeded")
    assert store.progress("j1", {"shards_done": 4}, 4) is False  # the job ended


def test_redis_holds_the_retention_window_only_after_ten_thousand_finished_jobs(redis_settings):
    short = JobStore(redis_settings.result_url, expires=1, retries=0)
    pipe = short.redis.pipeline(transaction=False)
    created = time.time()
    for i in range(10_000):  # what create and finish leave behind, written in bulk
        key = f"lstmdet:job:old{i}"
        pipe.hset(key, mapping={"id": f"old{i}", "kind": "detect", "queue": "cpu", "state": "succeeded"})
        pipe.zadd("lstmdet:jobs", {f"old{i}": created})
        pipe.expire(key, 1)
        pipe.set(f"lstmdet:deliveries:old{i}:0", 1, ex=1)
    pipe.execute()
    assert short.count() == 10_000
    time.sleep(2.2)
    for i in range(15):  # each new job prunes up to a batch of expired entries
        short.create(f"new{i}", "detect", "cpu", SPEC)
    assert short.count() == 15
    # the 15 records, the index and the set of open jobs (the 15 new ones): nothing else is left
    assert sorted(short.redis.keys("lstmdet:jobs*")) == ["lstmdet:jobs", "lstmdet:jobs:open"]
    assert len(short.redis.keys("*")) == 17 and len(short.open_jobs()) == 15


def test_cancel_ends_a_queued_job_and_flags_a_running_one(store):
    store.create("queued", "eval", "cpu", {})
    store.create("running", "eval", "cpu", {})
    store.start("running", store.get("running"))
    record = store.request_cancel("queued")
    assert (record["state"], record["cancel"], record["error"]) == ("cancelled", True, "cancelled before it started")
    record = store.request_cancel("running")
    assert (record["state"], record["cancel"]) == ("running", True)
    assert store.cancelled("running") is True and store.cancelled("queued") is True
    with pytest.raises(LstmdetError, match="jobs list"):
        store.request_cancel("unknown")


def test_deliveries_are_counted_per_task_and_expire(store):
    assert [store.count_delivery("t1:0") for _ in range(3)] == [1, 2, 3]
    assert store.count_delivery("t1:1") == 1
    assert 0 < store.redis.ttl("lstmdet:deliveries:t1:0") <= 600


def test_a_shard_done_twice_counts_once(store):
    assert [store.shard_done("j1", i) for i in (0, 2, 0, 1, 2)] == [1, 2, 2, 3, 3]


def test_the_merge_is_claimed_by_one_task_until_it_is_queued(store):
    assert store.claim_merge("j1", "shard-3") is True
    assert store.claim_merge("j1", "shard-1") is False  # another task that also saw every shard done
    assert store.claim_merge("j1", "shard-3") is True  # a redelivery of the claimant, which died before queuing
    store.merge_queued("j1")
    assert store.claim_merge("j1", "shard-3") is False  # a redelivery after the merge was queued
    assert store.claim_merge("j2", "shard-1") is True  # claims are per job
    assert 0 < store.redis.ttl("lstmdet:job:j1:merge") <= 600


def test_the_merge_lock_is_exclusive_renewed_and_released(store):
    with store.merge_lock("j1", ttl=0.6) as first:
        assert first is True
        with store.merge_lock("j1") as second:
            assert second is False
        time.sleep(1.0)  # past the ttl: the holder's thread renewed it
        with store.merge_lock("j1") as third:
            assert third is False
        with store.merge_lock("j2") as other_job:
            assert other_job is True
    with store.merge_lock("j1") as after:
        assert after is True
    assert store.redis.exists("lstmdet:job:j1:merging") == 0


def test_the_merge_lock_of_a_dead_holder_expires(store):
    store.redis.set("lstmdet:job:j1:merging", "token-of-a-killed-process", px=300)
    with store.merge_lock("j1") as mine:
        assert mine is False
    time.sleep(0.5)
    with store.merge_lock("j1") as mine:
        assert mine is True


@pytest.mark.redis
def test_an_unreachable_or_refusing_redis_raises_broker_unavailable(tmp_path):
    down = JobStore(f"redis://:secret@127.0.0.1:{free_port()}/0", retries=0)
    with pytest.raises(BrokerUnavailable, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1") as err:
        down.ping()
    assert "secret" not in str(err.value)
    server = RedisServer(tmp_path / "locked", password="right").start()
    try:
        with pytest.raises(BrokerUnavailable, match="refused the credentials"):
            JobStore(server.url(password="wrong"), retries=0).ping()
        JobStore(server.url(), retries=0).ping()
    finally:
        server.stop()
