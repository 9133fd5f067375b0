"""The job client: submit jobs, follow them, cancel them (``lstmdet submit`` and ``lstmdet jobs``).

```python
from lstmdet.workers.client import JobClient

client = JobClient()                                   # settings from LSTMDET_* variables
job = client.submit_detect("/data/photos", "/data/out/photos", shard_size=256)
client.wait(job)["state"]                              # 'succeeded'
```

A job id is printed (returned) before anything else happens, so a caller can always follow or
cancel what it started. Submitting checks the spec and its paths against the data roots first, so
a bad job never reaches the queue; a worker checks again before it runs.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lstmdet.errors import LstmdetError
from lstmdet.workers.settings import QUEUES, Settings
from lstmdet.workers.specs import DEFAULT_SHARD_SIZE, validate_spec
from lstmdet.workers.store import FINAL, JobStore, explain

#: Seconds :meth:`JobClient.listening` waits for workers to answer.
LISTEN_TIMEOUT = 1.0


class JobTimeout(LstmdetError, TimeoutError):
    """A job did not end within the time its caller was willing to wait."""


#: Task that starts each kind of job.
FIRST_TASK = {"train": "lstmdet.train", "detect": "lstmdet.detect", "eval": "lstmdet.eval"}


def _read_config(config: dict[str, Any] | str | Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The raw config (a YAML file read, or a dict copied) with ``overrides`` applied; validated by the spec check.

    Only :mod:`lstmdet.config` (PyYAML) is used: submitting a train job loads neither torch nor the
    training engine.
    """
    from lstmdet.config import read_yaml, set_value

    raw = read_yaml(Path(config)) if isinstance(config, (str, Path)) else copy.deepcopy(dict(config))
    for assignment in overrides:
        set_value(raw, assignment)
    return raw


