"""Job tasks: thin adapters from a JSON spec to the engine, with job state kept in :mod:`.store`.

Every task takes ``(job_id, spec, ...)``; the job id is the Celery task id of the job's first task.
On each delivery a task counts the delivery (a task whose pool process died more than
``max_deliveries`` times fails the job as a poison job instead of killing workers forever; a
delivery put back because its whole worker was lost does not count), checks the job is neither
over nor cancelled, and checks every path of the spec against this worker's data roots again.

Every task may be delivered twice (:mod:`lstmdet.workers.leases`), and nothing it does happens
twice: between batches or steps a task asks :class:`_Guard` whether its delivery still holds its
message (if not, another worker runs it now: it stops and touches nothing), whether the job was
cancelled, and whether its worker is draining (SIGTERM: a train job checkpoints, a detect shard
stops, and both go back to the queue at once). Job state only moves forward and progress never
moves back (:mod:`.store`).

* ``lstmdet.train``: runs the trainer into ``out``; progress (epoch, step, loss, metric) goes to the
  job record; ``last.pt`` is written every epoch. A redelivered job resumes from ``last.pt``. At
  the soft time limit the trainer checkpoints mid-epoch and the task re-queues itself to go on.
* ``lstmdet.detect``: plans the shards of the folder (:mod:`lstmdet.engine.shards`) and queues one
  ``lstmdet.detect_shard`` task per shard not yet done; the task that finishes the last shard
  queues ``lstmdet.detect_merge`` (once per job, however often that shard is delivered), which
  writes the final files (one merge at a time; a late duplicate changes nothing).
* ``lstmdet.eval``: scores a checkpoint; metrics go to the job record (and to ``out`` if given).
* ``lstmdet.ping``: does nothing; measures queue latency.

Cancel: the job's flag is checked between batches (detect) or steps (train); the job ends as
``cancelled`` and writes no final file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from celery import Celery, Task

from lstmdet.errors import Cancelled, LstmdetError
from lstmdet.workers.cache import ModelCache
from lstmdet.workers.leases import LeaseLost, Leases, open_leases
from lstmdet.workers.settings import Settings
from lstmdet.workers.specs import validate_spec
from lstmdet.workers.store import FINAL, JobStore

log = logging.getLogger("lstmdet.workers")

#: Models loaded in this worker process, reused across tasks.
MODELS = ModelCache()
#: Marker a train job leaves in its output folder: which job owns the run there.
JOB_MARKER = ".lstmdet-job"
#: Seconds before a merge that found another merge of its job running looks again.
MERGE_RECHECK_S = 10
_stores: dict[str, JobStore] = {}
_leases: dict[str, Leases] = {}


def _settings(task: Task) -> Settings:
    return task.app.conf.lstmdet_settings


def job_store(settings: Settings) -> JobStore:
    """This process's job store; worker commands retry through a Redis restart (about a minute)."""
    if settings.result_url not in _stores:
        _stores[settings.result_url] = JobStore(settings.result_url, expires=settings.result_expires, retries=40)
    return _stores[settings.result_url]


def lease_book(settings: Settings) -> Leases:
    """This process's lease book (the broker's Redis), retrying through a Redis restart."""
    if settings.broker_url not in _leases:
        _leases[settings.broker_url] = open_leases(settings)
    return _leases[settings.broker_url]


class _Delivery:
    """What a task learned on arrival: the store, the checked spec, or why it should not run."""

    def __init__(self, task: Task, job_id: str, kind: str, spec: dict[str, Any]) -> None:
        settings = _settings(task)
        self.store = store = job_store(settings)
        self.task, self.job_id, self.spec, self.run, self.queue = task, job_id, spec, False, ""
        deliveries = store.count_delivery(f"{task.request.id}:{task.request.retries}")
        failovers = lease_book(settings).failovers(task.request.id, task.request.retries) if settings.leases else 0
        count = deliveries - failovers
        self.guard = _Guard(task, store, job_id)
        record = store.get(job_id)
        if record is None:
            log.warning("task %s for unknown or expired job %s: dropped", task.name, job_id)
            return
        if record["state"] in FINAL:
            log.info("%s of job %s: the job already %s; nothing to do", task.name, job_id, record["state"])
            return
        if count > settings.max_deliveries:
            store.finish(job_id, "failed", error=(
                f"{task.name} was delivered {count} times without finishing (its worker died each time, e.g. out "
                f"of memory); given up after LSTMDET_MAX_DELIVERIES={settings.max_deliveries}"))  # fmt: skip
            return
        if record["cancel"]:
            store.finish(job_id, "cancelled", error="cancelled")
            return
        try:
            self.spec = validate_spec(kind, spec, settings.data_roots)
        except LstmdetError as exc:
            store.finish(job_id, "failed", error=f"refused by the worker: {exc}")
            return
        store.start(job_id, record)
        self.queue = record["queue"]
        self.run = True


