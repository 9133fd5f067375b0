"""In-process video detection: CPU throughput on a 1280x720 H.264 video, and peak memory against video length.

Usage::

    python benchmarks/video.py [--seconds 20] [--width 1280] [--height 720] [--fps 25] [--device cpu]
                               [--short-seconds 60] [--long-seconds 600] [--json FILE]

1. Throughput, in one process, with the model ``lstmdet detect`` ships (no ``--weights``) and its
   default options (batch 8, CPU):

   * ``decode_fps``: :func:`lstmdet.data.video.read_frames` alone over the whole video (FFmpeg's
     threads, conversion to RGB included), as detection reads it;
   * ``model_fps``: the model alone on frames held in memory (conversion to the model input, forward
     pass, post-processing), batched as detection batches them;
   * ``whole_fps``: ``lstmdet detect`` on the video file in a fresh process, as users run it
     (``summary.json``'s ``fps``: decoding, model and writing ``detections.jsonl``).

   Target: ``whole_fps >= serial_fps = 1 / (1/decode_fps + 1/model_fps)``: decoding overlaps the model
   (a background thread) instead of adding to it. The three are measured back to back, twice, medians.
   With ``--device cuda``: ``whole_fps >= 0.9 * min(decode_fps, model_fps)``.
2. Peak memory: max RSS of a ``lstmdet detect`` subprocess (``getrusage(RUSAGE_CHILDREN)`` of a wrapper
   process) on a ``--long-seconds`` and a ``--short-seconds`` video (320x240, 25 fps, moving digits).
   Target: long within +10% of short (frames are never collected).

The videos are generated here (moving MNIST digits scaled up on a drifting background, libx264) in a
temporary folder; nothing under ``/work/shared`` is needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from _common import wait_until_idle

import lstmdet
from lstmdet.data.video import VideoEncoder, read_frames
from lstmdet.engine.detect import _runner, open_detector
from lstmdet.engine.detect_inputs import model_input
from lstmdet.engine.detect_options import DetectOptions

#: Seconds of distinct content; longer videos repeat it (the encoder still encodes every frame).
LOOP_SECONDS = 20


def make_video(path: Path, seconds: float, width: int, height: int, fps: int) -> Path:
    """Write ``seconds`` of moving digits at ``width`` x ``height`` as H.264 (``crf`` 20, like a camera file)."""
    side = max(8, min(width, height) // 4)
    period = max(1, round(min(seconds, LOOP_SECONDS) * fps))
    digits = lstmdet.create_component("datasets", "digits_video", clips=1, frames=period, size=side, seed=0,
                                      split="test", digits=(2, 3), occlusion=0.0)  # fmt: skip
    clip = digits[0][0]
    scale = max(1, min(width, height) // side)
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    encoder = VideoEncoder(path, width, height, Fraction(fps))
    try:
        for t in range(round(seconds * fps)):
            k = t % period
            canvas = ((ramp + 40 * np.sin(t / fps)) % 80).astype(np.uint8).repeat(height, axis=0).repeat(3, axis=2)
            big = clip[k].repeat(scale, axis=0).repeat(scale, axis=1)[:height, :width]
            x = int((width - big.shape[1]) * (0.5 + 0.5 * np.sin(2 * np.pi * k / period)))
            canvas[: big.shape[0], x : x + big.shape[1]] = np.maximum(canvas[: big.shape[0], x : x + big.shape[1]], big)
            encoder.write(canvas, t / fps)
    finally:
        encoder.close()
    return path


def decode_fps(path: Path) -> float:
    """Frames per second of :func:`read_frames` alone over the whole video."""
    started, count = time.perf_counter(), 0
    for _ in read_frames(path):
        count += 1
    return count / (time.perf_counter() - started)


def model_fps(path: Path, frames: int, device: str, batch_size: int = 8) -> float:
    """Frames per second of the shipped model alone (as ``lstmdet detect`` runs it), on frames in memory."""
    detector = open_detector("default", device=device)
    runner = _runner(detector, DetectOptions())
    net = detector.model.config["model"]["input"]
    uint8 = detector.device.type == "cuda"  # as detection converts frames
    images = [f.image for f in read_frames(path, max_frames=batch_size * 2)]
    batches = max(1, frames // batch_size)

    def one(b: int) -> None:
        batch = [images[(b * batch_size + i) % len(images)] for i in range(batch_size)]
        tensors = [model_input(image, uint8=uint8, fit=(net["size"], net["max_size"])) for image in batch]
        runner.run([(i, t, None) for i, t in enumerate(tensors)], ["v"] * batch_size if detector.model.stateful
                   else None)  # fmt: skip

    one(0)  # warm-up
    started = time.perf_counter()
    for b in range(batches):
        one(b)
    if detector.device.type == "cuda":
        torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - started)


def whole_fps(path: Path, work: Path, run: int, device: str) -> float:
    """``summary.json``'s ``fps`` of ``lstmdet detect`` on the video (default model and options), run as users
    run it: a fresh process (after the other measurements in this one, the same call ran 30 % slower)."""
    out = work / f"whole{run}"
    command = [str(Path(sys.executable).with_name("lstmdet")), "detect", str(path), "--out", str(out), "--quiet",
               "--device", device]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return float(json.loads((out / "summary.json").read_text())["fps"])


def peak_rss_mb(path: Path, out: Path) -> float:
    """Max RSS (MB) of a ``lstmdet detect`` subprocess on ``path``."""
    command = [str(Path(sys.executable).with_name("lstmdet")), "detect", str(path), "--out", str(out), "--quiet",
               "--device", "cpu"]  # fmt: skip
    code = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.PIPE, text=True); print(r.returncode, r.stderr[-500:] if r.returncode else '', "
        "file=sys.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, check=True)
    if not result.stderr.startswith("0"):
        raise SystemExit(f"lstmdet detect failed on {path}: {result.stderr}")
    return int(result.stdout.strip()) / 1024


def memory_peaks(args: argparse.Namespace, work: Path) -> dict:
    """Peak RSS of ``lstmdet detect`` on a short and a long 320x240 video."""
    memory: dict = {}
    for label, seconds in (("short", args.short_seconds), ("long", args.long_seconds)):
        path = make_video(work / f"{label}.mp4", seconds, 320, 240, 25)
        wait_until_idle()
        memory[f"{label}_mb"] = peak_rss_mb(path, work / f"mem_{label}")
        path.unlink()
    memory.update(short_seconds=args.short_seconds, long_seconds=args.long_seconds,
                  ratio=memory["long_mb"] / memory["short_mb"])  # fmt: skip
    memory["target_met"] = memory["ratio"] <= 1.10
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="throughput video length (default 20)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--model-frames", type=int, default=200, help="frames timed for model_fps (default 200)")
    parser.add_argument("--repeats", type=int, default=2, help="throughput measurements (medians; default 2)")
    parser.add_argument("--short-seconds", type=float, default=60.0, help="memory: short video (default 60)")
    parser.add_argument("--long-seconds", type=float, default=600.0, help="memory: long video (default 600)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: target whole >= 0.9 min(decode, model)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--skip-memory", action="store_true", help="throughput only")
    args = parser.parse_args()

    results: dict = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="lstmdet-bench-video-") as tmp:
        work = Path(tmp)
        video = make_video(work / "hd.mp4", args.seconds, args.width, args.height, args.fps)
        runs: dict[str, list[float]] = {"decode_fps": [], "model_fps": [], "whole_fps": []}
        for run in range(args.repeats):
            wait_until_idle()
            runs["decode_fps"].append(decode_fps(video))
            runs["model_fps"].append(model_fps(video, args.model_frames, args.device))
            runs["whole_fps"].append(whole_fps(video, work, run, args.device))
        medians = {key: statistics.median(values) for key, values in runs.items()}
        serial = 1 / (1 / medians["decode_fps"] + 1 / medians["model_fps"])
        bound = min(medians["decode_fps"], medians["model_fps"])
        target = 0.9 * bound if args.device.startswith("cuda") else serial
        results["throughput"] = {
            "video": f"{args.width}x{args.height} {args.fps} fps {args.seconds:g} s H.264", "runs": runs, **medians,
            "serial_fps": serial, "whole_over_serial": medians["whole_fps"] / serial,
            "min_fps": bound, "whole_over_min": medians["whole_fps"] / bound, "device": args.device,
            "target": "whole >= 0.9 min" if args.device.startswith("cuda") else "whole >= serial",
            "target_met": medians["whole_fps"] >= target,
        }  # fmt: skip
        print(json.dumps(results["throughput"], indent=1), flush=True)

        if not args.skip_memory:
            results["memory"] = memory_peaks(args, work)
            print(json.dumps(results["memory"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
