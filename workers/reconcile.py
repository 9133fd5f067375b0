"""The job reconciler: a job whose every message is gone is queued again.

Leases bring back a message that a lost worker held (:mod:`lstmdet.workers.leases`); they cannot
bring back a message nobody recorded. One case: Redis dies in the instant a worker's ``BRPOP``
has taken a message off its queue and before kombu filed it in ``unacked`` (the reply dies with
the server, and the message with it). A job that lost its only message that way would wait for
ever, though no task of it runs anywhere.

So once every ``every`` seconds one worker (a Redis lock picks it) looks at every job not yet
ended (:meth:`~lstmdet.workers.store.JobStore.open_jobs`) and at every message in the broker:
queued (the job's queue at each priority) or delivered and not yet acknowledged (kombu's
``unacked``, which also holds the messages waiting in a worker for a countdown). A job none of
whose messages is anywhere is a suspect; a suspect seen so again ``grace`` seconds later (so that
a message on its way from a queue to ``unacked`` is not mistaken for lost) is queued again:

* a train or eval job: its first task (a train job resumes from its newest checkpoint);
* a detect job: its first task, which queues the shards not yet done, or its merge once the
  merge was claimed.

Every task may be delivered twice without a second effect, so the rare suspect that was not
lost after all costs a duplicate delivery, nothing more. The new message carries the job id as
its root id, as every task the job queues does, so the next pass recognises it.

A look reads every queued message of the open jobs' queues, so it is skipped (with a log line)
while those queues hold more than :data:`MAX_SCAN` messages: a backlog that deep is busy, and the
look happens again once it has shrunk.

Keys (in the broker's Redis): ``lstmdet:reconcile:lock`` (who looks now) and
``lstmdet:reconcile:suspects`` (a hash: job id -> when first seen without a message).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from lstmdet.workers.leases import UNACKED, queue_lists

log = logging.getLogger("lstmdet.workers")

#: Most queued messages a look reads; with more waiting, the look is skipped.
MAX_SCAN = 50_000
LOCK = "lstmdet:reconcile:lock"
SUSPECTS = "lstmdet:reconcile:suspects"

#: ``send(name, args, queue, task_id, root_id)``: publish one task message.
Send = Callable[[str, list[Any], str, str, str], None]


def message_jobs(raws: Iterable[str]) -> set[str]:
    """The job ids that queued or unacked messages (kombu's JSON envelopes) belong to.

    A job's first message has the job id as its task id; every later one (shards, merge, retries,
    re-queued work) has it as its root id.
    """
    jobs: set[str] = set()
    for raw in raws:
        try:
            envelope = json.loads(raw)
        except ValueError:
            continue
        message = envelope[0] if isinstance(envelope, list) and envelope else envelope  # unacked: [msg, exchange, key]
        headers = message.get("headers") if isinstance(message, dict) else None
        if not isinstance(headers, dict):
            continue
        jobs.update(x for x in (headers.get("id"), headers.get("root_id")) if isinstance(x, str))
    return jobs


class Reconciler:
    """Queues again the jobs whose every message is gone (see the module docstring).

    Args:
        broker: A redis-py client of the broker (``decode_responses=True``).
        store: The job store (:class:`~lstmdet.workers.store.JobStore`).
        send: Publishes a task message (:data:`Send`).
        every: Seconds between two looks (by any worker).
        grace: Seconds a job must stay without a message before it is queued again.
        name: Who looks (the worker's node name), for the lock and the log.
    """

    def __init__(self, broker: Any, store: Any, send: Send, *, every: float, grace: float, name: str) -> None:
        self.broker, self.store, self.send = broker, store, send
        self.every, self.grace, self.name = every, grace, name
        self._next = 0.0

    def maybe_run(self, now: float | None = None) -> list[str]:
        """Look, if ``every`` seconds passed here and no other worker looked meanwhile; returns the jobs re-queued."""
        now = time.time() if now is None else now
        if now < self._next:
            return []
        self._next = now + self.every
        if not self.broker.set(LOCK, self.name, nx=True, px=int(self.every * 1000)):
            return []
        return self.run(now)

    def run(self, now: float) -> list[str]:
        """One look at every open job; returns the ids of the jobs queued again."""
        open_jobs = self.store.open_jobs()
        if not open_jobs:
            self.broker.delete(SUSPECTS)
            return []
        records = {job_id: self.store.get(job_id) for job_id in open_jobs}
        queues = {r["queue"] for r in records.values() if r}
        lists = queue_lists(queues)
        waiting = sum(self.broker.llen(name) for name in lists)
        if waiting > MAX_SCAN:
            log.info("job reconciler: %d messages wait in %s; looking again later", waiting, ", ".join(sorted(queues)))
            return []
        raws = list(self.broker.hvals(UNACKED))
        for name in lists:
            raws += self.broker.lrange(name, 0, -1)
        present = message_jobs(raws)
        suspects = {k: float(v) for k, v in self.broker.hgetall(SUSPECTS).items()}
        requeued, keep = [], {}
        for job_id, record in records.items():
            if record is None or job_id in present:
                continue
            first = suspects.get(job_id, now)
            if now - first >= self.grace:
                self._requeue(job_id, record)
                requeued.append(job_id)
            else:
                keep[job_id] = first
        with self.broker.pipeline(transaction=True) as pipe:
            pipe.delete(SUSPECTS)
            if keep:
                pipe.hset(SUSPECTS, mapping={k: repr(v) for k, v in keep.items()})
                pipe.expire(SUSPECTS, int(self.grace + 3 * self.every) + 1)
            pipe.execute()
        return requeued

    def _requeue(self, job_id: str, record: dict[str, Any]) -> None:
        from lstmdet.workers.client import FIRST_TASK

        name = FIRST_TASK[record["kind"]]
        if record["kind"] == "detect" and self.store.merge_state(job_id) is not None:
            name = "lstmdet.detect_merge"
        self.send(name, [job_id, record["spec"]], record["queue"], str(uuid.uuid4()), job_id)
        log.warning("job %s (%s) had no message anywhere for %.0f s (lost with a Redis restart?): queued %s "
                    "again", job_id, record["state"], self.grace, name)  # fmt: skip
