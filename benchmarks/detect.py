"""Batch-detection speed and memory, and the inference cost of the BiLSTM encoder.

Usage::

    python benchmarks/detect.py [--weights CKPT] [--json FILE]

1. Throughput on the 128 photos of ``../shared/data/coco128-val``: ``lstmdet.detect`` with its
   defaults (batches, reduced-scale JPEG decoding and resizing in the loader, loader processes
   where the cores allow, allocator tuning) against a naive loop (PIL open -> tensor ->
   ``model.predict([image])`` per file) with the same model, each in a fresh process after a
   warm-up, interleaved, medians. Target: >= 1.5x on 2 CPU cores.
2. Peak memory (max RSS of a ``lstmdet detect`` subprocess) on 5,000 vs 500 images. Target: <= +10%.
3. Inference time of ``configs/digits_det_bilstm.yaml`` against ``configs/digits_det_identity.yaml``
   (same backbone and head) on batches of 128x128 scenes. Target: <= 1.25x.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from _common import wait_until_idle
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

import lstmdet
from lstmdet.engine.malloc import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128-val" / "images"
T = TypeVar("T")


def in_fresh_process(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` in a new Python process, so that neither path inherits the other's
    process state (lstmdet.detect tunes the allocator of its process, see lstmdet/engine/malloc.py)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def naive_child(weights: str | None, files: list[Path]) -> float:
    """In a fresh process: load the model, warm up on 8 files, then time :func:`naive_loop`."""
    torch.set_num_threads(2)
    model = lstmdet.load(weights)
    naive_loop(model, files[:8])
    return naive_loop(model, files)


def detect_child(weights: str | None, src: Path, work: Path, options: dict[str, int | None]) -> tuple[float, float]:
    """In a fresh process: one untimed warm-up call, then time :func:`lstmdet_detect`."""
    torch.set_num_threads(2)
    lstmdet_detect(weights, src, work / "warm-up", **options)
    return lstmdet_detect(weights, src, work / "timed", **options)


def naive_loop(model: torch.nn.Module, files: list[Path]) -> float:
    """Images per second of the simplest correct loop a user would write."""
    start = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            image = pil_to_tensor(Image.open(path).convert("RGB")).float() / 255.0
            model.predict([image])
    return len(files) / (time.perf_counter() - start)


def lstmdet_detect(weights: str | None, src: Path, out: Path, **options: int | None) -> tuple[float, float]:
    """``lstmdet.detect`` (default options unless ``options`` give ``batch_size`` or ``workers``):
    images/s over the whole call (model loading and worker start-up included), and the figure it
    reports for its processing loop."""
    start = time.perf_counter()
    options = {k: v for k, v in options.items() if v is not None}
    summary = lstmdet.detect(src, out, weights, progress=False, **options)
    return summary["images"] / (time.perf_counter() - start), summary["images_per_s"]


def peak_rss_mb(weights: str | None, count: int, work: Path) -> float:
    """Max RSS (MB) of a ``lstmdet detect`` subprocess over ``count`` generated 160x120 images."""
    src = work / f"imgs{count}"
    src.mkdir()
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(10)]
    for i in range(count):
        Image.fromarray(base[i % 10]).save(src / f"{i:05d}.png", compress_level=1)
    command = [str(Path(sys.executable).with_name("lstmdet")), "detect", str(src), "--out", str(work / f"out{count}"),
               "--batch-size", "8", "--workers", "2"] + (["--weights", weights] if weights else [])  # fmt: skip
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def encoder_cost(repeats: int = 15) -> dict[str, float]:
    """Median ms per batch of 16 scenes (128x128) for the identity and bilstm digit detectors.

    The two models run alternately (so that a slow spell of the machine hits both), with the
    allocator tuned as ``lstmdet detect`` tunes it (less noise from page faults).
    """
    keep_freed_memory()
    torch.manual_seed(0)
    images = [torch.rand(3, 128, 128) for _ in range(16)]
    models = {}
    for name in ("digits_det_identity", "digits_det_bilstm"):
        models[name] = lstmdet.create_model(ROOT / "configs" / f"{name}.yaml").eval()
        models[name].head.score_thresh = 0.5  # random weights: keep post-processing comparable and small
        models[name].predict(images)
    runs: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.predict(images)
            runs[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(times) for name, times in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="checkpoint (default: the shipped default model)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=5, help="naive and detect runs, interleaved; medians")
    parser.add_argument("--batch-size", type=int, help="detect batch size (default: detect's own default)")
    parser.add_argument("--workers", type=int, help="detect loader processes (default: detect's own default)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 500 vs 5,000 images memory test")
    args = parser.parse_args()
    torch.set_num_threads(2)
    files = sorted(COCO128.glob("*.jpg"))
    options = {"batch_size": args.batch_size, "workers": args.workers}
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        naive, whole, loop = [], [], []
        # Interleaved, so that a slow spell of the machine hits both; each measurement in a fresh
        # process after its own warm-up (the page cache holds the photos; oneDNN has seen the shapes).
        for repeat in range(args.repeats):
            wait_until_idle()
            naive.append(in_fresh_process(naive_child, args.weights, files))
            wait_until_idle()
            rate, loop_rate = in_fresh_process(detect_child, args.weights, COCO128, work / f"detect{repeat}", options)
            whole.append(rate)
            loop.append(loop_rate)
        results["naive_images_per_s"] = statistics.median(naive)
        results["detect_images_per_s"] = statistics.median(whole)
        results["detect_loop_images_per_s"] = statistics.median(loop)
        results["speedup"] = results["detect_images_per_s"] / results["naive_images_per_s"]
        results["speedup_per_repeat"] = [w / n for w, n in zip(whole, naive, strict=True)]
        print(f"coco128 ({len(files)} photos, median of {args.repeats}): naive {results['naive_images_per_s']:.1f} "
              f"img/s, lstmdet.detect {results['detect_images_per_s']:.1f} img/s (loop "
              f"{results['detect_loop_images_per_s']:.1f}) -> {results['speedup']:.2f}x (target >= 1.5x); per repeat "
              + ", ".join(f"{r:.2f}x" for r in results["speedup_per_repeat"]))  # fmt: skip
        if args.skip_memory:
            return print_cost(results, args.json)
        results["rss_500_mb"] = peak_rss_mb(args.weights, 500, work)
        results["rss_5000_mb"] = peak_rss_mb(args.weights, 5000, work)
        growth = results["rss_5000_mb"] / results["rss_500_mb"] - 1
        results["rss_growth"] = growth
        print(f"peak RSS: 500 images {results['rss_500_mb']:.0f} MB, 5000 images {results['rss_5000_mb']:.0f} MB "
              f"-> {growth:+.1%} (target <= +10%)")  # fmt: skip
    print_cost(results, args.json)


def print_cost(results: dict, json_path: Path | None) -> None:
    """Measure and print the encoder cost, then write ``results`` to ``json_path``."""
    cost = encoder_cost()
    results.update({f"{k}_ms": v for k, v in cost.items()})
    results["bilstm_over_identity"] = cost["digits_det_bilstm"] / cost["digits_det_identity"]
    ratio = results["bilstm_over_identity"]
    print(f"inference, 16 scenes 128x128: identity {cost['digits_det_identity']:.1f} ms, bilstm "
          f"{cost['digits_det_bilstm']:.1f} ms -> {ratio:.2f}x (target <= 1.25x)")  # fmt: skip
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