class JobClient:
    """Submits and follows jobs.

    Args:
        settings: Broker, result store and data roots (default: from the environment).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.store = JobStore(self.settings.result_url, expires=self.settings.result_expires, retries=2)
        self._app: Any = None
        self._leases: Any = None

    @property
    def app(self) -> Any:
        """The Celery app used to publish (created on first use)."""
        if self._app is None:
            from lstmdet.workers.app import create_app

            self._app = create_app(self.settings)
        return self._app

    def _queue(self, kind: str, spec: dict[str, Any], queue: str | None) -> str:
        if queue is not None:
            if queue not in QUEUES:
                raise LstmdetError(f"unknown queue {queue!r}; use one of {', '.join(QUEUES)}")
            return queue
        if kind == "train":
            device = spec["config"]["train"]["device"]
        elif kind == "detect":
            device = spec["options"].get("device")
        else:
            device = spec.get("device")
        if isinstance(device, str) and device.startswith("cuda"):
            return "gpu"
        if device == "cpu":
            return "cpu"
        return self.settings.default_queue

    def submit(self, kind: str, spec: dict[str, Any], *, queue: str | None = None) -> str:
        """Check ``spec``, record the job and queue it; returns the job id.

        Args:
            kind: ``train``, ``detect`` or ``eval``.
            spec: The job spec (see :mod:`lstmdet.workers.specs`).
            queue: ``gpu`` or ``cpu``; default: ``gpu`` when the spec asks for a CUDA device,
                ``cpu`` when it asks for the CPU, else ``LSTMDET_DEFAULT_QUEUE``.

        Raises:
            LstmdetError: A bad spec, or a path outside the data roots.
            BrokerUnavailable: Redis cannot be reached (after a few seconds) or refused the password.
        """
        spec = validate_spec(kind, spec, self.settings.data_roots)
        queue = self._queue(kind, spec, queue)
        job_id = str(uuid.uuid4())
        self.store.create(job_id, kind, queue, spec)
        try:
            self.app.send_task(FIRST_TASK[kind], args=[job_id, spec], task_id=job_id, queue=queue)
        except Exception as exc:  # kombu's OperationalError and friends, after the bounded retries
            error = explain(exc, self.settings.broker_url)
            self.store.finish(job_id, "failed", error=f"could not be queued: {error}")
            raise error from None
        return job_id

    def submit_train(
        self,
        config: dict[str, Any] | str | Path,
        out: str | Path,
        *,
        overrides: Sequence[str] = (),
        resume: bool = False,
        queue: str | None = None,
    ) -> str:
        """Queue ``lstmdet train CONFIG --out OUT``; the config is read here and travels in the job.

        Args:
            config: A config dict, or the path of a YAML config file.
            out: The run folder.
            overrides: ``key.path=value`` assignments (``--set``), applied in order.
            resume: Continue the run in ``out``.
            queue: As for :meth:`submit`.

        Raises:
            LstmdetError: The file cannot be read, an override is malformed, or the config is invalid.
        """
        return self.submit("train", {"config": _read_config(config, overrides), "out": str(out), "resume": resume},
                           queue=queue)  # fmt: skip

    def submit_detect(
        self,
        src: str | Path,
        out: str | Path,
        weights: str | Path | None = None,
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        chunk_frames: int | None = None,
        warmup_frames: int | None = None,
        queue: str | None = None,
        **options: Any,
    ) -> str:
        """Queue ``lstmdet detect SRC --out OUT``; ``options`` as for :func:`lstmdet.detect`.

        Images run in shards of ``shard_size``, video files in chunks of ``chunk_frames`` processed
        frames, each after ``warmup_frames`` frames that warm a stateful model up (``None``: the
        defaults of :mod:`lstmdet.engine.video_chunks`, 256 and 16).
        """
        spec = {"src": str(src), "out": str(out), "weights": None if weights is None else str(weights),
                "options": options, "shard_size": shard_size, "chunk_frames": chunk_frames,
                "warmup_frames": warmup_frames}  # fmt: skip
        return self.submit("detect", spec, queue=queue)

    def submit_eval(
        self,
        weights: str | Path,
        *,
        data: dict[str, Any] | None = None,
        out: str | Path | None = None,
        batch_size: int = 16,
        device: str = "auto",
        queue: str | None = None,
    ) -> str:
        """Queue ``lstmdet eval --weights CKPT``."""
        spec = {"weights": str(weights), "data": data, "out": None if out is None else str(out),
                "batch_size": batch_size, "device": device}  # fmt: skip
        return self.submit("eval", spec, queue=queue)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's record: ``state``, ``progress``, ``result``, ``error``, times, spec.

        Raises:
            LstmdetError: Unknown (or expired) job id.
        """
        record = self.store.get(job_id)
        if record is None:
            raise LstmdetError(f"no job {job_id} (unknown, or expired); `lstmdet jobs list` shows the known jobs")
        return record

    def list(
        self, limit: int = 50, *, offset: int = 0, state: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """A page of jobs, newest first, optionally only those in ``state`` or of ``kind``."""
        return self.store.list(limit, offset=offset, state=state, kind=kind)

    @property
    def leases(self) -> Any:
        """The lease book on the broker (:class:`~lstmdet.workers.leases.Leases`), opened on first use."""
        if self._leases is None:
            from lstmdet.workers.leases import open_leases

            self._leases = open_leases(self.settings, retries=2)
        return self._leases

    def workers(self) -> list[dict[str, Any]]:
        """Live workers: ``{hostname, pid, queues, started, heartbeat, draining, tasks}``, newest heartbeat first.

        A worker is live while its heartbeat (every ``LSTMDET_HEARTBEAT_SECONDS``) renews its record;
        a worker that died drops out of the list one lease (``LSTMDET_LEASE_SECONDS``) later.
        """
        try:
            return self.leases.workers()
        except Exception as exc:
            raise explain(exc, self.settings.broker_url) from None

    def holders(self, job_id: str) -> list[dict[str, Any]]:
        """The job's tasks that live workers hold now: ``{worker, heartbeat, task_id, name, state, tag}``.

        ``heartbeat`` is when the worker last renewed the task's lease.
        """
        return [
            {
                "worker": w["hostname"],
                "heartbeat": w["heartbeat"],
                **{k: t[k] for k in ("task_id", "name", "state", "tag")},
            }
            for w in self.workers()
            for t in w.get("tasks", ())
            if t.get("job") == job_id
        ]

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 0.25) -> dict[str, Any]:
        """Block until the job ends; returns its record.

        Raises:
            JobTimeout: ``timeout`` seconds passed first (a ``TimeoutError`` and an ``LstmdetError``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.status(job_id)
            if record["state"] in FINAL:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(
                    f"job {job_id} is still {record['state']} after {timeout:g} s; wait longer (--timeout) or "
                    f"check it with `lstmdet jobs status {job_id}`"
                )
            time.sleep(poll)

    def listening(self, queue: str, *, timeout: float = LISTEN_TIMEOUT) -> bool | None:
        """Whether a live worker consumes ``queue``: asked over Celery's control channel.

        Every worker answers ``inspect().active_queues()`` from its main process, also while its
        pool processes are busy with long tasks. The call takes ``timeout`` seconds when any worker
        (or none) may still answer.

        Returns:
            True when some worker consumes ``queue``, False when none answered with it, None when
            the broker could not be asked.
        """
        try:
            replies = self.app.control.inspect(timeout=timeout).active_queues() or {}
        except Exception:  # kombu's OperationalError and friends: cannot tell
            return None
        return any(q.get("name") == queue for queues in replies.values() for q in (queues or ()))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask the job to stop; a queued job ends at once, a running one at its next batch or step."""
        return self.store.request_cancel(job_id)
