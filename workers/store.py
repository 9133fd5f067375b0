"""Job records in Redis (``LSTMDET_RESULT_URL``): state, progress, small results, the cancel flag.

Only small JSON lives here; artifacts go to files under the data roots. Keys:

* ``lstmdet:job:<id>``: a hash with ``id``, ``kind``, ``queue``, ``spec``, ``state``, ``created``,
  ``started``, ``finished``, ``progress`` (with ``progress_order``, which only grows), ``result``,
  ``error``, ``cancel``;
* ``lstmdet:jobs``: a sorted set of job ids by creation time (``jobs list``); ids whose record has
  expired are dropped from it whenever a job is created, so Redis holds the jobs of the retention
  window (``LSTMDET_RESULT_EXPIRES`` after they end) and no more;
* ``lstmdet:jobs:open``: the ids of jobs not yet ended (a set; :mod:`.reconcile` looks after them);
* ``lstmdet:job:<id>:shards``: the finished shards of a detect job (a set, so a shard that
  finishes twice counts once);
* ``lstmdet:job:<id>:merge``: who queues the merge of a detect job (:meth:`JobStore.claim_merge`),
  then ``queued`` once it is queued, so a job's merge is queued once however often its last shard
  is delivered;
* ``lstmdet:job:<id>:merging``: held while a merge writes the job's final files
  (:meth:`JobStore.merge_lock`), so two deliveries of the merge never write one folder at once;
* ``lstmdet:deliveries:<task id>``: how often a task was delivered (the poison-job cap).

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``. A final state is
never overwritten (a late message of a cancelled job cannot revive it), and progress never moves
back (a late update from a delivery that lost its lease, or from a shard that finished earlier,
is dropped).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from lstmdet.errors import LstmdetError
from lstmdet.workers.settings import mask_url

log = logging.getLogger("lstmdet.workers")

FINAL = ("succeeded", "failed", "cancelled")
#: Every state of a job, in the order a job moves through them.
STATES = ("queued", "running", *FINAL)
#: Seconds a merge lock outlives a merge whose process died (it is renewed while the merge runs).
MERGE_LOCK_TTL = 30.0
_PREFIX = "lstmdet:job:"
_INDEX = "lstmdet:jobs"
_OPEN = "lstmdet:jobs:open"
#: Hash fields stored as JSON.
_JSON_FIELDS = ("spec", "progress", "result")
#: Index entries examined per :meth:`JobStore.create` for expired records (bounds the work of one call).
_PRUNE_BATCH = 1000

# Set the progress when its order is not below the recorded one and the job has not ended; 1 when applied.
_SET_PROGRESS = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
local old = tonumber(redis.call('HGET', KEYS[1], 'progress_order') or '-1')
if tonumber(ARGV[2]) < old then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'progress_order', ARGV[2])
return 1
"""

# Set fields and the state unless the job is already in a final state; returns 1 when applied.
_SET_STATE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# Claim the queuing of a job's merge for ARGV[1]: 1 when nobody holds it yet or ARGV[1] already does
# (its earlier delivery died before queuing the merge), 0 once another holds it or it is queued.
_CLAIM_MERGE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if holder == ARGV[1] then return 1 end
return 0
"""
#: Value of the merge key once the merge is queued (no claimant can equal it: claimants are task ids).
_MERGE_QUEUED = "queued"


class BrokerUnavailable(LstmdetError):
    """Redis cannot be reached or refused the credentials."""


def redis_client(url: str, *, retries: int) -> Any:
    """A redis-py client for ``url`` that retries failed commands ``retries`` times with backoff.

    Args:
        url: ``redis://`` or ``rediss://`` URL (password and TLS options in the URL).
        retries: Retries of a command whose connection failed (a worker rides out a Redis restart;
            a client gives up after a few seconds).
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=25,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.2), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        decode_responses=True,
    )


def explain(exc: Exception, url: str) -> BrokerUnavailable:
    """A :class:`BrokerUnavailable` that says what went wrong with ``url`` and what to do."""
    import redis

    shown = mask_url(url)
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
        return BrokerUnavailable(
            f"Redis at {shown} refused the credentials ({exc}); put the right password in the URL "
            "(redis://:PASSWORD@host:port/db) in LSTMDET_BROKER_URL / LSTMDET_RESULT_URL"
        )
    return BrokerUnavailable(
        f"cannot reach Redis at {shown} ({exc}); start redis-server there or point LSTMDET_BROKER_URL / "
        "LSTMDET_RESULT_URL at a running one"
    )