class _Guard:
    """Asked between batches or steps (at most every ``every`` seconds): should this delivery stop?

    Returns True once the job is cancelled (``reason`` ``"cancel"``) or the worker drains
    (``"drain"``); raises :class:`~lstmdet.workers.leases.LeaseLost` when the delivery no longer
    holds its message, so that nothing more happens here.
    """

    def __init__(self, task: Task, store: JobStore, job_id: str, every: float = 0.5) -> None:
        settings = _settings(task)
        self.leases = lease_book(settings) if settings.leases else None
        self.store, self.job_id, self.every = store, job_id, every
        self.tag = (getattr(task.request, "properties", None) or {}).get("delivery_tag")
        self.hostname = task.request.hostname
        self.name = task.name
        self.reason: str | None = None
        self._at = -every

    def fence(self) -> None:
        """Raise :class:`LeaseLost` unless this delivery still holds its message (before a write)."""
        if self.leases is not None and not self.leases.holds(self.tag):
            raise LeaseLost(f"{self.name} of job {self.job_id}: the lease was lost (the task runs elsewhere)")

    def __call__(self) -> bool:
        if self.reason is not None:
            return True
        now = time.monotonic()
        if now - self._at < self.every:
            return False
        self._at = now
        self.fence()
        if self.store.cancelled(self.job_id):
            self.reason = "cancel"
        elif self.leases is not None and self.leases.draining(self.hostname):
            self.reason = "drain"
        return self.reason is not None


@contextlib.contextmanager
def _job_errors(store: JobStore, job_id: str, task: Task) -> Iterator[None]:
    """Turn what a task raises into the job's end state (Celery's own retry passes through)."""
    from celery.exceptions import Retry, SoftTimeLimitExceeded

    try:
        yield
    except Retry:
        raise
    except LeaseLost as exc:
        log.warning("job %s: %s; stopped without further effects", job_id, exc)
    except Cancelled:
        store.finish(job_id, "cancelled", error="cancelled")
    except SoftTimeLimitExceeded:
        limit = _settings(task).soft_time_limit
        store.finish(job_id, "failed", error=(
            f"{task.name} ran past its soft time limit ({limit} s); raise LSTMDET_SOFT_TIME_LIMIT (with "
            "LSTMDET_TIME_LIMIT and LSTMDET_VISIBILITY_TIMEOUT) or use smaller shards"))  # fmt: skip
    except LstmdetError as exc:
        store.finish(job_id, "failed", error=str(exc))
    except Exception as exc:
        log.error("job %s: %s failed:\n%s", job_id, task.name, traceback.format_exc())
        store.finish(job_id, "failed", error=f"{type(exc).__name__}: {exc} (traceback in the worker log)")


