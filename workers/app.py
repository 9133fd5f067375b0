"""The Celery app: ``celery --app lstmdet.workers.app:app worker`` (what ``lstmdet worker`` runs).

The app is configured from the environment (:mod:`lstmdet.workers.settings`) when this module is
imported. The worker's main process stays light: it imports no model code and never touches CUDA;
each pool process imports the engine when it starts (:func:`_init_process`), sets its torch
threads from ``LSTMDET_TORCH_THREADS`` and then keeps its models cached between tasks.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

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