class JobStore:
    """Reads and writes job records.

    Args:
        url: The Redis URL (``LSTMDET_RESULT_URL``).
        expires: Seconds a record is kept after its job ends.
        retries: Command retries on connection errors (see :func:`redis_client`).
    """

    def __init__(self, url: str, *, expires: int = 7 * 24 * 3600, retries: int = 2) -> None:
        self.url, self.expires = url, expires
        self.redis = redis_client(url, retries=retries)
        self._set_state = self.redis.register_script(_SET_STATE)
        self._claim_merge = self.redis.register_script(_CLAIM_MERGE)
        self._set_progress = self.redis.register_script(_SET_PROGRESS)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, redis.ResponseError) as exc:
            if isinstance(exc, redis.ResponseError) and "AUTH" not in str(exc).upper():
                raise
            raise explain(exc, self.url) from None

    @staticmethod
    def _encode(fields: dict[str, Any]) -> dict[str, str]:
        return {k: json.dumps(v) if k in _JSON_FIELDS else ("" if v is None else str(v)) for k, v in fields.items()}

    def ping(self) -> None:
        """Check that Redis answers (raises :class:`BrokerUnavailable`)."""
        self._call(self.redis.ping)

    def create(self, job_id: str, kind: str, queue: str, spec: dict[str, Any]) -> None:
        """Record a new ``queued`` job."""
        now = time.time()
        record = {"id": job_id, "kind": kind, "queue": queue, "spec": spec, "state": "queued", "created": now}

        def write() -> None:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(_PREFIX + job_id, mapping=self._encode(record))
                pipe.zadd(_INDEX, {job_id: now})
                pipe.sadd(_OPEN, job_id)
                pipe.execute()

        self._call(write)
        self._call(self.prune, now)

    def prune(self, now: float | None = None) -> int:
        """Drop index entries of jobs whose records expired; returns how many were dropped.

        Only jobs created more than the retention ago can have expired; each call looks at up to
        :data:`_PRUNE_BATCH` of them, oldest first, so the index never outgrows the records by much.
        """
        now = time.time() if now is None else now
        old = self.redis.zrangebyscore(_INDEX, "-inf", now - self.expires, start=0, num=_PRUNE_BATCH)
        if not old:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in old:
                pipe.exists(_PREFIX + job_id)
            alive = pipe.execute()
        gone = [job_id for job_id, exists in zip(old, alive, strict=True) if not exists]
        if gone:
            self.redis.zrem(_INDEX, *gone)
        return len(gone)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's record (JSON fields decoded, times as floats), or ``None`` when unknown."""
        raw = self._call(self.redis.hgetall, _PREFIX + job_id)
        if not raw:
            return None
        record: dict[str, Any] = {}
        for key, value in raw.items():
            if key in _JSON_FIELDS:
                record[key] = json.loads(value) if value else None
            elif key in ("created", "started", "finished", "progress_order"):
                record[key] = float(value) if value else None
            else:
                record[key] = value
        record["cancel"] = record.get("cancel") == "1"
        return record

    def list(
        self, limit: int = 50, *, offset: int = 0, state: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """A page of jobs, newest first (records that expired are dropped from the index).

        Args:
            limit: Jobs in the page.
            offset: Matching jobs skipped first (the page ``offset // limit``).
            state: Only jobs in this state (``queued``, ``running``, a final state).
            kind: Only jobs of this kind (``train``, ``detect``, ``eval``).
        """
        records: list[dict[str, Any]] = []
        skipped, start, chunk = 0, 0, max(50, limit)
        while len(records) < limit:
            ids = self._call(self.redis.zrevrange, _INDEX, start, start + chunk - 1)
            if not ids:
                break
            start += len(ids)
            for job_id in ids:
                record = self.get(job_id)
                if record is None:
                    self._call(self.redis.zrem, _INDEX, job_id)
                    start -= 1
                    continue
                if (state and record["state"] != state) or (kind and record["kind"] != kind):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                records.append(record)
                if len(records) == limit:
                    break
        return records

    def count(self) -> int:
        """Job ids in the index (expired ones included until the next :meth:`prune`)."""
        return int(self._call(self.redis.zcard, _INDEX))

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set fields (``state`` included) unless the job already ended; True when applied."""
        if not fields:
            return True
        args = [x for pair in self._encode(fields).items() for x in pair]
        applied = self._call(self._set_state, [_PREFIX + job_id], args)
        return applied == 1

    def progress(self, job_id: str, progress: dict[str, Any], order: float) -> bool:
        """Record ``progress`` unless a progress of higher ``order`` is recorded or the job ended.

        Args:
            job_id: The job.
            progress: What ``jobs status`` shows (shards done, epoch and step, loss...).
            order: A number that grows as the job advances (shards done; epoch and step).
        """
        applied = self._call(self._set_progress, [_PREFIX + job_id], [json.dumps(progress), float(order)])
        return applied == 1

    def start(self, job_id: str, record: dict[str, Any]) -> bool:
        """Mark the job ``running`` (keeping its first start time); False when it already ended.

        Args:
            job_id: The job.
            record: Its record as just read (:meth:`get`).
        """
        if record["state"] in FINAL:
            return False
        fields: dict[str, Any] = {"state": "running"}
        if not record.get("started"):
            fields["started"] = time.time()
        return self.update(job_id, **fields)

    def finish(self, job_id: str, state: str, *, result: Any = None, error: str | None = None) -> bool:
        """End the job in ``state`` (``succeeded``, ``failed`` or ``cancelled``) and let it expire."""
        if state not in FINAL:
            raise ValueError(f"{state!r} is not a final state ({', '.join(FINAL)})")
        fields: dict[str, Any] = {"state": state, "finished": time.time()}
        if result is not None:
            fields["result"] = result
        if error is not None:
            fields["error"] = error
        applied = self.update(job_id, **fields)
        for key in (_PREFIX + job_id, f"{_PREFIX}{job_id}:shards", f"{_PREFIX}{job_id}:merge"):
            self._call(self.redis.expire, key, self.expires)
        self._call(self.redis.srem, _OPEN, job_id)
        return applied

    def open_jobs(self) -> list[str]:
        """Ids of the jobs not yet ended (ids whose record expired unended are dropped)."""
        ids = sorted(self._call(self.redis.smembers, _OPEN))
        if not ids:
            return []

        def states() -> list[str | None]:
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(_PREFIX + job_id, "state")
                return pipe.execute()

        ended = {job_id for job_id, state in zip(ids, self._call(states), strict=True) if state in (None, *FINAL)}
        if ended:
            self._call(self.redis.srem, _OPEN, *ended)
        return [job_id for job_id in ids if job_id not in ended]

    def merge_state(self, job_id: str) -> str | None:
        """Where the job's merge stands: ``None`` (not claimed), a claimant's task id, or ``"queued"``."""
        return self._call(self.redis.get, f"{_PREFIX}{job_id}:merge")

    def request_cancel(self, job_id: str) -> dict[str, Any]:
        """Raise the job's cancel flag; a job still queued ends as ``cancelled`` at once.

        Raises:
            LstmdetError: Unknown job.
        """
        record = self.get(job_id)
        if record is None:
            raise LstmdetError(f"no job {job_id}; `lstmdet jobs list` shows the known jobs")
        if record["state"] not in FINAL:
            self._call(self.redis.hset, _PREFIX + job_id, "cancel", "1")
            if record["state"] == "queued":
                self.finish(job_id, "cancelled", error="cancelled before it started")
        return self.get(job_id) or record

    def cancelled(self, job_id: str) -> bool:
        """Whether the job's cancel flag is raised (checked between batches)."""
        return self._call(self.redis.hget, _PREFIX + job_id, "cancel") == "1"

    def count_delivery(self, task_id: str) -> int:
        """Count one more delivery of a task; returns the count (1 on the first delivery)."""

        def bump() -> int:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(f"lstmdet:deliveries:{task_id}")
                pipe.expire(f"lstmdet:deliveries:{task_id}", self.expires)
                return pipe.execute()[0]

        return int(self._call(bump))

    def shard_done(self, job_id: str, index: int) -> int:
        """Record shard ``index`` of a detect job as done; returns how many shards are done."""

        def add() -> int:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.sadd(f"{_PREFIX}{job_id}:shards", index)
                pipe.scard(f"{_PREFIX}{job_id}:shards")
                return pipe.execute()[1]

        return int(self._call(add))

    def claim_merge(self, job_id: str, claimant: str) -> bool:
        """Whether ``claimant`` (a task id) is the one to queue the job's merge; atomic.

        True for the first claimant, and again for the same claimant (a redelivery of a task that
        died between claiming and queuing) until :meth:`merge_queued` is called; False for any
        other claimant and once the merge is queued.
        """
        key = f"{_PREFIX}{job_id}:merge"
        return self._call(self._claim_merge, [key], [claimant, self.expires]) == 1

    def merge_queued(self, job_id: str) -> None:
        """Record that the job's merge is queued: no later claim succeeds."""
        self._call(self.redis.set, f"{_PREFIX}{job_id}:merge", _MERGE_QUEUED, ex=self.expires)

    @contextlib.contextmanager
    def merge_lock(self, job_id: str, ttl: float = MERGE_LOCK_TTL) -> Iterator[bool]:
        """Hold the job's merge lock for the ``with`` block; yields False (and holds nothing) when another holds it.

        The lock expires ``ttl`` seconds after its holder stops renewing it (a background thread
        renews it every ``ttl / 3`` seconds), so the merge of a process that died is taken over soon.
        """
        import redis

        lock = self.redis.lock(f"{_PREFIX}{job_id}:merging", timeout=ttl, blocking=False, thread_local=False)
        if not self._call(lock.acquire):
            yield False
            return
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(ttl / 3):
                try:
                    lock.reacquire()
                except (redis.RedisError, OSError) as exc:  # lost to expiry, or Redis away for a while
                    log.warning("job %s: merge lock not renewed: %s", job_id, exc)

        keeper = threading.Thread(target=renew, name=f"lstmdet-merge-lock-{job_id}", daemon=True)
        keeper.start()
        try:
            yield True
        finally:
            stop.set()
            keeper.join()
            with contextlib.suppress(redis.RedisError, OSError):  # expired meanwhile: nothing to release
                lock.release()
