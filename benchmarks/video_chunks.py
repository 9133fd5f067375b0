"""Chunked video jobs (issue 14): mAP of chunked against sequential, and two workers against one.

1. Accuracy. Long moving-digit test videos (H.264 MP4 + COCO-VID, ``--videos`` of ``--frames`` frames,
   the ConvLSTM recipe's occlusion) are detected by the ConvLSTM recipe's model three ways, in process
   through the same code the workers run (:mod:`lstmdet.engine.shards`): sequentially (one pass, state
   carried through each video), in chunks of ``--chunk-frames`` with each warm-up length of
   ``--warmups``, and per frame (chunks of one frame, no warm-up: no memory at all). COCO mAP@[.5:.95]
   of each against the annotations; the gap to sequential for each warm-up length.
2. Scale. One long video (``--scale-frames``) as a queued job on one and then two real ``lstmdet worker``
   processes (one core each: ``--concurrency 1``, ``LSTMDET_TORCH_THREADS=1``) through a private
   ``redis-server``; seconds from submit to the job's end, and the ratio.

``--weights`` takes a trained checkpoint; without it the recipe is trained first
(``configs/digits_video_convlstm.yaml``, about 10 minutes on 2 cores). Run alone on the machine:

    .venv/bin/python benchmarks/video_chunks.py --json benchmarks/video_chunks.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import lstmdet
from lstmdet.data.video_dataset import write_video_dataset
from lstmdet.engine.detect import DetectOptions, open_detector
from lstmdet.engine.metrics import coco_detection_metrics
from lstmdet.engine.shards import merge_shards, plan_shards, run_shard

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "configs" / "digits_video_convlstm.yaml"
SCORE = 0.05  # the head's own threshold, as `lstmdet eval` scores


def make_videos(out: Path, clips: int, frames: int, seed: int) -> Path:
    """Write ``clips`` test clips of ``frames`` frames as MP4 + COCO-VID; returns the annotations file."""
    dataset = lstmdet.create_component("datasets", "digits_video", clips=clips, frames=frames, size=96, seed=seed,
                                       occlusion=0.3, split="test")  # fmt: skip
    return Path(write_video_dataset(dataset, out)["json"])


def score(annotations: Path, detections: Path, classes: list[str]) -> float:
    """mAP@[.5:.95] of a run's ``detections.jsonl`` against the COCO-VID annotations."""
    coco = json.loads(annotations.read_text())
    label = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    boxes: dict[int, list] = {image["id"]: [] for image in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append(([x, y, x + w, y + h], label[a["category_id"]]))
    found: dict[tuple[str, int], list] = {}
    for line in detections.read_text().splitlines():
        record = json.loads(line)
        dets = record.get("detections", [])
        found[(record["file"], record["frame_index"])] = [
            ([d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]], d["score"],
             label[d["category_id"]]) for d in dets
        ]  # fmt: skip
    gt, predictions = [], []
    for image in coco["images"]:
        truth = boxes[image["id"]]
        gt.append({"boxes": torch.tensor([b for b, _ in truth], dtype=torch.float32).reshape(-1, 4),
                   "labels": torch.tensor([k for _, k in truth], dtype=torch.int64),
                   "width": image["width"], "height": image["height"]})  # fmt: skip
        dets = found.get((Path(image["file_name"]).name, image["frame_id"]), [])
        predictions.append({"boxes": torch.tensor([b for b, _, _ in dets], dtype=torch.float32).reshape(-1, 4),
                            "scores": torch.tensor([s for _, s, _ in dets], dtype=torch.float32),
                            "labels": torch.tensor([k for _, _, k in dets], dtype=torch.int64)})  # fmt: skip
    return round(coco_detection_metrics(gt, predictions, classes)["map"], 4)


def chunked(src: Path, out: Path, weights: Path, chunk_frames: int, warmup: int) -> float:
    """Run the videos of ``src`` as a job's chunks in this process; returns the seconds."""
    started = time.perf_counter()
    detector = open_detector(weights, device="cpu")
    opts = DetectOptions(workers=0, score_thresh=SCORE)
    plan = plan_shards(src, out, detector, opts, chunk_frames=chunk_frames, warmup_frames=warmup, job="bench")
    for index in range(plan.count):
        run_shard(out, plan, index, detector)
    merge_shards(out)
    return time.perf_counter() - started


