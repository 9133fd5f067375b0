"""``lstmdet plugins`` and ``lstmdet model``: what is installed, and what a config builds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lstmdet.cli.arguments import positive_int


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``plugins`` and ``model`` sub-commands."""
    p = subparsers.add_parser(
        "plugins",
        help="list registered components: kind, name, providing plugin",
        description="List every registered component with the plugin (and distribution) that provides it. "
        "Plugins come from the 'lstmdet' entry-point group; LSTMDET_DISABLE_PLUGINS=a,b blocks some.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_plugins)

    p = subparsers.add_parser(
        "model",
        help="build a model from a config; print parts, parameters, output shapes and FLOPs",
        description="Build the model a YAML config describes and print its parts (with providing plugins), "
        "parameter counts, feature shapes for a dummy input and FLOPs per image (LSTM and ConvLSTM steps "
        "counted analytically).",
    )
    p.add_argument("config", help="YAML config file")
    p.add_argument("--frames", type=positive_int, default=1, help="frames T of the dummy clip (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_model)


def run_plugins(args: argparse.Namespace) -> int:
    """Print the registry."""
    from lstmdet.manager import current_plugin_manager, current_registry, plugin_distributions

    registry = current_registry()
    dists = plugin_distributions(current_plugin_manager())
    rows = [
        {"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": dists.get(e.plugin, "")}
        for e in registry.entries()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _table(rows, ["kind", "name", "plugin", "distribution"])
    return 0


def run_model(args: argparse.Namespace) -> int:
    """Build the config's model and describe it."""
    from lstmdet.config import load_config
    from lstmdet.model import build_model
    from lstmdet.summary import describe_model

    model = build_model(load_config(Path(args.config), args.overrides))
    info = describe_model(model, frames=args.frames)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"task: {info['task']}  classes: {info['classes']}  input: {tuple(info['input'])} (T, 3, H, W)")
    _table(
        [{**p, "params": f"{p['params']:,}", "options": json.dumps(p["options"])} for p in info["parts"]],
        ["part", "component", "plugin", "params", "options"],
    )
    print(f"parameters: {info['params']:,}")
    for level, shapes in info["levels"].items():
        enc = f" -> encoder {tuple(shapes['encoder'])}" if "encoder" in shapes else ""
        used = " -> head" if level in info["head_levels"] else ""
        print(f"level {level}: backbone {tuple(shapes['backbone'])}{enc}{used}")
    print("output per image: " + ", ".join(f"{k} {tuple(v)}" for k, v in info["output"].items()))
    flops = info["flops_per_image"]
    print("GFLOPs per image: " + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in flops.items()))
    return 0


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())
