"""Where a whole ``detect`` call spends its time, PyTorch against ONNX Runtime (issue 15's profile).

Usage::

    python benchmarks/export_profile.py [--photos DIR] [--threads 2] [--json FILE]

Exports the shipped model to ONNX, then runs ``lstmdet.detect`` on the photos once per runtime
under ``cProfile`` with ``workers=0`` (decoding in the calling process, so that the parts add up
to the call), after one untimed warm-up call each. Reported per runtime: the whole call and its
parts (reading and resizing the images, the model including post-processing, writing records
and files), and the model-only ratio, which bounds what the whole call can gain from a faster
runtime (Amdahl).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Profile entries (file suffix, function) whose cumulative time is each part of the call.
PARTS = {
    "read": ("lstmdet/engine/detect_inputs.py", "batches"),
    "model_torch": ("lstmdet/model.py", "predict"),
    "model_onnx": ("lstmdet/export/runtime.py", "predict"),
    "record": ("lstmdet/engine/detect.py", "_record"),
    "finalize": ("lstmdet/engine/writers.py", "finalize"),
}


def profile_call(photos: Path, out: Path, weights: str | None) -> dict[str, float]:
    """Seconds of the whole call and of each part in :data:`PARTS` (cumulative, from cProfile)."""
    import lstmdet

    lstmdet.detect(photos, out, weights, progress=False, workers=0)  # warm-up
    shutil.rmtree(out)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    lstmdet.detect(photos, out, weights, progress=False, workers=0)
    profiler.disable()
    total = time.perf_counter() - started
    shutil.rmtree(out)
    stats = pstats.Stats(profiler).stats  # {(file, line, function): (cc, nc, tt, ct, callers)}
    parts = {"total": total}
    for part, (suffix, function) in PARTS.items():
        seconds = [ct for (file, _, fn), (_, _, _, ct, _) in stats.items() if file.endswith(suffix) and fn == function]
        if seconds:
            parts[part] = max(seconds)
    return {k: round(v, 3) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "coco128-val" / "images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    import torch

    from lstmdet.export import export

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lstmdet-profile-") as tmp:
        onnx = Path(tmp) / "default.onnx"
        export("default", onnx)
        results: dict[str, Any] = {
            "pytorch": profile_call(args.photos, Path(tmp) / "out", None),
            "onnxruntime": profile_call(args.photos, Path(tmp) / "out", str(onnx)),
        }
    torch_model, ort_model = results["pytorch"]["model_torch"], results["onnxruntime"]["model_onnx"]
    results["model_ratio"] = round(torch_model / ort_model, 2)
    results["whole_ratio"] = round(results["pytorch"]["total"] / results["onnxruntime"]["total"], 2)
    rest = results["pytorch"]["total"] - torch_model
    results["whole_ratio_if_model_took_no_time_in_onnx"] = round(results["pytorch"]["total"] / rest, 2)
    print(f"\nwhole detect call on {args.photos} with workers=0, {args.threads} threads (seconds):\n")
    print("| runtime | total | read + resize | model (+ post-processing) | records | files |")
    print("|---|---|---|---|---|---|")
    for name, r in (("PyTorch", results["pytorch"]), ("ONNX Runtime", results["onnxruntime"])):
        model = r.get("model_torch", r.get("model_onnx"))
        print(f"| {name} | {r['total']} | {r.get('read')} | {model} | {r.get('record')} | {r.get('finalize')} |")
    bound = results["whole_ratio_if_model_took_no_time_in_onnx"]
    print(f"\nmodel only: ONNX Runtime {results['model_ratio']}x PyTorch; whole call {results['whole_ratio']}x; "
          f"bound if the model took no time at all: {bound}x")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
