"""Real parts for the queue tests: ``lstmdet worker`` processes and TLS certificates.

Nothing is faked: the server is the ``redis-server`` binary (:class:`helpers.RedisServer`), the
workers are the ``lstmdet worker`` console script, and faults are real signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from helpers import LSTMDET_BIN, wait_for


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
