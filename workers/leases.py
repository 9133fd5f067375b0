"""Task leases: how a task lost with its whole worker goes back to the queue within a minute.

Celery on Redis acknowledges a task late: while it runs, its message waits in kombu's ``unacked``
hash (index ``unacked_index``, scored by delivery time), and only kombu's visibility timeout
(hours, since it must exceed the longest task) would ever hand it out again. Leases replace that
wait, in the pattern of Temporal's activity heartbeats and Kubernetes' node leases:

* **Lease.** Every message a worker holds (running, reserved or waiting for its countdown) has a
  key ``lstmdet:lease:<delivery tag>`` with a time-to-live of ``lease`` seconds. The worker's main
  process renews all of them every ``heartbeat`` seconds (:class:`LeaseKeeper`, a thread). The main
  process runs no model code, so a long step, a stalled disk or a GIL-heavy stretch in a pool
  process never delays the heartbeat; a worker that is gone (SIGKILL, a lost host) stops renewing.
* **Sweep.** Every worker, every ``heartbeat`` seconds, looks for deliveries older than one lease
  that have no lease (:meth:`Leases.sweep`). It puts each back at the head of its queue, under a
  new delivery tag, in one Redis script that first checks again that the lease is absent and the
  message unchanged; many workers sweeping at once restore a message once.
* **A holder gone from this machine.** A lease names the process that renews it (the worker's main
  process) and the machine it runs on (the kernel's boot id and the process's pid namespace, or
  ``LSTMDET_MACHINE_ID``). A sweeping worker on the same machine that finds that process gone (its
  pid ended, or now belongs to a younger process) does not wait for the lease to run out: it puts
  the message back at once. Several workers on one host (one per GPU, or pods of a node sharing
  ``hostPID``) then lose a few seconds to a killed neighbour, not a lease.
* **Fencing.** A pool process asks, between batches or steps, whether its delivery still holds the
  message (:meth:`Leases.holds`). One that was paused past its lease (SIGSTOP, a frozen VM) finds
  its message restored under another tag and stops without touching the job
  (:class:`LeaseLost`). Its late acknowledgement removes nothing, since the tag changed.
* **Draining.** On SIGTERM the worker marks itself draining (:meth:`Leases.drain`); its tasks stop
  at the next batch or step and go back to the queue at once (a train job checkpoints first).

A pool process that dies while its worker lives is handled by Celery at once
(``reject_on_worker_lost``), as before. Keys (in the broker's Redis, beside kombu's):

* ``lstmdet:lease:<tag>``: JSON ``{worker, task_id, name, job, renewed, machine, pid, pid_start}``,
  expiring;
* ``lstmdet:worker:<hostname>``: JSON ``{hostname, pid, queues, started, heartbeat, draining,
  tasks}``, expiring, and ``lstmdet:workers`` (a sorted set by last heartbeat);
* ``lstmdet:failovers:<task id>:<retries>``: how often the sweep restored that message
  (deliveries that do not count towards the poison-job cap), expiring;
* ``lstmdet:failover-log``: the newest 1000 restorations (JSON), for operators and benchmarks.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lstmdet.errors import LstmdetError

log = logging.getLogger("lstmdet.workers")

#: kombu's Redis transport keys of delivered, not yet acknowledged messages (its defaults).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
LEASE_PREFIX = "lstmdet:lease:"
WORKER_PREFIX = "lstmdet:worker:"
WORKERS = "lstmdet:workers"
FAILOVER_PREFIX = "lstmdet:failovers:"
FAILOVER_LOG = "lstmdet:failover-log"
#: kombu's separator between a queue name and a priority step in the Redis list name.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
#: Shortest time between two heartbeats (an arriving message wakes the heartbeat early).
MIN_BEAT_S = 0.2

# Put one lost message back: only when its unacked entry is unchanged and its lease is absent, or
# still the very lease of a holder seen dead (then it is deleted).
# KEYS: unacked, unacked_index, lease, queue list, failover counter, failover log.
# ARGV: tag, raw entry, new payload, counter ttl, log entry, dead holder's lease ("" for none).
# Returns the failover count, or 0.
_RESTORE = """
local lease = redis.call('GET', KEYS[3])
if lease and lease ~= ARGV[6] then return 0 end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if lease then redis.call('DEL', KEYS[3]) end
redis.call('RPUSH', KEYS[4], ARGV[3])
local n = redis.call('INCR', KEYS[5])
redis.call('EXPIRE', KEYS[5], ARGV[4])
redis.call('LPUSH', KEYS[6], ARGV[5])
redis.call('LTRIM', KEYS[6], 0, 999)
return n
"""


class LeaseLost(LstmdetError):
    """This delivery no longer holds its message: another worker runs the task now; stop, touch nothing."""


@dataclass(frozen=True)
class Holding:
    """One message a worker holds.

    Attributes:
        tag: kombu's delivery tag.
        task_id: Celery task id (for job tasks the first task's id is the job id).
        name: Task name, e.g. ``lstmdet.detect_shard``.
        job: The job id (first argument of a job task), or ``None``.
        state: ``active`` (running in a pool process) or ``reserved`` (waiting for one or its countdown).
    """

    tag: str
    task_id: str
    name: str
    job: str | None
    state: str


def _queue_list(routing_key: str, message: dict[str, Any]) -> str:
    """The Redis list kombu consumes for ``routing_key`` at the message's priority."""
    priority = message.get("properties", {}).get("priority") or 0
    step = max(s for s in _PRIORITY_STEPS if s <= max(0, min(9, int(priority))))
    return routing_key if step == 0 else f"{routing_key}{_PRIORITY_SEP}{step}"


def machine_id() -> str | None:
    """This machine's id as leases record it: processes with the same id can see each other's pids.

    ``LSTMDET_MACHINE_ID`` when set (any distinct value per machine); else the kernel's boot id and
    this process's pid namespace (``/proc``), so two containers on one host (separate pid
    namespaces) count as two machines; ``None`` where ``/proc`` has neither (then only lease expiry
    restores a message).
    """
    if os.environ.get("LSTMDET_MACHINE_ID"):
        return os.environ["LSTMDET_MACHINE_ID"]
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat``), or ``None`` if it is gone.

    A zombie (killed, not yet reaped) counts as gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_alive(pid: Any, started: Any) -> bool:
    """Whether the process ``pid`` that started at ``started`` (:func:`process_start`) still runs here.

    Unknown values count as alive: only a sure death restores a message before its lease ends.
    """
    if not isinstance(pid, int) or not isinstance(started, int):
        return True
    return process_start(pid) == started


