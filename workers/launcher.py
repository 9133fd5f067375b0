"""``lstmdet worker``: start Celery worker processes and supervise them.

* With ``--gpus 0,1``: one Celery worker per GPU, each started with ``CUDA_VISIBLE_DEVICES`` set
  to its GPU and one pool process, so CUDA is initialised only in that process (the supervisor
  and the Celery main processes never touch it).
* On CPU: one Celery worker with ``--concurrency N`` pool processes; each process runs torch with
  ``cores // N`` threads (``LSTMDET_TORCH_THREADS``, unless the environment sets it already), so N
  processes do not fight over the cores.

Each worker reserves one task at a time (prefetch 1) and acknowledges it when done. SIGTERM or
SIGINT to the supervisor is passed on to every worker (a warm shutdown: running tasks finish;
a task cut off is put back on the queue); if one worker exits, the others are stopped too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lstmdet.errors import LstmdetError
from lstmdet.workers.settings import QUEUES


@dataclass(frozen=True)
class WorkerProcess:
    """One Celery worker to start: its command line and the environment it adds."""

    argv: list[str]
    env: dict[str, str]


def parse_gpus(text: str | None) -> list[str]:
    """``"0,1"`` -> ``["0", "1"]``; ``None`` or ``""`` -> ``[]``."""
    if not text:
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise LstmdetError(f"--gpus {text!r}: give distinct GPU indices separated by commas, e.g. --gpus 0,1")
    return gpus


def plan_workers(
    *,
    queues: Sequence[str],
    gpus: Sequence[str] = (),
    concurrency: int | None = None,
    loglevel: str = "INFO",
    name: str | None = None,
    cores: int | None = None,
) -> list[WorkerProcess]:
    """The Celery workers ``lstmdet worker`` starts (see the module docstring).

    Args:
        queues: Queues to consume (``gpu``, ``cpu``).
        gpus: GPU indices; one worker each. Empty: a CPU worker.
        concurrency: CPU pool processes (default 1); with GPUs it must be 1 or unset.
        loglevel: Celery log level.
        name: Node name prefix (default ``lstmdet``); the GPU or ``cpu``, this process's id and
            the host name are appended (``lstmdet-cpu.4711@host``), so that two workers on one
            host never share a name: leases and ``lstmdet workers`` tell workers apart by it.
        cores: CPU cores to share between pool processes (default: the cores this process may use).
    """
    unknown = [q for q in queues if q not in QUEUES]
    if unknown or not queues:
        raise LstmdetError(f"--queues {','.join(queues)}: use one or more of {', '.join(QUEUES)}")
    if concurrency is not None and concurrency < 1:
        raise LstmdetError(f"--concurrency must be >= 1, got {concurrency}")
    if "gpu" in queues and not gpus:
        raise LstmdetError("a worker on the gpu queue needs GPUs: pass --gpus 0[,1...] (or --queues cpu)")
    if gpus and concurrency not in (None, 1):
        raise LstmdetError("with --gpus each GPU gets one worker process; leave --concurrency unset")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    host = socket.gethostname()
    prefix, pid = name or "lstmdet", os.getpid()
    base = [sys.executable, "-m", "celery", "--app", "lstmdet.workers.app:app", "worker", "--queues", ",".join(queues),
            "--prefetch-multiplier", "1", "--loglevel", loglevel, "--without-gossip", "--without-mingle",
            "-O", "fair"]  # fmt: skip
    if gpus:
        threads = str(max(1, cores // len(gpus)))
        return [
            WorkerProcess(
                [*base, "--concurrency", "1", "--hostname", f"{prefix}-gpu{gpu}.{pid}@{host}"],
                {"CUDA_VISIBLE_DEVICES": gpu, "LSTMDET_TORCH_THREADS": threads},
            )
            for gpu in gpus
        ]
    processes = concurrency or 1
    threads = str(max(1, cores // processes))
    return [
        WorkerProcess(
            [*base, "--concurrency", str(processes), "--hostname", f"{prefix}-cpu.{pid}@{host}"],
            {"CUDA_VISIBLE_DEVICES": "", "LSTMDET_TORCH_THREADS": threads},
        )
    ]


def run_workers(workers: Sequence[WorkerProcess]) -> int:
    """Start ``workers``, pass SIGTERM/SIGINT on to them, and wait; returns the first non-zero exit status."""
    children = []
    for w in workers:
        env = {**os.environ, **w.env}
        if os.environ.get("LSTMDET_TORCH_THREADS"):  # set by the user: it wins over the computed share
            env["LSTMDET_TORCH_THREADS"] = os.environ["LSTMDET_TORCH_THREADS"]
        children.append(subprocess.Popen(w.argv, env=env))
    stopping = {"signal": None}

    def forward(signum: int, _frame: object) -> None:
        stopping["signal"] = signum
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while any([child.poll() is None for child in children]):  # a list: poll every child each pass
        ended = [child.returncode for child in children if child.returncode is not None]
        if ended and stopping["signal"] is None:  # a worker ended on its own: stop the others
            status = next((code for code in ended if code), 1)
            forward(signal.SIGTERM, None)
        time.sleep(0.5)
    if stopping["signal"] is None or status:
        status = status or next((child.returncode for child in children if child.returncode), 0)
    return status
