"""Real parts for the queue tests: ``lstmdet worker`` processes and TLS certificates.

Nothing is faked: the server is the ``redis-server`` binary (:class:`helpers.RedisServer`), the
workers are the ``lstmdet worker`` console script, and faults are real signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from helpers import LSTMDET_BIN, RedisServer, assert_same_outputs, wait_for

from lstmdet.workers.client import JobClient
from lstmdet.workers.settings import Settings

#: The final files of a detect job.
FINAL = ("detections.jsonl", "images.json", "coco_results.json", "options.json")
#: Detect options of the queued runs: no loader processes, small batches (deterministic).
DETECT = {"workers": 0, "batch_size": 2}
#: ``Queue(..., soft=1)`` and friends: the variable each limit sets.
VARIABLES = {
    "soft": "LSTMDET_SOFT_TIME_LIMIT",
    "hard": "LSTMDET_TIME_LIMIT",
    "visibility": "LSTMDET_VISIBILITY_TIMEOUT",
    "lease": "LSTMDET_LEASE_SECONDS",
    "heartbeat": "LSTMDET_HEARTBEAT_SECONDS",
}


def make_certificates(folder: Path) -> Path:
    """A private CA and a server certificate for 127.0.0.1 (``ca.crt``, ``server.crt``, ``server.key``)."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lstmdet-test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    return folder


class Worker:
    """An ``lstmdet worker`` process group (supervisor, Celery main process, pool processes).

    Args:
        env: The full environment (broker URL, data roots, limits).
        log: File that receives the worker's output.
        args: Extra ``lstmdet worker`` arguments.
    """

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._file = log.open("ab")
        self.process = subprocess.Popen(
            [str(LSTMDET_BIN), "worker", "--queues", "cpu", "--loglevel", "INFO", *args],
            env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    @property
    def hostname(self) -> str:
        """The Celery node name ``lstmdet worker`` gives its CPU worker (leases and ``lstmdet workers`` use it)."""
        return f"lstmdet-cpu.{self.process.pid}@{socket.gethostname()}"

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to every process of the worker (SIGSTOP: a frozen host; SIGCONT: it wakes)."""
        os.killpg(self.process.pid, signum)

    def terminate(self, timeout: float = 120) -> float:
        """SIGTERM to the supervisor (``docker stop``, a Kubernetes eviction); returns the seconds until it exited."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        return time.monotonic() - started

    def wait_ready(self, timeout: float = 90) -> Worker:
        """Wait for Celery's ``ready.`` line."""
        wait_for(lambda: b"ready." in self.log.read_bytes() or self.process.poll() is not None, timeout, "worker ready")
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        return self

    def kill(self) -> None:
        """SIGKILL every process of the worker at once (a crashed host): nothing gets acknowledged."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._file.close()

    def stop(self) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL whatever is left."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._file.close()


class Queue:
    """A server, the environment pointing at it, a client and the workers started (stopped at the end).

    Workers run at default settings; ``limits`` (``soft``, ``hard``, ``visibility``, ``lease``,
    ``heartbeat``, seconds) override them for tests about those settings.
    """

    def __init__(
        self, folder: Path, *, password: str | None = None, pythonpath: Path | None = None, data: Path | None = None,
        tls: Path | None = None, **limits: int,
    ) -> None:  # fmt: skip
        self.folder = folder
        self.server = RedisServer(folder / "redis", password=password, tls=tls).start()
        self.env = {
            **os.environ,
            "LSTMDET_BROKER_URL": self.server.url(0),
            "LSTMDET_RESULT_URL": self.server.url(1),
            "LSTMDET_DATA_ROOTS": ":".join(str(p) for p in (folder, data) if p is not None),
            **{VARIABLES[name]: str(value) for name, value in limits.items()},
            # Floating-point sums depend on the thread count: run like the in-process reference.
            "LSTMDET_TORCH_THREADS": "1",
        }
        if pythonpath is not None:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
        self.client = JobClient(Settings.from_env(self.env))
        self.workers: list[Worker] = []

    def worker(self, *args: str, ready: bool = True, machine: str | None = None) -> Worker:
        """Start ``lstmdet worker``; ``machine`` (``LSTMDET_MACHINE_ID``) stands for a separate host."""
        env = self.env if machine is None else {**self.env, "LSTMDET_MACHINE_ID": machine}
        worker = Worker(env, self.folder / f"worker{len(self.workers)}.log", *args)
        self.workers.append(worker)
        return worker.wait_ready() if ready else worker

    def progress(self, job: str) -> int:
        return (self.client.status(job).get("progress") or {}).get("shards_done", 0)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()


def assert_same_files(out: Path, reference: Path) -> None:
    assert_same_outputs(out, reference)
    files = [json.loads(line)["file"] for line in (out / "detections.jsonl").read_text().splitlines()]
    summary = json.loads((reference / "summary.json").read_text())
    assert len(files) == len(set(files)) == summary["images"]  # every image exactly once
    assert sorted(p.name for p in out.iterdir()) == sorted([*FINAL, "summary.json"])
