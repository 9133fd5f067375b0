"""``lstmdet train`` and ``lstmdet eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lstmdet.cli.arguments import non_negative_int, positive_int


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` and ``eval`` sub-commands."""
    p = subparsers.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train the model a config describes on its data.train split. Writes last.pt, best.pt, "
        "metrics.jsonl, metrics.csv, curves.png and summary.json to --out. Config defaults: model.encoder "
        "identity (no sequence encoder), model.input.size 512 (detect; max_size 853) or 224 (classify).",
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on a dataset",
        description="Score a checkpoint: accuracy, per-class precision/recall and confusion matrix (classify) or "
        "COCO mAP (detect). Default data: the checkpoint config's data.test, else data.val.",
    )
    add_eval_arguments(p)
    p.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=run_eval)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``train`` (shared with ``submit train``)."""
    p.add_argument("config", help="YAML config file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable; values are YAML)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``eval`` (shared with ``submit eval``)."""
    p.add_argument(
        "--weights", required=True, metavar="CKPT",
        help="checkpoint file (last.pt / best.pt), an exported .onnx file, or 'default' (the shipped model)",
    )  # fmt: skip
    p.add_argument("--data", help="dataset as YAML, e.g. '{name: digits_det, images: 300, split: test}'")
    p.add_argument("--out", help="write the metrics as JSON to this file")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default 16)")
    p.add_argument("--device", default="auto")


def parse_data(text: str | None) -> dict | None:
    """The ``--data`` YAML mapping (``None`` when not given)."""
    import yaml

    from lstmdet.errors import ConfigError

    if not text:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError("--data", f"is not valid YAML ({problem}); e.g. '{{name: mnist_idx, split: test}}'") from None
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError("--data", "must be a YAML mapping with a name, e.g. '{name: mnist_idx, split: test}'")
    return data


def run_train(args: argparse.Namespace) -> int:
    """Train and print the summary."""
    from lstmdet.engine.train import train

    summary = train(Path(args.config), args.out, overrides=args.overrides, resume=args.resume)
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"} | {"metrics": _headline(summary)}))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate and print (and optionally write) the metrics."""
    from lstmdet.engine.evaluate import evaluate_checkpoint
    from lstmdet.fileio import prepare_file

    if args.out:
        prepare_file(args.out, "--out")
    metrics = evaluate_checkpoint(
        args.weights, data=parse_data(args.data), batch_size=args.batch_size, workers=args.workers,
        device=args.device, progress=not args.quiet,
    )  # fmt: skip
    text = json.dumps(metrics, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def _headline(summary: dict) -> dict:
    metrics = summary.get("metrics", {})
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
