"""``lstmdet submit`` and ``lstmdet jobs`` against a real ``redis-server`` with no worker: what a user reads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from helpers import RedisServer

from lstmdet.cli.main import main

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def roots(server: RedisServer, tmp_path, monkeypatch):
    """Empty broker and job databases; ``tmp_path`` (holding an empty ``in/``) is the data root."""
    import redis

    for db in (0, 1):
        client = redis.Redis.from_url(server.url(db))
        client.flushdb()
        client.close()
    monkeypatch.setenv("LSTMDET_BROKER_URL", server.url(0))
    monkeypatch.setenv("LSTMDET_RESULT_URL", server.url(1))
    monkeypatch.setenv("LSTMDET_DATA_ROOTS", str(tmp_path))
    (tmp_path / "in").mkdir()
    return tmp_path


def test_jobs_list_says_when_there_are_no_jobs(roots, capsys):
    assert main(["jobs", "list"]) == 0
    assert capsys.readouterr().out == "no jobs (queue one with `lstmdet submit`)\n"


def test_submit_prints_the_id_alone_then_the_next_step_and_the_missing_worker(roots, capsys):
    assert main(["submit", "detect", str(roots / "in"), "--out", str(roots / "out"), "--queue", "cpu"]) == 0
    out, err = capsys.readouterr()
    job = out.splitlines()[0]
    assert out == f"{job}\n" and str(uuid.UUID(job)) == job  # the id alone: scripts read it
    assert f"follow it: `lstmdet jobs status {job}` or `lstmdet jobs wait {job}`" in err
    hint = f"job {job} is queued, but no worker is listening on queue 'cpu': start one with "
    hint += "`lstmdet worker --queues cpu`"
    assert hint in err

    assert main(["jobs", "status", job]) == 0
    out, err = capsys.readouterr()
    assert f"job {job}: detect on queue cpu: queued" in out and hint in err
    assert main(["jobs", "wait", job, "--timeout", "0.3"]) == 2
    err = capsys.readouterr().err
    assert hint in err and "still queued" in err

    assert main(["jobs", "cancel", job]) == 0
    assert main(["jobs", "status", job]) == 0
    assert "no worker" not in capsys.readouterr().err  # an ended job needs no worker


def test_a_gpu_job_without_a_gpu_worker_names_the_gpu_command(roots, capsys):
    assert main(["submit", "detect", str(roots / "in"), "--out", str(roots / "out"), "--queue", "gpu"]) == 0
    err = capsys.readouterr().err
    assert "no worker is listening on queue 'gpu': start one with `lstmdet worker --gpus 0`" in err


def test_jobs_list_pages_and_filters(roots, capsys):
    jobs = []
    for _ in range(3):
        assert (
            main(["submit", "detect", str(roots / "in"), "--out", str(roots / f"out{len(jobs)}"), "--queue", "cpu"])
            == 0
        )
        jobs.append(capsys.readouterr().out.split()[0])
    assert main(["jobs", "cancel", jobs[0]]) == 0
    capsys.readouterr()
    assert main(["jobs", "list", "--limit", "1", "--offset", "1"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(jobs[1])
    assert main(["jobs", "list", "--state", "cancelled", "--kind", "detect"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(jobs[0]) and "cancelled" in line
    assert main(["jobs", "list", "--kind", "train"]) == 0
    assert capsys.readouterr().out == "no jobs match\n"


def test_workers_and_job_status_show_who_holds_a_task_and_the_last_heartbeat(roots, capsys):
    from lstmdet.workers.leases import Holding, open_leases
    from lstmdet.workers.settings import Settings

    assert main(["workers"]) == 0
    assert capsys.readouterr().out == "no live workers (start one with `lstmdet worker`)\n"
    assert main(["submit", "detect", str(roots / "in"), "--out", str(roots / "out"), "--queue", "cpu"]) == 0
    job = capsys.readouterr().out.split()[0]
    leases = open_leases(Settings.from_env(), retries=0)  # what a worker's heartbeat writes
    worker = {"hostname": "lstmdet-cpu.7@box", "pid": 7, "queues": ["cpu"], "started": 0.0, "draining": False}
    leases.renew(worker, [Holding("tag-1", "task-1", "lstmdet.detect_shard", job, "active")])
    assert main(["workers"]) == 0
    out = capsys.readouterr().out
    assert "lstmdet-cpu.7@box  queues cpu  up since" in out and "heartbeat 0 s ago  tasks 1" in out
    assert f"active    lstmdet.detect_shard  task-1 job {job}" in out
    assert main(["jobs", "status", job]) == 0
    out = capsys.readouterr().out
    assert "task lstmdet.detect_shard task-1 (active) on worker lstmdet-cpu.7@box, lease renewed 0 s ago" in out
