"""``lstmdet submit``, ``lstmdet jobs`` and ``lstmdet worker``: the queue side of the CLI.

These commands talk to Redis (``LSTMDET_BROKER_URL``, ``LSTMDET_RESULT_URL``) and check paths
against ``LSTMDET_DATA_ROOTS``; the code is in :mod:`lstmdet.workers`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from lstmdet.cli.arguments import non_negative_int, non_negative_number, positive_int
from lstmdet.cli.detect_cmds import add_detect_arguments, add_video_arguments, detect_options
from lstmdet.cli.train_cmds import add_eval_arguments, add_train_arguments, parse_data
from lstmdet.workers.specs import KINDS
from lstmdet.workers.store import FINAL, STATES

JOBS_EPILOG = """\
exit status: 0 done (wait: the job succeeded), 1 the job failed or was cancelled (wait),
2 usage error, unknown job, or Redis unreachable / refusing the password
"""


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``submit``, ``jobs`` and ``worker``."""
    p = subparsers.add_parser(
        "submit", help="queue a train, detect or eval job for the workers",
        description="Queue a job; prints the job id first. Paths must lie inside LSTMDET_DATA_ROOTS.",
        epilog=JOBS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, add in (("train", add_train_arguments), ("detect", add_detect_arguments), ("eval", add_eval_arguments)):
        sub = kinds.add_parser(kind, help=f"queue what `lstmdet {kind}` does")
        add(sub)
        if kind == "detect":
            add_video_arguments(sub, stream=False)
            sub.add_argument(
                "--shard-size",
                type=positive_int,
                default=256,
                metavar="N",
                help="images per shard; shards run on any worker (default 256)",
            )
            sub.add_argument(
                "--chunk-frames",
                type=positive_int,
                metavar="N",
                help="video frames per chunk (after --vid-stride); chunks of a video run on any worker (default 256)",
            )
            sub.add_argument("--warmup-frames", type=non_negative_int, metavar="N",
                             help="frames a recurrent (stateful) model runs before each chunk, not written, to warm "
                             "its state up (default 16)")  # fmt: skip
        sub.add_argument("--queue", choices=("gpu", "cpu"), help="default: gpu when a cuda device is asked for, "
                         "cpu when cpu is, else LSTMDET_DEFAULT_QUEUE (cpu)")  # fmt: skip
        sub.add_argument("--wait", action="store_true", help="wait for the job to end and print its record")
        sub.add_argument("--json", action="store_true", help="with --wait: print the record as JSON")
        sub.set_defaults(func=run_submit)

    p = subparsers.add_parser("jobs", help="list, follow or cancel queued jobs", epilog=JOBS_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub = actions.add_parser("list", help="the newest jobs, a page at a time")
    sub.add_argument("--limit", type=positive_int, default=50, help="jobs shown (default 50)")
    sub.add_argument("--offset", type=non_negative_int, default=0, help="matching jobs skipped first (next page)")
    sub.add_argument("--state", choices=STATES, help="only jobs in this state")
    sub.add_argument("--kind", choices=KINDS, help="only jobs of this kind")
    for name, text in (("status", "one job's record"), ("wait", "wait for a job to end"), ("cancel", "cancel a job")):
        sub_action = actions.add_parser(name, help=text)
        sub_action.add_argument("id", metavar="ID", help="job id (printed by submit)")
        if name == "wait":
            sub_action.add_argument(
                "--timeout", type=non_negative_number, help="give up after this many seconds (exit 2)"
            )
        sub_action.add_argument("--json", action="store_true", help="print JSON")
    sub.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_jobs)

    p = subparsers.add_parser(
        "workers", help="list live workers: queues, the tasks they hold, last heartbeat",
        description="Live workers, from the heartbeats they write every LSTMDET_HEARTBEAT_SECONDS; a worker that "
        "died drops out after LSTMDET_LEASE_SECONDS, and its tasks go back to the queue.",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_workers_list)

    p = subparsers.add_parser(
        "worker", help="start Celery worker processes that run queued jobs",
        description="Start workers: one process per GPU (--gpus 0,1; CUDA_VISIBLE_DEVICES set per process), or "
        "--concurrency N processes on CPU (torch threads = cores / N each). Stops on SIGTERM/SIGINT.",
    )  # fmt: skip
    p.add_argument("--queues", default=None, help="comma-separated queues (default: gpu with --gpus, else cpu)")
    p.add_argument("--gpus", help="GPU indices, e.g. 0,1: one worker process per GPU")
    p.add_argument("--concurrency", type=positive_int, help="CPU worker processes (default 1)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--name", help="node name prefix (default lstmdet)")
    p.set_defaults(func=run_worker)


def _client() -> Any:
    from lstmdet.workers.client import JobClient

    return JobClient()


def _when(stamp: float | None) -> str:
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"


def _progress(record: dict[str, Any]) -> str:
    progress = record.get("progress") or {}
    if "shards" in progress:
        return f"shards {progress['shards_done']}/{progress['shards']}"
    if "epoch" in progress:
        text = f"epoch {progress['epoch']}/{progress['epochs']} step {progress['step']}/{progress['steps']}"
        text += f" loss {progress['loss']:.4f}" if isinstance(progress.get("loss"), (int, float)) else ""
        metric = progress.get("metric")
        return text + (f" metric {metric:.4f}" if isinstance(metric, (int, float)) else "")
    return "-"


def _ago(stamp: float) -> str:
    return f"{max(0.0, time.time() - stamp):.0f} s ago"


def _show(record: dict[str, Any], as_json: bool, holders: list[dict[str, Any]] | None = None) -> None:
    if as_json:
        print(json.dumps(record if holders is None else {**record, "tasks": holders}, indent=2, default=str))
        return
    print(f"job {record['id']}: {record['kind']} on queue {record['queue']}: {record['state']}")
    print(f"  created {_when(record.get('created'))}, started {_when(record.get('started'))}, "
          f"finished {_when(record.get('finished'))}; progress: {_progress(record)}")  # fmt: skip
    if record.get("error"):
        print(f"  error: {record['error']}")
    if record.get("result"):
        result = {k: v for k, v in record["result"].items() if not isinstance(v, (dict, list))}
        print(f"  result: {json.dumps(result, default=str)}")
    for held in holders or ():
        print(f"  task {held['name']} {held['task_id']} ({held['state']}) on worker {held['worker']}, "
              f"lease renewed {_ago(held['heartbeat'])}")  # fmt: skip


def worker_command(queue: str) -> str:
    """The command that starts a worker on ``queue``."""
    return "lstmdet worker --gpus 0" if queue == "gpu" else f"lstmdet worker --queues {queue}"


def _warn_if_unserved(client: Any, record: dict[str, Any]) -> None:
    """On stderr: a queued job whose queue no live worker consumes will wait forever; say so."""
    if record["state"] == "queued" and client.listening(record["queue"]) is False:
        queue = record["queue"]
        print(f"lstmdet: job {record['id']} is queued, but no worker is listening on queue '{queue}': start one "
              f"with `{worker_command(queue)}`", file=sys.stderr, flush=True)  # fmt: skip


def _ended(record: dict[str, Any]) -> int:
    return 0 if record["state"] == "succeeded" else 1


def run_submit(args: argparse.Namespace) -> int:
    """Queue the job, print its id; with ``--wait``, wait and print its record."""
    client = _client()
    if args.kind == "train":
        job = client.submit_train(Path(args.config), args.out, overrides=args.overrides, resume=args.resume,
                                  queue=args.queue)  # fmt: skip
    elif args.kind == "detect":
        job = client.submit_detect(args.src, args.out, args.weights, shard_size=args.shard_size,
                                   chunk_frames=args.chunk_frames, warmup_frames=args.warmup_frames,
                                   queue=args.queue, **detect_options(args))  # fmt: skip
    else:
        job = client.submit_eval(args.weights, data=parse_data(args.data), out=args.out, batch_size=args.batch_size,
                                 device=args.device, queue=args.queue)  # fmt: skip
    print(job, flush=True)  # alone on the first line of stdout: scripts read it
    record = client.status(job)
    if args.wait:
        step = f"waiting for it (Ctrl-C stops the waiting, `lstmdet jobs cancel {job}` the job)"
    else:
        step = f"follow it: `lstmdet jobs status {job}` or `lstmdet jobs wait {job}`"
    print(f"lstmdet: job queued on queue '{record['queue']}'; {step}", file=sys.stderr, flush=True)
    _warn_if_unserved(client, record)
    if not args.wait:
        return 0
    record = client.wait(job)
    _show(record, args.json)
    return _ended(record)


def run_jobs(args: argparse.Namespace) -> int:
    """``jobs list | status ID | wait ID | cancel ID``."""
    client = _client()
    if args.action == "list":
        records = client.list(args.limit, offset=args.offset, state=args.state, kind=args.kind)
        if args.json:
            print(json.dumps(records, indent=2, default=str))
            return 0
        if not records:
            filtered = args.offset or args.state or args.kind
            print("no jobs match" if filtered else "no jobs (queue one with `lstmdet submit`)")
        for r in records:
            print(
                f"{r['id']}  {r['kind']:6}  {r['queue']:3}  {r['state']:9}  {_when(r.get('created'))}  {_progress(r)}"
            )
        return 0
    if args.action == "status":
        record = client.status(args.id)
        _show(record, args.json, client.holders(args.id) if record["state"] not in FINAL else [])
        _warn_if_unserved(client, record)
        return 0
    if args.action == "wait":
        _warn_if_unserved(client, client.status(args.id))
        record = client.wait(args.id, timeout=args.timeout)
        _show(record, args.json)
        return _ended(record)
    record = client.cancel(args.id)
    _show(record, args.json)
    return 0


def run_workers_list(args: argparse.Namespace) -> int:
    """``lstmdet workers``: the live workers and what they hold."""
    workers = _client().workers()
    if args.json:
        print(json.dumps(workers, indent=2, default=str))
        return 0
    if not workers:
        print("no live workers (start one with `lstmdet worker`)")
    for w in workers:
        state = "draining" if w.get("draining") else "up"
        print(f"{w['hostname']}  queues {','.join(w.get('queues', []))}  {state} since {_when(w.get('started'))}  "
              f"heartbeat {_ago(w['heartbeat'])}  tasks {len(w.get('tasks', []))}")  # fmt: skip
        for t in w.get("tasks", ()):
            job = f" job {t['job']}" if t.get("job") else ""
            print(f"  {t['state']:8}  {t['name']}  {t['task_id']}{job}")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """Start the worker processes and wait for them."""
    from lstmdet.workers.launcher import parse_gpus, plan_workers, run_workers
    from lstmdet.workers.settings import Settings

    Settings.from_env()  # a bad LSTMDET_* variable: one line here, not a traceback in every worker process
    gpus = parse_gpus(args.gpus)
    queues = (args.queues or ("gpu" if gpus else "cpu")).split(",")
    workers = plan_workers(queues=queues, gpus=gpus, concurrency=args.concurrency, loglevel=args.loglevel,
                           name=args.name)  # fmt: skip
    return run_workers(workers)
