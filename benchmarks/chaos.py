"""Chaos: a fleet of workers killed and restarted under a stream of mixed jobs, at default settings (issue 13).

Usage::

    python benchmarks/chaos.py [--jobs 300] [--workers 3] [--kill-every 20 40] [--seed 1] [--json FILE] [--logs DIR]

The script starts its own ``redis-server`` (append-only file, ``appendfsync always``, on a free
loopback port, in a temporary folder) and ``--workers`` ``lstmdet worker --queues cpu`` process
groups (one pool process with one torch thread each), at default lease settings. It queues
``--jobs`` jobs at once, a fixed mix of

* ``detect``: 96 digit scenes in shards of 8 (plan, 12 shards, merge), with the shipped model;
* ``eval``: a small MNIST classifier checkpoint on 512 digits;
* ``train``: that classifier, 1 epoch of 512 digits;
* ``ping``: Celery's round trip only,

and runs them:

1. **no faults**, ``--repeats`` times with leases off (``LSTMDET_LEASES=0``) and on, interleaved
   (off, on, off, on, ...): throughput (jobs/min, first submit to last job's end) and the leases'
   overhead, 1 - median(on) / median(off) (target <= 2 %);
2. **chaos**: every ``--kill-every`` seconds (uniform in the range) a random worker's whole
   process group is SIGKILLed and a new worker started at once; Redis is SIGKILLed and restarted
   once, a third of the way in. All workers run on this one machine, so a surviving worker sees
   a killed neighbour's process gone and restores its tasks within a heartbeat. With
   ``--hosts separate`` each worker gets its own ``LSTMDET_MACHINE_ID``, as on separate
   machines, and a lost task waits out its lease; ``--hosts both`` runs the chaos part both ways
   (after the same no-fault runs). Throughput (target >= 0.7x of the median no-fault run with
   leases) and recovery: for every message the lease sweep restored (its failover log), the
   seconds from the kill that lost it to a worker receiving it again, read from the workers' logs
   (target: p50 <= 35 s, p95 <= 60 s).

Every job of every run must succeed exactly once with outputs equal to in-process runs: detect
files byte for byte, eval metrics, the final weights of each train job, one ``metrics.jsonl``
line per epoch. Run it alone on the machine: other work changes throughput.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import free_port, percentile

LSTMDET = str(Path(sys.executable).with_name("lstmdet"))
COMPARED = ("detections.jsonl", "images.json", "coco_results.json")
MIX = {"detect": 0.4, "eval": 0.2, "train": 0.2, "ping": 0.2}


def train_config(images: int = 512) -> dict[str, Any]:
    """The small MNIST classifier every train job trains (1 epoch, deterministic on one thread)."""
    return {
        "task": "classify",
        "model": {
            "input": {"size": 28, "mean": [0.13] * 3, "std": [0.31] * 3},
            "backbone": {"name": "small_cnn", "widths": [8, 16]},
            "encoder": {"name": "lstm", "hidden": 16},
            "head": {"name": "classifier", "num_classes": 10},
        },
        "data": {"train": {"name": "mnist_idx", "split": "train", "images": images}},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.01, "workers": 0, "progress": False, "seed": 5},
    }


EVAL_DATA = {"name": "mnist_idx", "split": "val", "images": 512}


class Fleet:
    """A private redis-server with an append-only file and the worker process groups started against it."""

    def __init__(self, work: Path, env: dict[str, str], root: Path, separate_hosts: bool = False) -> None:
        from lstmdet.workers.client import JobClient
        from lstmdet.workers.settings import Settings

        self.work, self.port = work, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.env = {**os.environ, "LSTMDET_BROKER_URL": self.url, "LSTMDET_RESULT_URL": self.url,
                    "LSTMDET_DATA_ROOTS": str(root), "LSTMDET_TORCH_THREADS": "1", **env}  # fmt: skip
        self.client = JobClient(Settings.from_env(self.env))
        self.redis: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}  # worker pid -> its log
        self.count = 0
        self.separate_hosts = separate_hosts

    def start_redis(self) -> None:
        folder = self.work / "redis"
        folder.mkdir(exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                   "yes", "--appendfsync", "always", "--dir", str(folder)]  # fmt: skip
        self.redis = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.store.ping()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)

    def kill_redis(self) -> None:
        self.redis.kill()
        self.redis.wait()

    def start_worker(self) -> subprocess.Popen:
        self.count += 1
        path = self.work / "logs" / f"worker{self.count}.log"
        # --separate-hosts: each worker stands for its own machine, so a lost task waits out its lease
        env = {**self.env, "LSTMDET_MACHINE_ID": f"host-{self.count}"} if self.separate_hosts else self.env
        with path.open("wb") as log:
            process = subprocess.Popen([LSTMDET, "worker", "--queues", "cpu", "--concurrency", "1"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.workers.append(process)
        self.logs[process.pid] = path
        return process

    def hostname(self, process: subprocess.Popen) -> str:
        import socket

        return f"lstmdet-cpu.{process.pid}@{socket.gethostname()}"

    def live(self) -> list[subprocess.Popen]:
        return [p for p in self.workers if p.poll() is None]

    def wait_registered(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while len(self.client.app.control.ping(timeout=1.0) or []) < count:  # also with leases off
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers did not register within {timeout} s")
            time.sleep(0.2)

    def close(self) -> None:
        for process in self.workers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait()


def prepare(work: Path) -> dict[str, Any]:
    """Inputs and the in-process references every queued output must equal."""
    import torch

    import lstmdet
    from lstmdet.checkpoint import read_checkpoint
    from lstmdet.engine.evaluate import evaluate_checkpoint

    subprocess.run([LSTMDET, "data", "digits-det", str(work / "scenes"), "--images", "96", "--seed", "3", "--split",
                    "test"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    torch.set_num_threads(1)  # as the workers
    reference = work / "reference"
    lstmdet.detect(work / "scenes" / "images", reference / "detect", progress=False, workers=0, batch_size=2)
    lstmdet.train(train_config(), reference / "train")
    metrics = evaluate_checkpoint(reference / "train" / "last.pt", data=EVAL_DATA, batch_size=16, device="cpu")
    return {
        "scenes": work / "scenes" / "images",
        "detect": {name: (reference / "detect" / name).read_bytes() for name in COMPARED},
        "weights": reference / "train" / "last.pt",
        "state": read_checkpoint(reference / "train" / "last.pt")["state_dict"],
        "eval": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }


def submit_all(fleet: Fleet, ref: dict[str, Any], jobs: int, out: Path, rng: random.Random) -> list[tuple[str, Any]]:
    """Queue ``jobs`` jobs of the mix (order shuffled); returns ``(kind, job id or ping result)``."""
    kinds = [k for k, share in MIX.items() for _ in range(round(jobs * share))]
    rng.shuffle(kinds)
    submitted = []
    for i, kind in enumerate(kinds):
        target = out / f"{kind}{i}"
        if kind == "detect":
            job = fleet.client.submit_detect(ref["scenes"], target, shard_size=8, workers=0, batch_size=2)
        elif kind == "eval":
            job = fleet.client.submit_eval(ref["weights"], data=EVAL_DATA, out=target / "metrics.json", batch_size=16,
                                           device="cpu")  # fmt: skip
        elif kind == "train":
            job = fleet.client.submit_train(train_config(), target)
        else:
            job = fleet.client.app.send_task("lstmdet.ping", args=[time.time()], queue="cpu")
        submitted.append((kind, job, target))
    return submitted


def check(fleet: Fleet, ref: dict[str, Any], submitted: list[tuple[str, Any, Path]]) -> dict[str, Any]:
    """Every job succeeded once with outputs equal to the in-process references; returns the failures."""
    import torch

    from lstmdet.checkpoint import read_checkpoint

    failures: list[str] = []
    for kind, job, target in submitted:
        if kind == "ping":
            if not job.ready() or job.state != "SUCCESS":
                failures.append(f"ping {job.id}: {job.state}")
            continue
        record = fleet.client.status(job)
        if record["state"] != "succeeded":
            failures.append(f"{kind} {job}: {record['state']} {record.get('error')}")
            continue
        if kind == "detect":
            same = all((target / n).read_bytes() == ref["detect"][n] for n in COMPARED)
            if not same:
                failures.append(f"detect {job}: files differ from in-process")
        elif kind == "eval":
            metrics = json.loads((target / "metrics.json").read_text())
            if any(abs(metrics[k] - v) > 1e-9 for k, v in ref["eval"].items()):
                failures.append(f"eval {job}: metrics differ")
        else:
            state = read_checkpoint(target / "last.pt")["state_dict"]
            lines = (target / "metrics.jsonl").read_text().splitlines()
            if not all(torch.equal(state[k], ref["state"][k]) for k in ref["state"]) or len(lines) != 1:
                failures.append(f"train {job}: weights differ or {len(lines)} metrics lines")
    return {"jobs": len(submitted), "failures": failures}


def wait_done(fleet: Fleet, submitted: list[tuple[str, Any, Path]], timeout: float) -> float:
    """Wait until every job ended; returns when (time.time()) the last one did."""
    deadline = time.monotonic() + timeout
    pending = list(submitted)
    last = time.time()
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs unfinished after {timeout} s")
        still = []
        for item in pending:
            kind, job, _ = item
            try:
                done = job.ready() if kind == "ping" else fleet.client.status(job)["state"] in (
                    "succeeded", "failed", "cancelled")  # fmt: skip
            except Exception:  # Redis restarting
                done = False
            if not done:
                still.append(item)
        if len(still) < len(pending):
            last = time.time()
        pending = still
        time.sleep(0.5)
    return last


class Chaos(threading.Thread):
    """Kills a random worker every ``every`` seconds (and starts a new one at once), restarts Redis once."""

    def __init__(self, fleet: Fleet, every: tuple[float, float], rng: random.Random, redis_at: float) -> None:
        super().__init__(daemon=True)
        self.fleet, self.every, self.rng, self.redis_at = fleet, every, rng, redis_at
        self.stop = threading.Event()
        self.kills: list[dict[str, Any]] = []
        self.redis_restarted: float | None = None

    def run(self) -> None:
        started = time.time()
        next_kill = started + self.rng.uniform(*self.every)
        while not self.stop.is_set():
            now = time.time()
            if self.redis_restarted is None and now - started >= self.redis_at:
                self.fleet.kill_redis()
                time.sleep(1.0)
                self.fleet.start_redis()
                self.redis_restarted = time.time()
            if now >= next_kill:
                self._kill()
                next_kill = now + self.rng.uniform(*self.every)
            self.stop.wait(0.25)

    def _kill(self) -> None:
        live = self.fleet.live()
        if not live:
            return
        victim = self.rng.choice(live)
        os.killpg(victim.pid, signal.SIGKILL)  # the whole process group: supervisor, Celery, pool
        victim.wait()
        self.kills.append(
            {"at": time.time(), "victim": self.fleet.hostname(victim), "log": self.fleet.logs[victim.pid]}
        )
        self.fleet.start_worker()


RECEIVED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] Task [\w.]+\[([^\]]+)\] received")


def received_times(logs: list[Path]) -> dict[str, list[tuple[float, Path]]]:
    """Task id -> when (``time.time()`` scale) and in which worker log it was received, from Celery's log lines."""
    seen: dict[str, list[tuple[float, Path]]] = {}
    for log in logs:
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            match = RECEIVED.match(line)
            if match:
                stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                seen.setdefault(match.group(2), []).append((stamp, log))
    return seen


