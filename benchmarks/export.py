"""Benchmark export: whole detect calls, forward latency per encoder, export time and file size.

Three tables, in one run, printed as markdown for ``benchmarks/RESULTS.md`` (``--json FILE`` also
writes every figure):

1. **Whole ``detect`` call** with the shipped model (``--weights default``) on ``--photos`` (default
   ``../shared/data/coco128-val/images``: 128 COCO photos), PyTorch checkpoint against its ONNX export
   in ONNX Runtime (CPU provider): images/s of the median of ``--detect-repeats`` calls (after one
   untimed warm-up call on 8 photos) and the ratio ONNX Runtime / PyTorch (the issue's target: >= 1.3).
2. **Per encoder** forward latency, below.
3. **Export time and file size** per model (the shipped one and each encoder's).

For each encoder (``identity``, ``lstm``, ``bilstm``, ``convlstm``) the ``digits_det`` recipe's
detector (``configs/digits_det_identity.yaml`` with that encoder; random weights, nothing trained) is
exported to ONNX and TorchScript (seconds, MB), then one forward pass of a batch of images at the
model's input size is timed in PyTorch (``model.predict``; ``predict_step`` for the stateful
``convlstm``, one frame per stream) and in ONNX Runtime (CPU provider; one step from the zero state
for ``convlstm``), both including post-processing (decoding, NMS). The median of ``--repeats`` runs
after ``--warmup`` is reported, with both given ``--threads`` threads.

Usage::

    python benchmarks/export.py [--encoders identity bilstm] [--batches 1 16] [--size 128] [--repeats 10]
                                [--threads 2] [--json results.json]
    python benchmarks/export.py --size 64 --batches 1 2 --repeats 2 --warmup 1 --photos tests/data/coco30/images \
        --detect-images 6 --no-wait-idle   # a quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from _common import wait_until_idle

import lstmdet
from lstmdet.checkpoint import default_model_path
from lstmdet.export import export
from lstmdet.export.contract import input_size
from lstmdet.export.runtime import OnnxModel
from lstmdet.model import build_model

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = {
    "identity": {"name": "identity"},
    "lstm": {"name": "lstm", "hidden": 64},
    "bilstm": {"name": "bilstm", "hidden": 32},
    "convlstm": {"name": "convlstm", "hidden": 64},
}


DETECT_COLUMNS = ["model", "images", "torch_img_per_s", "ort_img_per_s", "ratio", "torch_s", "ort_s"]
SIZE_COLUMNS = ["model", "onnx_export_s", "onnx_mb", "torchscript_export_s", "torchscript_mb"]


def model_for(encoder: str, size: int) -> torch.nn.Module:
    """The digits_det detector with ``encoder`` at ``size x size``, random weights, eval mode."""
    raw = yaml.safe_load((ROOT / "configs" / "digits_det_identity.yaml").read_text())
    raw = {"task": raw["task"], "model": raw["model"]}
    raw["model"]["encoder"] = ENCODERS[encoder]
    raw["model"]["input"] = {"size": size, "max_size": size}
    torch.manual_seed(0)
    return build_model(raw).eval()


def median_seconds(fn: Any, repeats: int, warmup: int, wait_idle: bool) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if wait_idle:
            wait_until_idle()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(encoder: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Export figures and latencies of one encoder's model."""
    model = model_for(encoder, args.size)
    row: dict[str, Any] = {"encoder": encoder}
    files = {}
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".torchscript")):
        start = time.perf_counter()
        files[fmt] = export(model, folder / f"{encoder}{suffix}", format=fmt, check=False)
        row[f"{fmt}_export_s"] = round(time.perf_counter() - start, 2)
        row[f"{fmt}_mb"] = round(files[fmt].stat().st_size / 1e6, 2)
    runtime = OnnxModel(files["onnx"], "cpu", threads=args.threads)
    height, width = input_size(model.config)
    for batch in args.batches:
        images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
        # stateful: one frame per stream from a fresh state, as the ONNX step from zeros
        run_torch = partial(model.predict_step if model.stateful else model.predict, list(images))
        run_ort = partial(runtime.run, images.numpy())  # (zero state for a stateful model)
        for name, fn in (("torch", run_torch), ("ort", run_ort)):
            row[f"{name}_ms_b{batch}"] = round(1e3 * median_seconds(fn, args.repeats, args.warmup, args.wait_idle), 2)
    return row


