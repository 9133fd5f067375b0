"""``lstmdet export``: write a checkpoint as one ONNX or TorchScript file."""

from __future__ import annotations

import argparse

from lstmdet.cli.arguments import positive_int, unit_interval

EPILOG = """\
The file takes `images`, float32 (N, 3, H, W) RGB in [0, 1] at the model's input size (normalisation is
inside), and returns boxes (N, K, 4) xyxy input pixels, scores (N, K), labels (N, K), num_detections (N,)
for detectors (decoding and NMS inside), or logits (N, num_classes) for classifiers. Stateful models
(convlstm) also take and return their state: state_in_* / state_out_* (zeros start a video). Metadata:
class names, input size and resize policy, config, lstmdet version. `lstmdet detect --weights FILE.onnx`
runs an exported detector with ONNX Runtime. README section "Export" has the whole contract.

exit status: 0 written, 2 usage error (bad checkpoint or option, a part that cannot be exported: named)
"""


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``export`` sub-command."""
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint as ONNX or TorchScript",
        description="Export a checkpoint (config + weights) as one self-contained ONNX or TorchScript file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("weights", metavar="WEIGHTS", help="checkpoint file (lstmdet train writes DIR/best.pt)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="file format (default onnx)")
    p.add_argument("--out", metavar="FILE", help="file to write (default: WEIGHTS' name with .onnx / .torchscript)")
    p.add_argument("--opset", type=positive_int, metavar="N", help="ONNX opset (default 17)")
    p.add_argument(
        "--batch", default="dynamic", metavar="dynamic|N",
        help="batch dimension: dynamic (default) or a fixed size N",
    )  # fmt: skip
    p.add_argument("--half", action="store_true", help="float16 weights and compute inside (I/O stays float32)")
    p.add_argument(
        "--conf", type=unit_interval, metavar="F", help="detectors: minimum score kept (default: the head's)"
    )
    p.add_argument("--iou", type=unit_interval, metavar="F", help="detectors: NMS IoU threshold (default: the head's)")
    p.add_argument(
        "--max-det", type=positive_int, metavar="N", help="detectors: K, detections per image (default: the head's)"
    )
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Export and print where the file is."""
    from lstmdet.export import export

    path = export(
        args.weights, args.out, format=args.format, opset=args.opset, batch=args.batch, half=args.half,
        score_thresh=args.conf, nms_thresh=args.iou, max_detections=args.max_det,
    )  # fmt: skip
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.format})")
    return 0