def recovery(monkey: Chaos, restorations: list[dict[str, Any]], logs: list[Path]) -> list[float]:
    """Seconds from the kill that lost each restored message to a worker receiving it again.

    For every message the sweep restored (the failover log: task id, restore time), the worker that
    last received the task before the restore is the one that was killed holding it; the recovery
    is from that worker's kill to the first time any worker logged receiving the task afterwards.
    """
    seen = received_times(logs)
    killed = {k["log"]: k["at"] for k in monkey.kills}
    back = []
    for event in restorations:
        receipts = seen.get(event["task_id"], [])
        before = [(t, log) for t, log in receipts if t <= event["restored"]]
        again = [t for t, _ in receipts if t >= event["restored"] - 0.01]
        if before and again and max(before)[1] in killed:
            back.append(min(again) - killed[max(before)[1]])
    return back


def run(args: argparse.Namespace, ref: dict[str, Any], work: Path, label: str, env: dict[str, str],
        chaos: bool, separate_hosts: bool = False) -> dict[str, Any]:  # fmt: skip
    """One run of the mix; returns throughput, correctness and (with chaos) recovery."""
    folder = work / label.replace(" ", "-").replace(",", "")
    (folder / "logs").mkdir(parents=True)
    fleet = Fleet(folder, env, root=work, separate_hosts=separate_hosts)
    rng = random.Random(args.seed)
    try:
        fleet.start_redis()
        for _ in range(args.workers):
            fleet.start_worker()
        fleet.wait_registered(args.workers)
        started = time.time()
        submitted = submit_all(fleet, ref, args.jobs, folder / "out", rng)
        monkey = None
        if chaos:
            monkey = Chaos(fleet, tuple(args.kill_every), rng, redis_at=args.redis_at)
            monkey.start()
        last = wait_done(fleet, submitted, args.timeout)
        if monkey is not None:
            monkey.stop.set()
            monkey.join()
        seconds = last - started
        result: dict[str, Any] = {"label": label, "seconds": round(seconds, 1),
                                  "jobs_per_min": round(len(submitted) / seconds * 60, 2),
                                  **check(fleet, ref, submitted)}  # fmt: skip
        restorations: list[dict[str, Any]] = []
        with contextlib.suppress(Exception):
            restorations = fleet.client.leases.failover_log()
        result["failovers"] = len(restorations)
        result["restored_why"] = dict(collections.Counter(str(e.get("why")) for e in restorations))
        logs = sorted((folder / "logs").glob("*.log"))
        # jobs the reconciler queued again (a message lost with Redis, that no lease could bring back)
        result["reconciled"] = sum(log.read_text(errors="replace").count("had no message anywhere") for log in logs)
        if monkey is not None:
            back = recovery(monkey, restorations, logs)
            result["kills"] = len(monkey.kills)
            result["lost_tasks"] = len(restorations)
            result["seen_again"] = len(back)
            result["recovery_s"] = {"p50": round(percentile(back, 50), 1), "p95": round(percentile(back, 95), 1),
                                    "max": round(max(back), 1)} if back else None  # fmt: skip
            result["redis_restarted_at_s"] = (
                round(monkey.redis_restarted - started, 1) if monkey.redis_restarted else None
            )
        return result
    finally:
        fleet.close()
        if args.logs:
            shutil.copytree(folder / "logs", Path(args.logs) / label, dirs_exist_ok=True)