class _SoftLimit:
    """Turns the soft-time-limit signal into a flag the trainer checks between steps.

    Celery delivers the soft limit as SIGUSR1 to the pool process and raises an exception wherever
    the task happens to be; a train task instead stops at the next step boundary, where a
    checkpoint is consistent.
    """

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> _SoftLimit:
        if hasattr(signal, "SIGUSR1"):
            with contextlib.suppress(ValueError):  # not the main thread: keep Celery's handler
                self._previous = signal.signal(signal.SIGUSR1, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        self.raised = True

    def __exit__(self, *_: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)


def job_task(kind: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Make ``fn(task, job, *extra)`` a task body ``(task, job_id, spec, *extra)`` of a ``kind`` job.

    The body runs only when :class:`_Delivery` lets it (counted, not over, not cancelled, paths
    checked), and what it raises ends the job (:func:`_job_errors`).
    """

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def run(task: Task, job_id: str, spec: dict[str, Any], *extra: Any) -> None:
            job = _Delivery(task, job_id, kind, spec)
            if job.run:
                with _job_errors(job.store, job_id, task):
                    fn(task, job, *extra)

        return run

    return wrap


def _train_out_ready(out: Path, job_id: str, resume: bool) -> bool:
    """Claim ``out`` for the job; returns whether to resume (a redelivered job, or ``resume``)."""
    marker = out / JOB_MARKER
    owner = marker.read_text(encoding="utf-8").strip() if marker.is_file() else None
    if owner not in (None, job_id) and not resume:
        raise LstmdetError(f"{out} holds the run of job {owner}; choose another --out, or submit with --resume")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(job_id + "\n", encoding="utf-8")
    return (out / "last.pt").exists() and (resume or owner == job_id)


@job_task("train")
def train_task(task: Task, job: _Delivery) -> None:
    """Train ``spec["config"]`` into ``spec["out"]`` (see the module docstring)."""
    store, spec, job_id = job.store, job.spec, job.job_id
    with _SoftLimit() as soft:
        from lstmdet.engine.train import Trainer

        out = Path(spec["out"])
        guard = job.guard
        trainer = Trainer(spec["config"], out, resume=_train_out_ready(out, job_id, spec["resume"]))
        last = {"at": 0.0}

        def progress(event: dict[str, Any]) -> None:
            now = time.monotonic()
            if event["phase"] == "epoch" or now - last["at"] >= 1.0:
                last["at"] = now
                order = event["epoch"] * 10_000_000 + event["step"]
                store.progress(job_id, {k: v for k, v in event.items() if k != "phase"}, order)

        result = trainer.fit(should_stop=lambda: guard() or soft.raised, on_progress=progress, fence=guard.fence)
        if result.get("stopped"):
            if guard.reason == "cancel":
                raise Cancelled("cancelled")
            why = "its worker is stopping" if guard.reason == "drain" else "soft time limit"
            log.warning("job %s: %s at epoch %s step %s; checkpointed, continuing in a new task", job_id, why,
                        result["epoch"], result["step"])  # fmt: skip
            raise task.retry(countdown=0, max_retries=None)
        metrics = {k: v for k, v in result.get("metrics", {}).items() if isinstance(v, (int, float))}
        # continued: how often the job checkpointed at the soft time limit and went on in a new task
        result = {**result, "metrics": metrics, "out": str(out), "continued": task.request.retries}
        store.finish(job_id, "succeeded", result=result)


@job_task("eval")
def eval_task(task: Task, job: _Delivery) -> None:
    """Score ``spec["weights"]``; metrics to the job record and to ``spec["out"]`` when given."""
    from lstmdet.engine.evaluate import evaluate_checkpoint
    from lstmdet.fileio import atomic_write_json

    spec = job.spec
    metrics = evaluate_checkpoint(spec["weights"], data=spec["data"], batch_size=spec["batch_size"],
                                  device=spec["device"])  # fmt: skip
    job.guard.fence()
    if spec["out"]:
        Path(spec["out"]).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(spec["out"]), metrics)
    headline = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    job.store.finish(job.job_id, "succeeded", result={"metrics": headline, "out": spec["out"]})


def _clear_stale_plan(store: JobStore, out: Path) -> None:
    """Remove the shard folder a cancelled or failed job left in ``out``, so a new job can use it."""
    from lstmdet.engine.shards import load_plan, shard_folder

    plan = load_plan(out)
    if plan is not None:
        owner = store.get(plan.job)
        if owner is None or owner["state"] in ("failed", "cancelled"):
            shutil.rmtree(shard_folder(out), ignore_errors=True)


def _shards_progress(job: _Delivery, plan: Any, done: int) -> None:
    """Record ``done`` of the plan's shards; when all are done, queue the merge (once per job).

    Every task that sees all shards done (the last shard, a redelivery of it, a duplicate of
    another shard, a redelivered first task) gets here; only the one that wins the job's merge
    claim queues the merge (:meth:`~lstmdet.workers.store.JobStore.claim_merge`).
    """
    job_id = job.job_id
    progress = {"shards_done": done, "shards": plan.count, "images": len(plan.names)}
    if plan.video_files:
        progress["videos"] = len(plan.video_files)
    job.store.progress(job_id, progress, done)
    if done >= plan.count and job.store.claim_merge(job_id, job.task.request.id):
        job.task.app.send_task("lstmdet.detect_merge", args=[job_id, job.spec], queue=job.queue)
        job.store.merge_queued(job_id)


@job_task("detect")
def detect_task(task: Task, job: _Delivery) -> None:
    """Plan the shards of a folder and queue those not done yet."""
    from lstmdet.engine.detect_options import DetectOptions
    from lstmdet.engine.shards import plan_shards, shards_done
    from lstmdet.engine.video_chunks import DEFAULT_CHUNK_FRAMES, DEFAULT_WARMUP_FRAMES

    spec, out = job.spec, Path(job.spec["out"])
    _clear_stale_plan(job.store, out)
    opts = DetectOptions.from_json(spec["options"])
    plan = plan_shards(spec["src"], out, MODELS.get(spec["weights"], opts.device), opts,
                       shard_size=spec["shard_size"], chunk_frames=spec.get("chunk_frames") or DEFAULT_CHUNK_FRAMES,
                       warmup_frames=spec.get("warmup_frames", DEFAULT_WARMUP_FRAMES), job=job.job_id)  # fmt: skip
    done = shards_done(out, plan)
    count = 0
    for index in done:
        count = job.store.shard_done(job.job_id, index)
    for index in sorted(set(range(plan.count)) - set(done)):
        task.app.send_task("lstmdet.detect_shard", args=[job.job_id, spec, index], queue=job.queue)
    _shards_progress(job, plan, count)


@job_task("detect")
def detect_shard_task(task: Task, job: _Delivery, index: int) -> None:
    """Detect one shard (never again once done); the last shard queues the merge."""
    from lstmdet.engine.detect_options import DetectOptions
    from lstmdet.engine.shards import load_plan, run_shard

    spec, out = job.spec, Path(job.spec["out"])
    plan = load_plan(out)
    if plan is None or plan.job != job.job_id:
        raise LstmdetError(f"{out} holds no shard plan of job {job.job_id} (was the folder removed or reused?)")
    device = DetectOptions.from_json(spec["options"]).device
    try:
        run_shard(out, plan, index, MODELS.get(spec["weights"], device), should_stop=job.guard)
    except Cancelled:
        if job.guard.reason == "drain":
            log.warning("job %s: shard %s stopped as its worker is stopping; back on the queue", job.job_id, index)
            raise task.retry(countdown=0, max_retries=None) from None
        raise
    job.guard.fence()
    _shards_progress(job, plan, job.store.shard_done(job.job_id, index))


@job_task("detect")
def detect_merge_task(task: Task, job: _Delivery) -> None:
    """Write the final files of a detect job from its shards and end the job; a duplicate changes nothing.

    One merge at a time writes a job's folder (the job's merge lock). A delivery that finds the
    lock held leaves the files to the holder and looks again in :data:`MERGE_RECHECK_S` seconds
    (in case the holder's process dies); one that finds the job already ended does nothing.
    """
    from lstmdet.engine import shards

    store, job_id, out = job.store, job.job_id, job.spec["out"]
    with store.merge_lock(job_id) as mine:
        if not mine:
            log.info("job %s: another merge is running; looking again in %s s", job_id, MERGE_RECHECK_S)
            task.app.send_task("lstmdet.detect_merge", args=[job_id, job.spec], queue=job.queue,
                               countdown=MERGE_RECHECK_S)  # fmt: skip
            return
        record = store.get(job_id)
        if record is None or record["state"] in FINAL:
            return  # an earlier merge ended the job (or it was cancelled meanwhile): its files stand
        job.guard.fence()
        summary = shards.merge_shards(out)
        store.finish(job_id, "succeeded", result={**summary, "out": out})


def ping_task(task: Task, sent: float | None = None) -> dict[str, Any]:
    """Nothing: returns when it started and where (queue latency measurements)."""
    return {"started": time.time(), "sent": sent, "pid": os.getpid(), "hostname": task.request.hostname}


TASKS: dict[str, Callable[..., Any]] = {
    "lstmdet.train": train_task,
    "lstmdet.eval": eval_task,
    "lstmdet.detect": detect_task,
    "lstmdet.detect_shard": detect_shard_task,
    "lstmdet.detect_merge": detect_merge_task,
    "lstmdet.ping": ping_task,
}


def register_tasks(app: Celery) -> None:
    """Register the job tasks on ``app`` (bound: each function receives the task first).

    ``max_retries=None``: a train job goes on in a new task (a retry) each time it reaches the soft
    time limit, as often as it needs; Celery's default would fail it at the fourth piece
    (``task.retry(max_retries=None)`` means "the task's default", 3, not "no limit").
    """
    for name, fn in TASKS.items():
        app.task(name=name, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)(fn)
