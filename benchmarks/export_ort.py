"""ONNX Runtime against PyTorch on the whole ``detect`` call: operator shares, and session variants (issue 15).

Usage::

    python benchmarks/export_ort.py [--photos DIR] [--threads 2] [--repeats 5] [--json FILE]
    python benchmarks/export_ort.py --photos tests/data/coco30/images --images 16 --repeats 1 \
        --no-wait-idle   # a quick check

Two parts, on the shipped model and its ONNX export:

1. **Operator shares** (``--no-ops`` skips): the photos read and resized as ``detect`` does
   (:func:`~lstmdet.engine.detect_inputs.model_input`), in batches of ``--batch-size`` padded as
   ``detect`` pads them (:meth:`OnnxModel._batch`), run once through ONNX Runtime with its own
   profiler (``SessionOptions.enable_profiling``: kernel time per operator type) and once through
   ``model.predict`` under ``torch.profiler`` (self time per aten operator). Shares are what a loaded
   machine still measures well; the seconds are only comparable on a quiet one.
2. **Session variants** (``--no-variants`` skips): whole ``lstmdet.detect`` calls (default options)
   with the PyTorch checkpoint and with the ONNX file under each ONNX Runtime session setting of
   :data:`VARIANTS`, interleaved, ``--repeats`` rounds, median images/s and the ratio to PyTorch.
   The variants change only how ONNX Runtime schedules threads: the detections are the same.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import wait_until_idle

ROOT = Path(__file__).resolve().parents[1]
SPIN_OFF = {"session.intra_op.allow_spinning": "0"}
#: name -> (session config entries, intra-op threads or None for ``--threads``).
VARIANTS: dict[str, tuple[dict[str, str], int | None]] = {
    "sleep (lstmdet's default)": (SPIN_OFF, None),
    "spin during a run only": ({"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}, None),
    "sleep, dynamic_block_base 4": ({**SPIN_OFF, "session.dynamic_block_base": "4"}, None),
    "sleep, 1 intra-op thread": (SPIN_OFF, 1),
}


def detect_batches(photos: list[Path], onnx: Path, batch_size: int) -> tuple[list[list[torch.Tensor]], list[Any]]:
    """The photos as ``detect`` feeds them: per batch the float images, and the ONNX ``(batch, sizes)``."""
    from lstmdet.data.images import read_image
    from lstmdet.engine.detect_inputs import model_input
    from lstmdet.export.runtime import OnnxModel

    runtime = OnnxModel(onnx, device="cpu")
    spec = runtime.config["model"]["input"]
    images = [model_input(read_image(p), uint8=False, fit=(spec["size"], spec["max_size"])) for p in photos]
    groups = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    return groups, [runtime._batch(group) for group in groups]


def ort_op_shares(onnx: Path, padded: list[Any], threads: int, folder: Path) -> dict[str, Any]:
    """ONNX Runtime kernel time per operator type over one pass of ``padded`` (after one warm-up pass)."""
    import onnxruntime as ort

    from lstmdet.export.runtime import SESSION_CONFIG

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    feeds = [{"images": batch, "image_sizes": np.asarray(sizes, dtype=np.int64)} for batch, sizes in padded]
    for feed in feeds:
        session.run(None, feed)
    options.enable_profiling, options.profile_file_prefix = True, str(folder / "ort")
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    for feed in feeds:
        session.run(None, feed)
    seconds = time.perf_counter() - started
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    nodes = 0
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
            nodes += 1
    return {"seconds": round(seconds, 3), "nodes_per_run": nodes // len(feeds), **_shares(per_op)}


def torch_op_shares(groups: list[list[torch.Tensor]]) -> dict[str, Any]:
    """``model.predict`` self time per aten operator over one pass of ``groups`` (after a warm-up pass)."""
    from torch.profiler import ProfilerActivity, profile

    import lstmdet

    model = lstmdet.load()
    for group in groups:
        model.predict(group)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for group in groups:
            model.predict(group)
        seconds = time.perf_counter() - started
    per_op = collections.Counter({e.key: e.self_cpu_time_total for e in prof.key_averages()})
    return {"seconds (profiled)": round(seconds, 3), **_shares(per_op)}


def _shares(per_op: collections.Counter[str], top: int = 10) -> dict[str, Any]:
    total = sum(per_op.values()) or 1
    return {
        "op_seconds": round(total / 1e6, 3),
        "top_ops": [[op, round(us / 1e6, 3), round(us / total, 3)] for op, us in per_op.most_common(top)],
    }


@contextlib.contextmanager
def session_variant(entries: dict[str, str], threads: int | None) -> Iterator[None]:
    """ONNX Runtime sessions made inside get ``entries`` (and ``threads`` intra-op threads when given)."""
    from lstmdet.export import runtime

    saved, saved_threads = dict(runtime.SESSION_CONFIG), torch.get_num_threads()
    runtime.SESSION_CONFIG.clear()
    runtime.SESSION_CONFIG.update(entries)
    if threads is not None:
        torch.set_num_threads(threads)  # make_session's default; torch's own ops in the call follow it too
    try:
        yield
    finally:
        runtime.SESSION_CONFIG.clear()
        runtime.SESSION_CONFIG.update(saved)
        torch.set_num_threads(saved_threads)


def variants(photos: Path, onnx: Path, repeats: int, wait_idle: bool, folder: Path) -> dict[str, Any]:
    """Whole ``detect`` calls, PyTorch and each variant interleaved per round; median images/s and ratios."""
    import lstmdet

    count = sum(1 for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    runs = {"PyTorch": (None, ({}, None)), **{name: (onnx, v) for name, v in VARIANTS.items()}}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, (weights, (entries, threads)) in runs.items():
            context = session_variant(entries, threads) if weights is not None else contextlib.nullcontext()
            if wait_idle:
                wait_until_idle()
            with context:
                started = time.perf_counter()
                lstmdet.detect(photos, folder / f"out-{len(seconds[name])}-{round_}-{hash(name)}", weights,
                               progress=False)  # fmt: skip
                took = time.perf_counter() - started
            if round_:
                seconds[name].append(took)
    out: dict[str, Any] = {}
    base = count / statistics.median(seconds["PyTorch"])
    for name, values in seconds.items():
        rate = count / statistics.median(values)
        out[name] = {
            "img_per_s": round(rate, 2),
            "ratio": round(rate / base, 2),
            "seconds": [round(s, 3) for s in values],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "coco128-val" / "images")
    parser.add_argument("--images", type=int, default=0, help="use only the first N photos (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="as detect's default")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the variants (median)")
    parser.add_argument("--no-ops", dest="ops", action="store_false", help="skip the operator shares")
    parser.add_argument("--no-variants", dest="variants", action="store_false", help="skip the session variants")
    parser.add_argument("--no-wait-idle", dest="wait_idle", action="store_false", help="do not wait for an idle CPU")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON")
    args = parser.parse_args(argv)
    if not args.photos.is_dir():
        parser.error(f"--photos {args.photos} is not a folder; give the COCO photos")

    from lstmdet.export import export

    torch.set_num_threads(args.threads)
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = photos[: args.images] if args.images else photos
    results: dict[str, Any] = {"threads": args.threads, "images": len(photos)}
    with tempfile.TemporaryDirectory(prefix="lstmdet-ort-") as tmp:
        folder = Path(tmp)
        onnx = export("default", folder / "default.onnx")
        if args.ops:
            groups, padded = detect_batches(photos, onnx, args.batch_size)
            results["ort_ops"] = ort_op_shares(onnx, padded, args.threads, folder)
            results["torch_ops"] = torch_op_shares(groups)
            for name in ("ort_ops", "torch_ops"):
                r = results[name]
                print(f"\n{name}: {r}\n\n| operator | seconds | share |\n|---|---|---|")
                print("\n".join(f"| {op} | {s} | {share:.1%} |" for op, s, share in r["top_ops"]))
        if args.variants:
            src = folder / "photos"
            src.mkdir()
            for path in photos:
                (src / path.name).symlink_to(path.resolve())
            results["variants"] = variants(src, onnx, args.repeats, args.wait_idle, folder)
            print(f"\nwhole detect call, {len(photos)} photos, {args.threads} threads, median of {args.repeats}:\n")
            print("| runtime | images/s | ratio to PyTorch |\n|---|---|---|")
            print("\n".join(f"| {n} | {r['img_per_s']} | {r['ratio']}x |" for n, r in results["variants"].items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