def accuracy(args: argparse.Namespace, work: Path, weights: Path) -> dict[str, Any]:
    annotations = make_videos(work / "long", args.videos, args.frames, args.seed)
    src = annotations.parent / "videos"
    classes = list(torch.load(weights, map_location="cpu", weights_only=False)["config"]["model"]["classes"])
    results: dict[str, Any] = {"videos": args.videos, "frames": args.frames, "chunk_frames": args.chunk_frames}
    started = time.perf_counter()
    lstmdet.detect(src, work / "sequential", weights, workers=0, score_thresh=SCORE, progress=False)
    results["sequential"] = {"map": score(annotations, work / "sequential" / "detections.jsonl", classes),
                             "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    seconds = chunked(src, work / "per-frame", weights, 1, 0)
    results["per_frame"] = {"map": score(annotations, work / "per-frame" / "detections.jsonl", classes),
                            "seconds": round(seconds, 1)}  # fmt: skip
    results["chunked"] = []
    for warmup in args.warmups:
        out = work / f"chunked-w{warmup}"
        seconds = chunked(src, out, weights, args.chunk_frames, warmup)
        value = score(annotations, out / "detections.jsonl", classes)
        gap = round(results["sequential"]["map"] - value, 4)
        results["chunked"].append({"warmup": warmup, "map": value, "gap": gap,
                                   "seconds": round(seconds, 1)})  # fmt: skip
        print(f"warm-up {warmup:3d}: mAP {value:.4f} (gap {results['chunked'][-1]['gap']:+.4f})", flush=True)
    return results


def scale(args: argparse.Namespace, work: Path, weights: Path) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from workers import Cluster

    annotations = make_videos(work / "one", 1, args.scale_frames, args.seed + 1)
    src = annotations.parent / "videos"
    shutil.copy2(weights, work / "model.pt")
    results: dict[str, Any] = {"frames": args.scale_frames, "chunk_frames": args.scale_chunk_frames}
    for count in (1, 2):
        cluster = Cluster(work / f"cluster{count}")
        cluster.work.mkdir()
        try:
            cluster.start_redis()
            env = {"LSTMDET_TORCH_THREADS": "1", "LSTMDET_DATA_ROOTS": str(work)}
            cluster.env["LSTMDET_DATA_ROOTS"] = str(work)
            for i in range(count):
                argv = [
                    str(Path(sys.executable).with_name("lstmdet")),
                    "worker",
                    "--queues",
                    "cpu",
                    "--concurrency",
                    "1",
                ]
                cluster.start_worker(argv, env, f"worker{i}")
            from lstmdet.workers.client import JobClient
            from lstmdet.workers.settings import Settings

            client = JobClient(Settings(broker_url=cluster.url, result_url=cluster.url, data_roots=(work.resolve(),)))
            started = time.perf_counter()
            job = client.submit_detect(src, work / f"queued{count}", work / "model.pt", workers=0,
                                       chunk_frames=args.scale_chunk_frames, score_thresh=SCORE)  # fmt: skip
            record = client.wait(job, timeout=3600)
            seconds = time.perf_counter() - started
            assert record["state"] == "succeeded", record
            results[f"workers_{count}"] = {"seconds": round(seconds, 1), "fps": round(args.scale_frames / seconds, 1)}
            print(f"{count} worker(s): {seconds:.1f} s", flush=True)
        finally:
            cluster.close()
    results["speedup"] = round(results["workers_1"]["seconds"] / results["workers_2"]["seconds"], 2)
    same = (work / "queued1" / "detections.jsonl").read_bytes() == (work / "queued2" / "detections.jsonl").read_bytes()
    results["same_files"] = same
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, help="ConvLSTM recipe checkpoint (default: train the recipe first)")
    p.add_argument("--epochs", type=int, default=16, help="when training: epochs (the recipe's 16)")
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--chunk-frames", type=int, default=32)
    p.add_argument("--warmups", type=lambda s: [int(v) for v in s.split(",")], default=[0, 2, 4, 8, 16, 32])
    p.add_argument("--scale-frames", type=int, default=2048)
    p.add_argument("--scale-chunk-frames", type=int, default=256)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--work", type=Path, help="keep the files here (default: a temporary folder)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    work = args.work or Path(tempfile.mkdtemp(prefix="lstmdet-video-chunks-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"torch": torch.__version__}
    weights = args.weights
    if weights is None:
        started = time.perf_counter()
        lstmdet.train(RECIPE, work / "recipe", overrides=[f"train.epochs={args.epochs}"])
        weights = work / "recipe" / "best.pt"
        results["training_minutes"] = round((time.perf_counter() - started) / 60, 1)
    results["weights"] = str(weights)
    results["accuracy"] = accuracy(args, work, weights)
    if not args.skip_scale:
        results["scale"] = scale(args, work, weights)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
