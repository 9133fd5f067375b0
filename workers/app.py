"""The Celery app: ``celery --app lstmdet.workers.app:app worker`` (what ``lstmdet worker`` runs).

The app is configured from the environment (:mod:`lstmdet.workers.settings`) when this module is
imported; importing it loads no torch (the job client uses it to publish). The worker's main
process stays light: it imports torch (:func:`_preload_torch`) but no model code and never touches
CUDA; each pool process imports the engine when it starts (:func:`_init_process`), sets its torch
threads from ``LSTMDET_TORCH_THREADS`` and then keeps its models cached between tasks.

The main process also keeps the leases of the tasks it holds (:mod:`lstmdet.workers.leases`): a
heartbeat thread starts when the worker is ready, marks the worker draining on SIGTERM (its tasks
then stop and go back to the queue) and stops once the pool has finished. The same thread now and
then looks for jobs whose every message is gone (:mod:`lstmdet.workers.reconcile`).
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import (
    task_received,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from lstmdet.workers.leases import LeaseKeeper, Leases, machine_id, open_leases
from lstmdet.workers.reconcile import Reconciler
from lstmdet.workers.settings import Settings, celery_config

#: The heartbeat of this worker's main process (None in pool processes and clients).
_keeper: LeaseKeeper | None = None


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` (default: from the environment) with the job tasks registered."""
    settings = settings or Settings.from_env()
    app = Celery("lstmdet", set_as_current=False)
    app.config_from_object(celery_config(settings))
    app.conf.lstmdet_settings = settings
    from lstmdet.workers.tasks import register_tasks

    register_tasks(app)
    return app


@worker_init.connect
def _preload_torch(**_: object) -> None:
    """In the worker's main process, before its pool starts: import torch, so pool processes fork with it loaded.

    A pool process that imported torch itself would take seconds to start on a busy machine, and
    Celery kills a pool process that does not report within ``worker_proc_alive_timeout`` (4 s),
    so a pool process replacing one that died (a poison job, out of memory) might never come up.
    Importing torch initialises no CUDA device.
    """
    import torch  # noqa: F401
    import torchvision  # noqa: F401


@worker_process_init.connect
def _init_process(**_: object) -> None:
    """In each pool process: torch threads per process, and the engine imported before the first task.

    Celery marks its pool processes daemonic, and Python forbids a daemonic process to start
    children; but a detect job decodes images in DataLoader processes while the model runs, as
    in-process ``detect`` does. The flag is cleared for this process: the loader processes watch
    their parent and exit when it dies, so none outlives a killed worker.
    """
    import multiprocessing

    import torch

    multiprocessing.current_process().daemon = False

    threads = os.environ.get("LSTMDET_TORCH_THREADS")
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    import lstmdet.engine.detect
    import lstmdet.engine.train  # noqa: F401


@worker_ready.connect
def _start_leases(sender: object = None, **_: object) -> None:
    """In the main process, once the worker consumes: start renewing leases and sweeping for lost tasks."""
    global _keeper
    consumer = sender
    settings = consumer.app.conf.lstmdet_settings
    if not settings.leases:
        return
    queues = sorted(q.name for q in consumer.task_consumer.queues)
    leases = open_leases(settings, machine=machine_id())
    reconciler = _reconciler(consumer.app, leases, consumer.hostname)
    _keeper = LeaseKeeper(leases, consumer.hostname, queues, reconciler=reconciler)
    _keeper.start()


def _reconciler(app: Celery, leases: Leases, hostname: str) -> Reconciler:
    """The job reconciler of this worker: looks every half lease, re-queues a job a lease after its last message."""
    from lstmdet.workers.tasks import job_store

    def send(name: str, args: list, queue: str, task_id: str, root_id: str) -> None:
        app.send_task(name, args=args, queue=queue, task_id=task_id, root_id=root_id)

    settings = app.conf.lstmdet_settings
    return Reconciler(leases.redis, job_store(settings), send, every=settings.lease_seconds / 2,
                      grace=settings.lease_seconds, name=hostname)  # fmt: skip


@task_received.connect
def _lease_now(**_: object) -> None:
    """A message arrived in the main process: renew leases now rather than at the next heartbeat."""
    if _keeper is not None:
        _keeper.wake()


@worker_shutting_down.connect
def _drain(**_: object) -> None:
    """SIGTERM or SIGINT in the main process: running tasks stop at their next batch or step and go back."""
    if _keeper is not None:
        _keeper.drain()


@worker_shutdown.connect
def _stop_leases(**_: object) -> None:
    """The pool has finished: stop the heartbeat and leave the worker registry."""
    if _keeper is not None:
        _keeper.stop()


app = create_app()
