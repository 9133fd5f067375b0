"""Queued detection against in-process detection, CPU worker scaling, and queue latency (issue 5).

Usage::

    python benchmarks/workers.py [--images 512] [--pings 50] [--repeats 1] [--json FILE] [--logs DIR]

The script generates ``--images`` digit scenes once (``lstmdet data digits-det DIR --images N
--seed 3 --split test``), starts its own ``redis-server`` on a free loopback port (no persistence,
in a temporary folder) and its own Celery workers, and stops them all when it ends.

1. Queued vs in-process, same folder, default detect options (default model, batches of 8, 2
   loader processes):

   * in-process: ``lstmdet.detect(src, out, progress=False)`` in a fresh Python process; images
     divided by the wall time of the call (model loading included, imports excluded);
   * queued: one ``lstmdet worker --queues cpu --concurrency 1`` (one pool process with as many
     torch threads as there are cores), warmed with a small detect job so its model is cached,
     as in a long-running fleet; ``client.submit_detect(src, out, shard_size=256)`` (the default) then
     ``client.wait(job)``: images divided by the time from just before the submit to the job's
     ``finished`` stamp (planning, shards and merge included).

   Reported: both images/s and queued / in-process (target >= 0.9x), and whether the queued job's
   ``detections.jsonl``, ``images.json`` and ``coco_results.json`` equal the in-process files
   byte for byte.
2. Scaling on CPU, one job of all the images, detect option ``workers=0`` (decoding in the pool
   process itself) and ``--shard-size 32``: one worker process with 1 torch thread against one
   Celery worker with two pool processes of 1 thread each (the command lines of
   ``lstmdet.workers.launcher.plan_workers`` with ``cores`` equal to the processes, so
   ``LSTMDET_TORCH_THREADS=1``). Each setup is warmed with a small job of several shards first.
   Reported: images/s (submit to finished) of each and 2 / 1 (target >= 1.6x).
3. Latency, on the idle warm worker of 1.: ``--pings`` ``lstmdet.ping`` tasks, one at a time,
   each sent with ``args=[time.time()]``. Submit-to-start is the task's ``started`` stamp minus
   the send time (the queue's own delay: publish, Redis, the worker's fetch); round trip is send
   to ``.get()`` returning (plus storing and fetching the result). Median and p95 in ms.

Other work on the machine distorts timings: by default each timed run first waits until the CPU
looks idle (``/proc/stat``, Linux only; ``--no-wait-idle`` turns it off), and ``--repeats N``
interleaves in-process and queued runs and reports medians. Warnings and errors in the worker
logs are counted and printed; ``--logs DIR`` keeps the full logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import free_port, percentile, wait_until_idle

from lstmdet.workers.client import JobClient
from lstmdet.workers.launcher import plan_workers
from lstmdet.workers.settings import Settings

LSTMDET = str(Path(sys.executable).with_name("lstmdet"))
#: Files of a detect run that must not depend on how it ran (summary.json holds timings).
COMPARED = ("detections.jsonl", "images.json", "coco_results.json")
#: Worker log lines worth reporting.
NOTEWORTHY = re.compile(r"Traceback|ERROR|CRITICAL|WARNING|Warning|[Ee]xception")
#: Log line of a pool process that ran detection (so has the model loaded).
DETECTED = re.compile(r"/(ForkPoolWorker-\d+)\] Task lstmdet\.detect(?:_shard)?\[[^\]]*\] succeeded")
IN_PROCESS = """
import json, sys, time
import torch
import lstmdet
start = time.perf_counter()
summary = lstmdet.detect(sys.argv[1], sys.argv[2], progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"images": summary["images"], "seconds": seconds, "loop_images_per_s": summary["images_per_s"],
                  "threads": torch.get_num_threads()}))
