"""``lstmdet worker``: the Celery worker processes planned, and their supervision."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from lstmdet.errors import LstmdetError
from lstmdet.workers.launcher import WorkerProcess, parse_gpus, plan_workers, run_workers

# --- launcher -------------------------------------------------------------------------------------------------------


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_plan_gpu_workers():
    plan = plan_workers(queues=["gpu"], gpus=["0", "1"], cores=8)
    assert len(plan) == 2
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in plan] == ["0", "1"]
    assert all(w.env["LSTMDET_TORCH_THREADS"] == "4" for w in plan)
    for w in plan:
        assert _after(w.argv, "--concurrency") == "1"
        assert _after(w.argv, "--prefetch-multiplier") == "1"
        assert _after(w.argv, "--queues") == "gpu"
        assert "lstmdet.workers.app:app" in w.argv
    hostnames = [_after(w.argv, "--hostname") for w in plan]
    assert len(set(hostnames)) == 2


def test_plan_cpu_worker():
    plan = plan_workers(queues=["cpu"], concurrency=2, cores=2)
    assert len(plan) == 1
    (w,) = plan
    assert _after(w.argv, "--concurrency") == "2"
    assert _after(w.argv, "--prefetch-multiplier") == "1"
    assert w.env == {"CUDA_VISIBLE_DEVICES": "", "LSTMDET_TORCH_THREADS": "1"}
    assert _after(w.argv, "--queues") == "cpu"


def test_plan_threads_split_between_processes():
    assert plan_workers(queues=["cpu"], concurrency=3, cores=8)[0].env["LSTMDET_TORCH_THREADS"] == "2"
    assert _after(plan_workers(queues=["cpu", "gpu"], gpus=["0"], cores=8)[0].argv, "--queues") == "cpu,gpu"
    assert plan_workers(queues=["cpu"], concurrency=4, cores=2)[0].env["LSTMDET_TORCH_THREADS"] == "1"
    assert plan_workers(queues=["gpu"], gpus=["0", "1", "2"], cores=2)[0].env["LSTMDET_TORCH_THREADS"] == "1"
    assert plan_workers(queues=["gpu"], gpus=["3"], concurrency=1, cores=4)[0].env["CUDA_VISIBLE_DEVICES"] == "3"


def test_plan_names_are_unique_per_gpu_and_per_launch():
    plan = plan_workers(queues=["gpu"], gpus=["0", "1"], name="box", cores=2)
    names = [_after(w.argv, "--hostname") for w in plan]
    assert names == [f"box-gpu{g}.{os.getpid()}@{socket.gethostname()}" for g in ("0", "1")]
    (cpu,) = plan_workers(queues=["cpu"], cores=2)
    assert _after(cpu.argv, "--hostname") == f"lstmdet-cpu.{os.getpid()}@{socket.gethostname()}"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"queues": ["tpu"]},
        {"queues": ["gpu", "fast"]},
        {"queues": []},
        {"queues": ["cpu"], "concurrency": 0},
        {"queues": ["cpu"], "concurrency": -2},
        {"queues": ["gpu"], "gpus": ["0"], "concurrency": 2},
        {"queues": ["cpu", "gpu"]},  # the gpu queue without GPUs: its jobs would fail on this worker
    ],
)
def test_plan_refused(kwargs):
    with pytest.raises(LstmdetError):
        plan_workers(cores=2, **kwargs)


def test_parse_gpus():
    assert parse_gpus("0,1") == ["0", "1"]
    assert parse_gpus(" 2 , 3 ") == ["2", "3"]
    assert parse_gpus(None) == parse_gpus("") == []
    for bad in ("0,x", "0,0", "cuda:0", "-1"):
        with pytest.raises(LstmdetError, match="--gpus"):
            parse_gpus(bad)


def test_run_workers_stops_all_when_a_later_worker_dies():
    """The second worker exits with 3 while the first runs: the first is stopped and 3 returned, promptly."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        start = time.monotonic()
        status = run_workers([WorkerProcess(["sleep", "3"], {}), WorkerProcess(["sh", "-c", "exit 3"], {})])
        elapsed = time.monotonic() - start
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert status == 3
    assert elapsed < 2.5, f"the supervisor noticed the dead worker only after {elapsed:.1f}s"


def test_run_workers_passes_env():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = run_workers([WorkerProcess(["sh", "-c", 'exit "$LSTMDET_TEST_CODE"'], {"LSTMDET_TEST_CODE": "5"})])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert status == 5