def report(results: dict[str, Any]) -> None:
    runs = results["runs"]
    print(f"\n{results['machine']}; {results['jobs']} jobs ({results['mix']}), {results['workers']} workers\n")
    print("| run | seconds | jobs/min | failures | kills | restored (why) | timed | recovery p50 / p95 / max s | "
          "reconciled |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in runs:
        rec = r.get("recovery_s")
        shown = f"{rec['p50']} / {rec['p95']} / {rec['max']}" if rec else "-"
        why = ", ".join(f"{n} {w}" for w, n in sorted(r.get("restored_why", {}).items()))
        print(f"| {r['label']} | {r['seconds']} | {r['jobs_per_min']} | {len(r['failures'])} | {r.get('kills', '-')} | "
              f"{r.get('lost_tasks', '-')} ({why or '-'}) | {r.get('seen_again', '-')} | {shown} | "
              f"{r.get('reconciled', '-')} |")  # fmt: skip
    print(f"\nlease overhead (no faults, medians): {results['lease_overhead']:.1%} (target <= 2 %)")
    for label, ratio in results["chaos_ratio"].items():
        print(f"throughput under {label}: {ratio:.2f}x of no faults (target >= 0.7x)")
    for r in runs:
        for failure in r["failures"][:10]:
            print(f"  {r['label']}: {failure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, nargs=2, default=[20.0, 40.0], metavar=("MIN", "MAX"))
    parser.add_argument("--redis-at", type=float, default=None, help="seconds into the chaos run (default: a third "
                        "of the no-fault run's time)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--repeats", type=int, default=2, help="no-fault runs with leases off and on, interleaved "
                        "(off, on, off, on...); medians are compared")  # fmt: skip
    parser.add_argument("--no-chaos", action="store_true", help="only the no-fault runs (the leases' overhead)")
    parser.add_argument("--hosts", choices=("one", "separate", "both"), default="one", help="chaos on one machine "
                        "(a neighbour's death is seen within a heartbeat), as separate machines (each worker its own "
                        "LSTMDET_MACHINE_ID: lost tasks wait out their lease), or both")  # fmt: skip
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--logs", help="copy the worker logs here")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        parser.error("redis-server is not on PATH")
    with tempfile.TemporaryDirectory(prefix="lstmdet-chaos-") as tmp:
        work = Path(tmp)
        ref = prepare(work)
        runs, off, on = [], [], []
        for i in range(args.repeats):
            off.append(run(args, ref, work, f"no faults, leases off #{i + 1}", {"LSTMDET_LEASES": "0"}, chaos=False))
            on.append(run(args, ref, work, f"no faults #{i + 1}", {}, chaos=False))
            runs += [off[-1], on[-1]]
        plain = statistics.median(r["jobs_per_min"] for r in on)
        if not args.no_chaos:
            if args.redis_at is None:
                args.redis_at = statistics.median(r["seconds"] for r in on) / 3
            for hosts in ("one", "separate") if args.hosts == "both" else (args.hosts,):
                label = "chaos" if hosts == "one" else "chaos, separate hosts"
                runs.append(run(args, ref, work, label, {}, chaos=True, separate_hosts=hosts == "separate"))
    results = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()})",
        "jobs": args.jobs, "mix": MIX, "workers": args.workers, "kill_every": args.kill_every, "runs": runs,
        "hosts": args.hosts,
        "lease_overhead": 1 - plain / statistics.median(r["jobs_per_min"] for r in off),
        "chaos_ratio": {r["label"]: r["jobs_per_min"] / plain for r in runs if r["label"].startswith("chaos")},
    }  # fmt: skip
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(not r["failures"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