"""


# --------------------------------------------------------------------------- helpers


def make_scenes(folder: Path, count: int) -> Path:
    """Write ``count`` digit scenes (``lstmdet data digits-det``); returns the folder of images."""
    command = [LSTMDET, "data", "digits-det", str(folder), "--images", str(count), "--seed", "3", "--split", "test"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return folder / "images"


def copy_subset(src: Path, dst: Path, count: int) -> Path:
    """Copy the first ``count`` files of ``src`` to ``dst`` (the small warm-up jobs); returns ``dst``."""
    dst.mkdir(parents=True)
    for path in sorted(src.iterdir())[:count]:
        shutil.copy2(path, dst / path.name)
    return dst


def same_files(a: Path, b: Path) -> dict[str, bool]:
    """For each of :data:`COMPARED`: whether ``a/NAME`` and ``b/NAME`` hold the same bytes."""
    return {name: (a / name).read_bytes() == (b / name).read_bytes() for name in COMPARED}


# --------------------------------------------------------------------------- processes


class Cluster:
    """A private redis-server and the worker processes started against it (stopped by :meth:`close`).

    Args:
        work: Temporary folder: Redis's working folder, the only data root, the worker logs.
    """

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.env = {"LSTMDET_BROKER_URL": self.url, "LSTMDET_RESULT_URL": self.url, "LSTMDET_DATA_ROOTS": str(work)}
        self.redis: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.client = JobClient(Settings(broker_url=self.url, result_url=self.url, data_roots=(work.resolve(),)))

    def start_redis(self, timeout: float = 20.0) -> None:
        """Start redis-server and wait until it answers."""
        folder = self.work / "redis"
        folder.mkdir()
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(folder)]  # fmt: skip
        self.redis = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.store.ping()
                return
            except Exception:
                if self.redis.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.1)

    def start_worker(self, argv: list[str], env: dict[str, str], name: str, timeout: float = 180.0) -> None:
        """Start a worker (its own process group, output to ``work/NAME.log``) and wait until it answers a ping."""
        log = self.work / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as f:
            process = subprocess.Popen(argv, env={**os.environ, **env, **self.env}, stdout=f, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        self.workers.append(process)
        result = self.client.app.send_task("lstmdet.ping", args=[time.time()], queue="cpu")
        deadline = time.monotonic() + timeout
        while not result.ready():
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited with status {process.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not answer a ping within {timeout:.0f} s; see {log}")
            time.sleep(0.1)
        result.get(timeout=5)

    @staticmethod
    def _stop(process: subprocess.Popen, timeout: float = 60.0) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL to the process group of ``process`` if it lingers."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # pool or loader processes left behind, if any
        process.wait()

    def stop_workers(self) -> None:
        """Stop every worker started so far."""
        while self.workers:
            self._stop(self.workers.pop())

    def close(self) -> None:
        """Stop the workers, then Redis."""
        try:
            self.stop_workers()
        finally:
            if self.redis is not None and self.redis.poll() is None:
                self.redis.terminate()
                try:
                    self.redis.wait(10)
                except subprocess.TimeoutExpired:
                    self.redis.kill()
                    self.redis.wait()

    def pool_processes_used(self, name: str) -> set[str]:
        """Pool processes of worker ``name`` that finished a detect or detect_shard task (from its log)."""
        text = (self.work / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        return set(DETECTED.findall(text))

    def log_report(self, keep: Path | None, limit: int = 20) -> dict[str, Any]:
        """Noteworthy lines (warnings, errors, tracebacks) of the worker logs; logs copied to ``keep``."""
        lines = []
        for log in self.logs:
            text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
            lines += [f"{log.stem}: {line.strip()}" for line in text.splitlines() if NOTEWORTHY.search(line)]
            if keep is not None and log.is_file():
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy2(log, keep / log.name)
        return {"noteworthy_lines": len(lines), "first": lines[:limit]}


# --------------------------------------------------------------------------- measurements


def in_process(src: Path, out: Path, wait_idle: bool) -> dict[str, Any]:
    """``lstmdet.detect(src, out)`` with default options in a fresh Python process; images/s of the call."""
    busy = wait_idle and not wait_until_idle()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # as the CPU worker
    done = subprocess.run([sys.executable, "-c", IN_PROCESS, str(src), str(out)], capture_output=True, text=True,
                          env=env)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"in-process detect exited with status {done.returncode}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "images_per_s": result["images"] / result["seconds"], "started_while_busy": busy}


def queued(
    client: JobClient, src: Path, out: Path, *, shard_size: int, wait_idle: bool, timeout: float, **options: Any
) -> dict[str, Any]:
    """Submit a detect job and wait for it; images / (submit to the job's ``finished`` stamp)."""
    busy = wait_idle and not wait_until_idle()
    images = sum(1 for p in src.iterdir() if p.is_file())
    sent = time.time()
    job = client.submit_detect(src, out, shard_size=shard_size, **options)
    record = client.wait(job, timeout=timeout, poll=0.05)
    if record["state"] != "succeeded":
        raise RuntimeError(f"detect job {job} ended {record['state']}: {record.get('error')}")
    seconds = record["finished"] - sent
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds,
            "start_latency_s": record["started"] - sent, "started_while_busy": busy}  # fmt: skip


