"""Worker and client settings from the environment, and the Celery configuration they give.

Variables (see ``DESIGN.md``, Environment):

* ``LSTMDET_BROKER_URL``: the Redis broker (default ``redis://127.0.0.1:6379/0``). A password
  (``redis://:PASSWORD@host:6379/0``) and TLS (``rediss://...?ssl_cert_reqs=required``) go in the URL.
* ``LSTMDET_RESULT_URL``: where job records and task results live (default: the broker URL).
* ``LSTMDET_DATA_ROOTS``: colon-separated folders that jobs may read and write.
* ``LSTMDET_DEFAULT_QUEUE``: queue of jobs submitted without ``--queue`` (default ``cpu``).
* ``LSTMDET_SOFT_TIME_LIMIT`` / ``LSTMDET_TIME_LIMIT``: seconds a task may run before it is asked
  to stop (a train job checkpoints and continues in a new task) / is killed.
* ``LSTMDET_LEASE_SECONDS`` / ``LSTMDET_HEARTBEAT_SECONDS``: a task whose worker has not renewed
  its lease for this long goes back to the queue (default 30 s) / how often every worker renews
  the leases of the tasks it holds and sweeps for lost ones (default 5 s; at most a third of the
  lease). See :mod:`lstmdet.workers.leases`.
* ``LSTMDET_LEASES``: ``0`` turns leases off (no heartbeat, no sweep, no fencing: a lost worker's
  tasks then wait for the visibility timeout); only for measuring what leases cost.
* ``LSTMDET_VISIBILITY_TIMEOUT``: kombu's own backstop: seconds before Redis hands an unacknowledged
  task to another worker whatever its lease says; must exceed the hard time limit, or a running
  task would be handed out twice. Leases, not this, bring back the tasks of a lost worker.
* ``LSTMDET_MAX_DELIVERIES``: deliveries of one task before it is failed as a poison job.
* ``LSTMDET_RESULT_EXPIRES``: seconds job records and results are kept after a job ends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lstmdet.errors import LstmdetError

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
#: URL schemes of the broker and the result store: Redis, plain or over TLS.
URL_SCHEMES = ("redis", "rediss")
#: The two queues: jobs that want a GPU and jobs that run on CPU workers.
QUEUES = ("gpu", "cpu")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    user = credentials.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def check_redis_url(url: str, variable: str) -> str:
    """``url`` if it is a Redis URL (``redis://`` or ``rediss://``); else an error naming ``variable``.

    Raises:
        LstmdetError: Another scheme, or a URL that does not parse (e.g. a port that is not a number).
    """
    example = "e.g. redis://127.0.0.1:6379/0, with a password redis://:PASSWORD@HOST:6379/0, TLS rediss://..."
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise LstmdetError(f"{variable} is not a valid URL ({exc}); {example}") from None
    if parts.scheme not in URL_SCHEMES:
        raise LstmdetError(
            f"{variable}={mask_url(url)} is not a Redis URL: the scheme must be redis:// or rediss:// (TLS), not "
            f"{parts.scheme + '://' if parts.scheme else 'missing'}; {example}"
        )
    return url


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise LstmdetError(f"{name}={text!r} is not a whole number of seconds/count; fix or unset it") from None
    if value < 1:
        raise LstmdetError(f"{name} must be >= 1, got {value}")
    return value


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = (env.get(name) or "").strip().lower()
    if not text:
        return default
    if text in ("1", "on", "true", "yes"):
        return True
    if text in ("0", "off", "false", "no"):
        return False
    raise LstmdetError(f"{name}={env[name]!r}: use 1 or 0 (on or off)")


@dataclass(frozen=True)
class Settings:
    """Everything a client or worker reads from the environment (see the module docstring)."""

    broker_url: str = DEFAULT_BROKER_URL
    result_url: str = DEFAULT_BROKER_URL
    data_roots: tuple[Path, ...] = ()
    default_queue: str = "cpu"
    soft_time_limit: int = 6 * 3600
    time_limit: int = 6 * 3600 + 600
    visibility_timeout: int = 6 * 3600 + 1800
    max_deliveries: int = 3
    result_expires: int = 7 * 24 * 3600
    lease_seconds: int = 30
    heartbeat_seconds: int = 5
    leases: bool = True

    def __post_init__(self) -> None:
        for variable, url in (("LSTMDET_BROKER_URL", self.broker_url), ("LSTMDET_RESULT_URL", self.result_url)):
            check_redis_url(url, variable)
        if not self.soft_time_limit < self.time_limit < self.visibility_timeout:
            raise LstmdetError(
                f"time limits must satisfy soft ({self.soft_time_limit}) < hard ({self.time_limit}) < visibility "
                f"timeout ({self.visibility_timeout}); otherwise Redis hands a running task to a second worker. "
                "Fix LSTMDET_SOFT_TIME_LIMIT, LSTMDET_TIME_LIMIT and LSTMDET_VISIBILITY_TIMEOUT"
            )
        if self.heartbeat_seconds * 3 > self.lease_seconds:
            raise LstmdetError(
                f"LSTMDET_HEARTBEAT_SECONDS ({self.heartbeat_seconds}) must be at most a third of "
                f"LSTMDET_LEASE_SECONDS "
                f"({self.lease_seconds}), so that one late heartbeat does not hand a running task to another worker"
            )
        if self.default_queue not in QUEUES:
            raise LstmdetError(f"LSTMDET_DEFAULT_QUEUE={self.default_queue!r}; use one of {', '.join(QUEUES)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``env`` (default ``os.environ``)."""
        env = os.environ if env is None else env
        broker = env.get("LSTMDET_BROKER_URL") or DEFAULT_BROKER_URL
        roots = tuple(Path(p).expanduser().resolve() for p in env.get("LSTMDET_DATA_ROOTS", "").split(":") if p)
        soft = _int(env, "LSTMDET_SOFT_TIME_LIMIT", cls.soft_time_limit)
        hard = _int(env, "LSTMDET_TIME_LIMIT", max(cls.time_limit, soft + 60))
        return cls(
            broker_url=broker,
            result_url=env.get("LSTMDET_RESULT_URL") or broker,
            data_roots=roots,
            default_queue=env.get("LSTMDET_DEFAULT_QUEUE") or "cpu",
            soft_time_limit=soft,
            time_limit=hard,
            visibility_timeout=_int(env, "LSTMDET_VISIBILITY_TIMEOUT", max(cls.visibility_timeout, hard + 600)),
            max_deliveries=_int(env, "LSTMDET_MAX_DELIVERIES", cls.max_deliveries),
            result_expires=_int(env, "LSTMDET_RESULT_EXPIRES", cls.result_expires),
            lease_seconds=_int(env, "LSTMDET_LEASE_SECONDS", cls.lease_seconds),
            heartbeat_seconds=_int(env, "LSTMDET_HEARTBEAT_SECONDS", cls.heartbeat_seconds),
            leases=_switch(env, "LSTMDET_LEASES", cls.leases),
        )


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings of the app, following Celery's advice for long jobs on Redis.

    * Tasks are acknowledged after they finish (``acks_late``) and put back when their worker
      process dies (``reject_on_worker_lost``); each worker process reserves one task at a time.
    * The visibility timeout (set in all three places Celery reads it) exceeds the hard time limit.
    * JSON only, in both directions: no pickle ever reaches a worker.
    * Publishing retries a bounded number of times, so a client facing a dead Redis fails fast.
    """
    from kombu import Queue

    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # kombu sweeps for unacknowledged tasks past their visibility timeout every interval x
        # throttle seconds (100 s by default): sweep every interval, and never hold the sweep lock
        # long if a worker dies holding it, so a lost task comes back soon after its timeout.
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": max(10, min(300, settings.visibility_timeout)),
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "health_check_interval": 25,
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": 1,
        "interval_max": 3,
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "retry_policy": {"max_retries": 20, "interval_start": 0, "interval_step": 1, "interval_max": 3},
        },
        "visibility_timeout": settings.visibility_timeout,
        "redis_socket_connect_timeout": 5,
        "redis_socket_timeout": 30,
        "redis_retry_on_timeout": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.time_limit,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0, "interval_step": 1, "interval_max": 3},
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": 5,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "result_expires": settings.result_expires,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": settings.default_queue,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "enable_utc": True,
    }
