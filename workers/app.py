"""The Celery app: ``celery --app lstmdet.workers.app:app worker`` (what ``lstmdet worker`` runs).

The app is configured from the environment (:mod:`lstmdet.workers.settings`) when this module is
imported; importing it loads no torch (the job client uses it to publish). The worker's main
process stays light: it imports torch (:func:`_preload_torch`) but no model code and never touches
CUDA; each pool process imports the engine when it starts (:func:`_init_process`), sets its torch
threads from ``LSTMDET_TORCH_THREADS`` and then keeps its models cached between tasks.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init, worker_process_init

from lstmdet.workers.settings import Settings, celery_config


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


app = create_app()
