"""The Celery app: configured from the settings, the job tasks registered, pool processes prepared."""

from __future__ import annotations

import subprocess
import sys

import torch

from lstmdet.workers.app import _init_process, create_app
from lstmdet.workers.settings import Settings
from lstmdet.workers.tasks import TASKS


def test_the_app_is_configured_from_the_settings_with_every_job_task():
    settings = Settings(broker_url="redis://broker:1/0", result_url="redis://records:2/3", default_queue="gpu")
    app = create_app(settings)
    assert app.conf.lstmdet_settings is settings
    assert (app.conf.broker_url, app.conf.result_backend) == ("redis://broker:1/0", "redis://records:2/3")
    assert app.conf.task_default_queue == "gpu"
    for name in TASKS:
        task = app.tasks[name]
        assert (task.acks_late, task.reject_on_worker_lost) == (True, True), name
        assert task.max_retries is None, name  # a train job may go on in new tasks any number of times
    assert sorted(n for n in app.tasks if n.startswith("lstmdet.")) == sorted(TASKS)


def test_a_pool_process_takes_its_torch_threads_from_the_environment(monkeypatch):
    monkeypatch.setenv("LSTMDET_TORCH_THREADS", "1")
    torch.set_num_threads(2)
    _init_process()
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("LSTMDET_TORCH_THREADS", "0")  # at least one thread
    torch.set_num_threads(2)
    _init_process()
    assert torch.get_num_threads() == 1


#: Run in a fresh interpreter: the app module loads no torch; the worker's main-process hook does.
PRELOAD = """
import sys
from celery.signals import worker_init
import lstmdet.workers.app as app

before = "torch" in sys.modules
worker_init.send(sender=None)  # what Celery sends in the worker's main process before the pool starts
print(before, "torch" in sys.modules, "torchvision" in sys.modules, "lstmdet.engine.detect" in sys.modules)
"""


def test_the_worker_main_process_preloads_torch_but_importing_the_app_does_not():
    done = subprocess.run([sys.executable, "-c", PRELOAD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "False"]  # no model code in the main process