def queue_lists(queues: Iterable[str]) -> list[str]:
    """The Redis lists kombu consumes for ``queues``, at every priority step."""
    return [q if step == 0 else f"{q}{_PRIORITY_SEP}{step}" for q in sorted(set(queues)) for step in _PRIORITY_STEPS]


class Leases:
    """Leases, sweeps and the worker registry in the broker's Redis.

    Args:
        redis: A redis-py client of the broker (``decode_responses=True``).
        lease: Seconds a lease lives unless renewed (``LSTMDET_LEASE_SECONDS``).
        heartbeat: Seconds between renewals (``LSTMDET_HEARTBEAT_SECONDS``).
        keep: Seconds failover counters are kept.
        machine: This machine's id (:func:`machine_id`) in a worker, to restore at once the messages
            of a gone neighbour on the same machine; ``None`` (clients, tests) turns that off.
    """

    def __init__(
        self, redis: Any, *, lease: float, heartbeat: float, keep: int = 7 * 24 * 3600, machine: str | None = None
    ) -> None:
        self.redis, self.lease, self.heartbeat, self.keep, self.machine = redis, lease, heartbeat, keep, machine
        self._restore = redis.register_script(_RESTORE)

    # --- the worker's main process -------------------------------------------------------------

    def renew(self, worker: dict[str, Any], holdings: Iterable[Holding], released: Iterable[str] = ()) -> None:
        """Renew the leases of ``holdings``, drop those of ``released`` tags, and record the worker.

        Args:
            worker: ``{hostname, pid, queues, started, draining}`` of the worker, and ``machine`` and
                ``pid_start`` (:func:`process_start`) when known.
            holdings: Every message the worker holds now.
            released: Tags it held at the last renewal and holds no more (acknowledged or requeued).
        """
        now = time.time()
        holdings = list(holdings)
        ttl = int(self.lease * 1000)
        record = {**worker, "heartbeat": now, "tasks": [asdict(h) for h in holdings]}
        with self.redis.pipeline(transaction=False) as pipe:
            for h in holdings:
                value = {"worker": worker["hostname"], "task_id": h.task_id, "name": h.name, "job": h.job,
                         "renewed": now, "machine": worker.get("machine"), "pid": worker.get("pid"),
                         "pid_start": worker.get("pid_start")}  # fmt: skip
                pipe.set(LEASE_PREFIX + h.tag, json.dumps(value), px=ttl)
            for tag in released:
                pipe.delete(LEASE_PREFIX + tag)
            pipe.set(WORKER_PREFIX + worker["hostname"], json.dumps(record), px=ttl)
            pipe.zadd(WORKERS, {worker["hostname"]: now})
            pipe.execute()

    def sweep(self, *, now: float | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Put back every delivery that lost its holder; returns what was restored.

        A delivery has lost its holder when it is older than a lease and has no lease, or when its
        lease names a process on this machine that is gone (see the module docstring). Safe to run
        in every worker at once: each message is restored by one script that checks the lease and
        the message again.

        Returns:
            One ``{task_id, name, tag, new_tag, queue, delivered, restored, why, failovers}`` per message.
        """
        now = time.time() if now is None else now
        restored = []
        tags = self.redis.zrangebyscore(UNACKED_INDEX, "-inf", now - self.lease, start=0, num=limit, withscores=True)
        for tag, delivered in tags:
            if not self.redis.exists(LEASE_PREFIX + tag):
                restored += self._restore_one(tag, delivered, now, why="lease expired")
        if self.machine is not None:
            restored += self._sweep_dead_neighbours(now, limit)
        return restored

    def _sweep_dead_neighbours(self, now: float, limit: int) -> list[dict[str, Any]]:
        """Restore the deliveries whose lease names a process of this machine that is gone."""
        tags = self.redis.zrange(UNACKED_INDEX, 0, limit - 1, withscores=True)
        if not tags:
            return []
        restored = []
        raws = self.redis.mget([LEASE_PREFIX + tag for tag, _ in tags])
        for (tag, delivered), raw in zip(tags, raws, strict=True):
            if raw is None:
                continue
            lease = json.loads(raw)
            if lease.get("machine") == self.machine and not process_alive(lease.get("pid"), lease.get("pid_start")):
                restored += self._restore_one(tag, delivered, now, why="holder process gone", lease=raw)
        return restored

    def _restore_one(self, tag: str, delivered: float, now: float, *, why: str, lease: str = "") -> list[dict]:
        """Put one delivery back at the head of its queue under a new tag ([] if it changed meanwhile)."""
        from kombu.utils.json import dumps, loads

        raw = self.redis.hget(UNACKED, tag)
        if raw is None:
            return []  # acknowledged meanwhile
        message, _exchange, routing_key = loads(raw)
        headers, properties = message.setdefault("headers", {}), message.setdefault("properties", {})
        new_tag = str(uuid.uuid4())
        properties["delivery_tag"] = new_tag
        properties.setdefault("delivery_info", {})["redelivered"] = True
        headers["redelivered"] = True
        task_id, retries = headers.get("id", tag), headers.get("retries", 0)
        event = {"task_id": task_id, "name": headers.get("task"), "tag": tag, "new_tag": new_tag,
                 "queue": routing_key, "delivered": delivered, "restored": now, "why": why}  # fmt: skip
        keys = [UNACKED, UNACKED_INDEX, LEASE_PREFIX + tag, _queue_list(routing_key, message),
                f"{FAILOVER_PREFIX}{task_id}:{retries}", FAILOVER_LOG]  # fmt: skip
        count = self._restore(keys=keys, args=[tag, raw, dumps(message), self.keep, json.dumps(event), lease])
        if not count:
            return []
        event["failovers"] = int(count)
        log.warning("task %s (%s) lost its worker (%s): put back on queue %s", task_id, event["name"], why,
                    routing_key)  # fmt: skip
        return [event]

    def drain(self, hostname: str) -> None:
        """Mark ``hostname`` draining: its tasks stop at the next batch or step and go back to the queue."""
        raw = self.redis.get(WORKER_PREFIX + hostname)
        record = json.loads(raw) if raw else {"hostname": hostname, "tasks": [], "heartbeat": time.time()}
        record["draining"] = True
        self.redis.set(WORKER_PREFIX + hostname, json.dumps(record), px=int(self.lease * 1000))
        self.redis.set(f"{WORKER_PREFIX}{hostname}:draining", "1", px=int(max(self.lease, 3600) * 1000))

    def forget(self, hostname: str, tags: Iterable[str] = ()) -> None:
        """Remove a worker that stopped cleanly, and the leases it still listed."""
        with self.redis.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.delete(LEASE_PREFIX + tag)
            pipe.delete(WORKER_PREFIX + hostname, f"{WORKER_PREFIX}{hostname}:draining")
            pipe.zrem(WORKERS, hostname)
            pipe.execute()

    # --- a pool process --------------------------------------------------------------------------

    def holds(self, tag: str | None) -> bool:
        """Whether the delivery ``tag`` still holds its message (not acknowledged, not restored elsewhere)."""
        return tag is None or bool(self.redis.hexists(UNACKED, tag))

    def draining(self, hostname: str | None) -> bool:
        """Whether the worker ``hostname`` is shutting down."""
        return bool(hostname) and bool(self.redis.exists(f"{WORKER_PREFIX}{hostname}:draining"))

    def failovers(self, task_id: str, retries: int) -> int:
        """How often the sweep restored this message (task id and retry number)."""
        return int(self.redis.get(f"{FAILOVER_PREFIX}{task_id}:{retries}") or 0)

    # --- operators -------------------------------------------------------------------------------

    def workers(self) -> list[dict[str, Any]]:
        """Live workers (heartbeat within a lease), newest heartbeat first; stale entries are dropped."""
        names = self.redis.zrevrange(WORKERS, 0, -1)
        if not names:
            return []
        raws = self.redis.mget([WORKER_PREFIX + n for n in names])
        live, gone = [], []
        for name, raw in zip(names, raws, strict=True):
            (live.append(json.loads(raw)) if raw else gone.append(name))
        if gone:
            self.redis.zrem(WORKERS, *gone)
        return live

    def failover_log(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest restorations, newest first."""
        return [json.loads(x) for x in self.redis.lrange(FAILOVER_LOG, 0, limit - 1)]


def held_messages() -> list[Holding]:
    """What this worker process holds now, from Celery's worker state (main process only)."""
    from celery.worker import state

    for _ in range(5):  # the consumer thread may change the dict while we copy it
        try:
            requests = list(state.requests.values())
            active = {id(r) for r in list(state.active_requests)}
            break
        except RuntimeError:
            time.sleep(0.01)
    else:
        return []
    held = []
    for request in requests:
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if not tag:
            continue
        args = request.args or []
        job = args[0] if request.name != "lstmdet.ping" and args and isinstance(args[0], str) else None
        state_name = "active" if id(request) in active else "reserved"
        held.append(Holding(tag=str(tag), task_id=request.id, name=request.name, job=job, state=state_name))
    return held


class LeaseKeeper:
    """The heartbeat thread of a worker's main process: renews leases, sweeps, registers the worker.

    Args:
        leases: The lease book.
        hostname: The Celery node name.
        queues: Queues the worker consumes.
        reconciler: Asked after each sweep to look for jobs whose every message is gone
            (:class:`~lstmdet.workers.reconcile.Reconciler`; it looks every few beats, in one worker at a time).
    """

    def __init__(self, leases: Leases, hostname: str, queues: list[str], reconciler: Any = None) -> None:
        self.leases, self.hostname, self.reconciler = leases, hostname, reconciler
        self.info = {"hostname": hostname, "pid": os.getpid(), "queues": queues, "started": time.time(),
                     "draining": False, "machine": leases.machine, "pid_start": process_start(os.getpid())}  # fmt: skip
        self._held: set[str] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lstmdet-lease-keeper", daemon=True)

    def start(self) -> None:
        """Renew once now (before the first task can be taken), then every heartbeat."""
        try:
            self.beat()
        except Exception as exc:  # Redis away at start: the thread's next beat tries again
            log.warning("lease heartbeat failed: %s", exc)
        self._thread.start()

    def beat(self) -> None:
        """One heartbeat: renew, release what was acknowledged, sweep (and now and then, reconcile jobs)."""
        holdings = held_messages()
        tags = {h.tag for h in holdings}
        self.leases.renew(self.info, holdings, released=self._held - tags)
        self._held = tags
        self.leases.sweep()
        if self.reconciler is not None:
            self.reconciler.maybe_run()

    def wake(self) -> None:
        """A message arrived: beat now, so that it has a lease (and operators see it) at once."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self.leases.heartbeat):
                self._stop.wait(0.05)  # let Celery file the arriving request first
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.beat()
            except Exception as exc:  # Redis away for a while: leases lapse, the next beat renews them
                log.warning("lease heartbeat failed: %s", exc)
            self._stop.wait(MIN_BEAT_S)  # many small tasks arriving: at most a few beats a second

    def drain(self) -> None:
        """The worker is shutting down (SIGTERM): tell its tasks to stop and go back to the queue."""
        self.info["draining"] = True
        try:
            self.leases.drain(self.hostname)
        except Exception as exc:
            log.warning("could not mark %s draining: %s", self.hostname, exc)

    def stop(self) -> None:
        """Stop the heartbeat and remove the worker's record."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.leases.heartbeat + 5)
        try:
            self.leases.forget(self.hostname, self._held)
        except Exception as exc:
            log.warning("could not remove worker %s from the registry: %s", self.hostname, exc)


def open_leases(settings: Any, *, retries: int = 40, machine: str | None = None) -> Leases:
    """The lease book on the broker of ``settings`` (:class:`~lstmdet.workers.settings.Settings`).

    Args:
        settings: Broker URL, lease and heartbeat seconds, result retention.
        retries: Command retries on connection errors (workers ride out a Redis restart; clients fail fast).
        machine: This machine's id in a worker's main process (:func:`machine_id`).
    """
    from lstmdet.workers.store import redis_client

    return Leases(redis_client(settings.broker_url, retries=retries), lease=settings.lease_seconds,
                  heartbeat=settings.heartbeat_seconds, keep=settings.result_expires, machine=machine)  # fmt: skip