def pings(client: JobClient, count: int, wait_idle: bool) -> dict[str, Any]:
    """``count`` ping tasks sent one at a time: submit-to-start and round-trip latency (ms)."""
    app = client.app
    app.send_task("lstmdet.ping", args=[time.time()], queue="cpu").get(timeout=30)  # untimed: connections up
    busy = wait_idle and not wait_until_idle()
    start_ms, round_ms = [], []
    for _ in range(count):
        sent = time.time()
        answer = app.send_task("lstmdet.ping", args=[sent], queue="cpu").get(timeout=30)
        back = time.time()
        start_ms.append((answer["started"] - sent) * 1000)
        round_ms.append((back - sent) * 1000)
    return {
        "pings": count,
        "start_ms_median": statistics.median(start_ms),
        "start_ms_p95": percentile(start_ms, 95),
        "round_trip_ms_median": statistics.median(round_ms),
        "round_trip_ms_p95": percentile(round_ms, 95),
        "start_ms": [round(v, 3) for v in start_ms],
        "round_trip_ms": [round(v, 3) for v in round_ms],
        "started_while_busy": busy,
    }


def _median(runs: list[dict[str, Any]], key: str = "images_per_s") -> float:
    return statistics.median(run[key] for run in runs)


def bench_queued_vs_in_process(
    cluster: Cluster, scenes: Path, warm: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measurements 1 and 3 on one ``lstmdet worker --concurrency 1``."""
    work = cluster.work
    argv = [LSTMDET, "worker", "--queues", "cpu", "--concurrency", "1", "--name", "bench-default"]
    cluster.start_worker(argv, {}, "worker-default")
    queued(cluster.client, warm, work / "warm-default", shard_size=64, wait_idle=False, timeout=args.timeout)
    local, remote, identical = [], [], None
    for n in range(args.repeats):
        local.append(in_process(scenes, work / f"in-process-{n}", args.wait_idle))
        remote.append(queued(cluster.client, scenes, work / f"queued-{n}", shard_size=args.queued_shard_size,
                             wait_idle=args.wait_idle, timeout=args.timeout))  # fmt: skip
        if identical is None:
            identical = same_files(work / f"in-process-{n}", work / f"queued-{n}")
    latency = pings(cluster.client, args.pings, args.wait_idle)
    cluster.stop_workers()
    first = {
        "images": local[0]["images"],
        "shard_size": args.queued_shard_size,
        "in_process_images_per_s": _median(local),
        "queued_images_per_s": _median(remote),
        "ratio": _median(remote) / _median(local),
        "target": 0.9,
        "identical_files": identical,
        "in_process_runs": local,
        "queued_runs": remote,
    }
    return first, latency


def bench_scaling(cluster: Cluster, scenes: Path, warm: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measurement 2: one single-threaded worker process against two on the same job."""
    results: dict[str, Any] = {"shard_size": args.shard_size, "detect_workers": 0, "target": 1.6}
    warm_shard = max(1, sum(1 for _ in warm.iterdir()) // 4)  # several shards: every pool process loads the model
    for processes in (1, 2):
        (plan,) = plan_workers(queues=["cpu"], concurrency=processes, cores=processes, name=f"bench-x{processes}")
        assert plan.env["LSTMDET_TORCH_THREADS"] == "1", plan.env
        name = f"worker-x{processes}"
        cluster.start_worker(plan.argv, plan.env, name)
        warm_jobs = 0
        while warm_jobs < 5 and (warm_jobs == 0 or len(cluster.pool_processes_used(name)) < processes):
            queued(cluster.client, warm, cluster.work / f"warm-x{processes}-{warm_jobs}", shard_size=warm_shard,
                   wait_idle=False, timeout=args.timeout, workers=0)  # fmt: skip
            warm_jobs += 1
        warmed = len(cluster.pool_processes_used(name))
        runs = []
        for n in range(args.repeats):
            runs.append(queued(cluster.client, scenes, cluster.work / f"scaling-x{processes}-{n}",
                               shard_size=args.shard_size, wait_idle=args.wait_idle, timeout=args.timeout,
                               workers=0))  # fmt: skip
        cluster.stop_workers()
        results[f"x{processes}"] = {"images_per_s": _median(runs), "threads_per_process": 1, "warm_jobs": warm_jobs,
                                    "processes_warmed": warmed, "runs": runs}  # fmt: skip
    results["ratio"] = results["x2"]["images_per_s"] / results["x1"]["images_per_s"]
    return results


def report(results: dict[str, Any]) -> None:
    """Print the results as a Markdown table, then the noteworthy worker log lines."""
    first, scaling, latency = results["queued_vs_in_process"], results["scaling"], results["latency"]

    def verdict(value: float, target: float) -> str:
        return f">= {target}x: {'ok' if value >= target else '**missed**'}"

    same = first["identical_files"]
    print(f"| measure ({first['images']} digit scenes, median of {results['meta']['repeats']}) | value | target |")
    print("|---|---|---|")
    print(f"| in-process `lstmdet.detect` (defaults) | {first['in_process_images_per_s']:.2f} img/s | |")
    print(f"| queued, 1 warm worker, shard {first['shard_size']} | {first['queued_images_per_s']:.2f} img/s | |")
    print(f"| queued / in-process | **{first['ratio']:.2f}x** | {verdict(first['ratio'], first['target'])} |")
    print(f"| queued files identical ({', '.join(same)}) | {'yes' if all(same.values()) else f'**no**: {same}'} | |")
    print(f"| 1 process x 1 thread, workers=0, shard {scaling['shard_size']} | {scaling['x1']['images_per_s']:.2f} "
          "img/s | |")  # fmt: skip
    print(f"| 2 processes x 1 thread, same job | {scaling['x2']['images_per_s']:.2f} img/s | |")
    print(f"| 2 / 1 | **{scaling['ratio']:.2f}x** | {verdict(scaling['ratio'], scaling['target'])} |")
    print(f"| ping submit-to-start, median / p95 ({latency['pings']} pings) | {latency['start_ms_median']:.1f} / "
          f"{latency['start_ms_p95']:.1f} ms | |")  # fmt: skip
    print(f"| ping round trip, median / p95 | {latency['round_trip_ms_median']:.1f} / "
          f"{latency['round_trip_ms_p95']:.1f} ms | |")  # fmt: skip
    runs = first["in_process_runs"] + first["queued_runs"] + scaling["x1"]["runs"] + scaling["x2"]["runs"]
    busy = sum(run["started_while_busy"] for run in runs) + latency["started_while_busy"]
    loop = statistics.median(run["loop_images_per_s"] for run in first["in_process_runs"])
    print(f"in-process: {first['in_process_runs'][0]['threads']} torch threads, {loop:.2f} img/s in its processing "
          f"loop (model loading excluded); timed runs started while the CPU was busy: {busy}")  # fmt: skip
    for key in ("x1", "x2"):
        warmed = scaling[key]["processes_warmed"]
        if warmed < int(key[1:]):
            print(f"warning: only {warmed} pool process(es) of setup {key} ran detection before it was timed")
    logs = results["worker_logs"]
    print(f"worker logs: {logs['noteworthy_lines']} lines with warnings/errors")
    for line in logs["first"]:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="digit scenes to generate (default 512)")
    parser.add_argument("--pings", type=int, default=50, help="ping tasks for the latency figures (default 50)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each detect measurement (median)")
    parser.add_argument("--shard-size", type=int, default=32, help="shard size of the scaling job (default 32)")
    parser.add_argument(
        "--queued-shard-size",
        type=int,
        default=256,
        help="shard size of the queued-vs-in-process job (default 256, the client's default)",
    )
    parser.add_argument("--warm-images", type=int, default=32, help="images of the warm-up jobs (default 32)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a queued job may take")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--logs", type=Path, default=None, help="copy the worker logs into this folder")
    parser.add_argument(
        "--no-wait-idle", dest="wait_idle", action="store_false", help="do not wait for an idle CPU before runs"
    )
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        parser.error("redis-server is not on PATH")
    with tempfile.TemporaryDirectory(prefix="lstmdet-bench-workers-") as tmp:
        work = Path(tmp).resolve()
        scenes = make_scenes(work / "scenes", args.images)
        warm = copy_subset(scenes, work / "warm" / "images", min(args.warm_images, args.images))
        cluster = Cluster(work)
        failed = True
        try:
            cluster.start_redis()
            first, latency = bench_queued_vs_in_process(cluster, scenes, warm, args)
            scaling = bench_scaling(cluster, scenes, warm, args)
            failed = False
        finally:
            cluster.close()
            logs = cluster.log_report(args.logs)
            if failed:
                print("worker log lines with warnings/errors:", *logs["first"], sep="\n  ", file=sys.stderr)
    meta = {
        "python": sys.version.split()[0],
        "machine": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "repeats": args.repeats,
        "wait_idle": args.wait_idle,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    results = {"meta": meta, "queued_vs_in_process": first, "scaling": scaling, "latency": latency,
               "worker_logs": logs}  # fmt: skip
    report(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