def bench_detect(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Whole ``lstmdet.detect`` calls on the photos: the shipped checkpoint against its ONNX export."""
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = photos[: args.detect_images] if args.detect_images else photos
    src, warm = folder / "photos", folder / "warm"
    for target, chosen in ((src, photos), (warm, photos[:8])):
        target.mkdir()
        for path in chosen:
            (target / path.name).symlink_to(path.resolve())
    start = time.perf_counter()
    onnx_path = export(default_model_path(), folder / "default.onnx")
    row: dict[str, Any] = {"model": "shipped (default.pt)", "images": len(photos)}
    row["onnx_export_s"] = round(time.perf_counter() - start, 2)
    row["onnx_mb"] = round(onnx_path.stat().st_size / 1e6, 2)
    row["pt_mb"] = round(default_model_path().stat().st_size / 1e6, 2)
    start = time.perf_counter()
    script = export(default_model_path(), folder / "default.torchscript", format="torchscript")
    row["torchscript_export_s"] = round(time.perf_counter() - start, 2)
    row["torchscript_mb"] = round(script.stat().st_size / 1e6, 2)
    for name, weights in (("torch", default_model_path()), ("ort", onnx_path)):
        runs = iter(range(10**6))
        lstmdet.detect(warm, folder / f"warm-{name}", weights, progress=False, exist_ok=True)

        def call(weights: Path = weights, name: str = name, runs: Any = runs) -> None:
            lstmdet.detect(src, folder / f"out-{name}-{next(runs)}", weights, progress=False)

        seconds = median_seconds(call, args.detect_repeats, 0, args.wait_idle)
        row[f"{name}_s"] = round(seconds, 2)
        row[f"{name}_img_per_s"] = round(len(photos) / seconds, 2)
    row["ratio"] = round(row["ort_img_per_s"] / row["torch_img_per_s"], 2)
    return row


def markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of ``rows`` (``columns`` in order)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--size", type=int, default=128, help="input side in pixels (default 128, the recipe's)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--photos",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "coco128-val" / "images",
        help="folder of photos for the whole detect call (default ../shared/data/coco128-val/images)",
    )
    parser.add_argument("--detect-images", type=int, default=0, help="use only the first N photos (0: all)")
    parser.add_argument("--detect-repeats", type=int, default=3, help="timed detect calls per runtime (median)")
    parser.add_argument("--no-detect", dest="detect", action="store_false", help="skip the whole detect call")
    parser.add_argument("--no-wait-idle", dest="wait_idle", action="store_false", help="do not wait for an idle CPU")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON")
    args = parser.parse_args(argv)
    if args.detect and not args.photos.is_dir():
        parser.error(f"--photos {args.photos} is not a folder; give the COCO photos (or --no-detect)")
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"threads": args.threads, "size": args.size, "batches": args.batches}
    with tempfile.TemporaryDirectory() as tmp:
        if args.detect:
            result["detect"] = bench_detect(args, Path(tmp))
            print(json.dumps(result["detect"]), file=sys.stderr)
        rows = []
        for encoder in args.encoders:
            rows.append(bench(encoder, args, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr)
        result["encoders"] = rows
    out = [f"CPU, {args.threads} threads (torch and ONNX Runtime intra-op), torch {torch.__version__}."]
    if args.detect:
        d = result["detect"]
        out += ["", f"Whole `detect` call, shipped model, {d['images']} photos (images/s, median of "
                f"{args.detect_repeats} calls):", "",
                markdown([d], DETECT_COLUMNS)]  # fmt: skip
    latency = [c for c in rows[0] if c.endswith(tuple(f"_b{b}" for b in args.batches))]
    out += ["", f"Forward latency per encoder (ms, {args.size}x{args.size}, post-processing included, "
            f"median of {args.repeats}):", "", markdown(rows, ["encoder", *latency])]  # fmt: skip
    sizes = [{"model": f"encoder {r['encoder']}", **r} for r in rows]
    if args.detect:
        sizes.insert(0, result["detect"])
    out += ["", "Export time (s) and file size (MB):", "",
            markdown(sizes, SIZE_COLUMNS)]  # fmt: skip
    print("\n".join(out))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
