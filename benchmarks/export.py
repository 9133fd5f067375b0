"""Benchmark export: time and file size per model, forward latency in ONNX Runtime against PyTorch.

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
    python benchmarks/export.py --size 64 --batches 1 2 --repeats 2 --warmup 1   # a quick check
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

import numpy as np
import torch
import yaml
from _common import wait_until_idle

from lstmdet.export import export
from lstmdet.export.contract import input_size
from lstmdet.export.runtime import make_session
from lstmdet.model import build_model

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = {
    "identity": {"name": "identity"},
    "lstm": {"name": "lstm", "hidden": 64},
    "bilstm": {"name": "bilstm", "hidden": 32},
    "convlstm": {"name": "convlstm", "hidden": 64},
}


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
    session = make_session(files["onnx"], "cpu", threads=args.threads)
    state_inputs = [i for i in session.get_inputs() if i.name != "images"]
    height, width = input_size(model.config)
    for batch in args.batches:
        images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
        feed = {"images": images.numpy()}
        feed.update({i.name: np.zeros((batch, *i.shape[1:]), dtype=np.float32) for i in state_inputs})
        # stateful: one frame per stream from a fresh state, as the ONNX step from zeros
        run_torch = partial(model.predict_step if model.stateful else model.predict, list(images))
        run_ort = partial(session.run, None, feed)
        for name, fn in (("torch", run_torch), ("ort", run_ort)):
            row[f"{name}_ms_b{batch}"] = round(1e3 * median_seconds(fn, args.repeats, args.warmup, args.wait_idle), 2)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--size", type=int, default=128, help="input side in pixels (default 128, the recipe's)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-wait-idle", dest="wait_idle", action="store_false", help="do not wait for an idle CPU")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for encoder in args.encoders:
            rows.append(bench(encoder, args, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr)
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
