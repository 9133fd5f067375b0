"""torchvision's COCO detectors as lstmdet models (issue 16): load time, parameters and ``detect`` images/s on
CPU, and what inserting each encoder costs (FLOPs from ``lstmdet model``, measured latency).

Nothing is downloaded: each detector's state dict, randomly initialised (the same cost as the COCO
weights), is written into a temporary torch hub cache under the file name torchvision's weights API
expects, and lstmdet loads it from there as it would load the real file. Photos: the first
``--images`` of ``../shared/data/coco128-val`` (this machine's real data).

    .venv/bin/python benchmarks/pretrained.py --json benchmarks/pretrained.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision.models as tvm
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "data" / "coco128-val" / "images"
ENCODERS = {
    "identity": {"name": "identity"},
    "lstm": {"name": "lstm", "hidden": 64, "init": "identity"},
    "bilstm": {"name": "bilstm", "hidden": 32, "init": "identity"},
    "convlstm": {"name": "convlstm", "hidden": 64, "init": "identity"},
}


def write_weights(builder: str) -> None:
    from lstmdet.pretrained import weights_file

    path, _ = weights_file(builder)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(tvm.get_model(builder, weights=None, weights_backbone=None, num_classes=91).state_dict(), path)


def detect_speed(builder: str, photos: Path, work: Path, repeats: int) -> dict[str, Any]:
    import lstmdet

    runs = []
    for i in range(repeats):
        summary = lstmdet.detect(photos, work / f"{builder}-{i}", f"torchvision:{builder}", progress=False)
        runs.append(summary["images_per_s"])
    return {"images_per_s": round(statistics.median(runs), 2), "runs": runs, "images": summary["images"]}


def encoder_costs(builder: str, images: list[torch.Tensor], repeats: int) -> list[dict[str, Any]]:
    from lstmdet.model import build_model
    from lstmdet.summary import describe_model

    rows = []
    for name, encoder in ENCODERS.items():
        config = {"task": "detect", "model": {"pretrained": f"torchvision:{builder}", "encoder": encoder}}
        model = build_model(config).eval()
        flops = describe_model(model)["flops_per_image"]
        with torch.no_grad():
            model(images[:1])
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                model(images)
                times.append((time.perf_counter() - started) / len(images))
        rows.append({"encoder": name, "gflops_total": round(flops["total"] / 1e9, 1),
                     "gflops_encoder": round(flops.get("encoder", 0) / 1e9, 2),
                     "params_encoder": sum(p.numel() for p in model.encoders.parameters()),
                     "ms_per_image": round(1000 * statistics.median(times), 1)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=32, help="photos for detect (default 32)")
    p.add_argument("--latency-images", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lstmdet-pretrained-"))
    os.environ["TORCH_HOME"] = str(work / "torch")  # a private hub cache: nothing downloaded, nothing left behind
    torch.hub._hub_dir = None
    photos = work / "photos"
    photos.mkdir()
    for path in sorted(PHOTOS.glob("*.jpg"))[: args.images]:
        shutil.copy2(path, photos / path.name)
    images = [pil_to_tensor(Image.open(f).convert("RGB")).float() / 255 for f in sorted(photos.iterdir())]
    results: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads, "detectors": {}}
    try:
        from lstmdet.model import build_model
        from lstmdet.pretrained import PRESETS

        for builder in PRESETS:
            write_weights(builder)
            started = time.perf_counter()
            model = build_model({"task": "detect", "model": {"pretrained": f"torchvision:{builder}"}})
            load = time.perf_counter() - started
            entry = {
                "load_seconds": round(load, 2),
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            }
            entry["detect"] = detect_speed(builder, photos, work, args.repeats)
            results["detectors"][builder] = entry
            print(builder, entry, flush=True)
        results["encoders_fcos"] = encoder_costs("fcos_resnet50_fpn", images[: args.latency_images], args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
