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
        help="list registered components, or show one component's options",
        description="List every registered component with the plugin (and distribution) that provides it; with "
        "NAME, show that component's options and their defaults (and the task of a head or dataset). "
        "Plugins come from the 'lstmdet' entry-point group; LSTMDET_DISABLE_PLUGINS=a,b blocks some.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="a component name, e.g. fcos, bilstm, digits_det")
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
    if args.name is not None:
        return _show_component(registry, dists, args.name, args.json)
    rows = [
        {"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": dists.get(e.plugin, "")}
        for e in registry.entries()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _table(rows, ["kind", "name", "plugin", "distribution"])
    return 0


def _show_component(registry: Any, dists: dict[str, str], name: str, as_json: bool) -> int:
    """Print the entries called ``name`` (one per kind that has it): options, defaults, task."""
    import difflib

    from lstmdet.errors import LstmdetError
    from lstmdet.registry import SINGULAR

    entries = [e for e in registry.entries() if e.name == name]
    if not entries:
        names = sorted({e.name for e in registry.entries()})
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise LstmdetError(f"no component named {name!r}; {hint}`lstmdet plugins` lists them all")
    described = [
        {"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": dists.get(e.plugin, ""), "task": e.task,
         "given_by_lstmdet": e.given_by_lstmdet(),
         "options": [{"name": o.name, "required": o.required, "default": _plain(o.default), "type": o.annotation}
                     for o in e.option_details()]}
        for e in entries
    ]  # fmt: skip
    if as_json:
        print(json.dumps(described, indent=2))
        return 0
    for entry, info in zip(entries, described, strict=True):
        kind = SINGULAR[entry.kind]
        provider = f"plugin {info['plugin']}" + (f", {info['distribution']}" if info["distribution"] else "")
        print(f"{kind} {entry.name} ({provider})")
        doc = (entry.factory.__doc__ or "").strip().splitlines()
        if doc:
            print(f"  {doc[0]}")
        if kind in ("head", "dataset"):
            print(f"task: {info['task'] or 'not declared (the factory has no task attribute)'}")
        given = [f"{n} (from model.head.num_classes)" if n == "num_classes" else n for n in info["given_by_lstmdet"]]
        if given:
            print(f"set by lstmdet: {', '.join(given)}")
        options = [
            {"option": o["name"], "default": "(required)" if o["required"] else _yaml(o["default"]), "type": o["type"]}
            for o in info["options"]
        ]
        if options:
            _table(options, ["option", "default", "type"])
        else:
            print("options: none")
    return 0


def _plain(value: Any) -> Any:
    """A default as JSON can show it: tuples as lists, paths and other objects as text."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _yaml(value: Any) -> str:
    """``value`` as it would be written in a config (YAML flow style, one line)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def run_model(args: argparse.Namespace) -> int:
    """Build the config's model and describe it."""
    from lstmdet.config import load_config
    from lstmdet.model import build_model
    from lstmdet.summary import describe_model

    # Shapes, parameters and FLOPs only: a pretrained detector's weights are not needed (nor loaded).
    model = build_model(load_config(Path(args.config), args.overrides), load_weights=False)
    info = describe_model(model, frames=args.frames)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"task: {info['task']}  classes: {info['classes']}  input: {format_shape(info['input'])} (T, 3, H, W)")
    _table(
        [{**p, "params": f"{p['params']:,}", "options": json.dumps(p["options"])} for p in info["parts"]],
        ["part", "component", "plugin", "params", "options"],
    )
    print(f"parameters: {info['params']:,}")
    for level, shapes in info["levels"].items():
        steps = [f"{part} {format_shape(shapes[part])}" for part in ("backbone", "neck", "encoder") if part in shapes]
        used = " -> head" if level in info["head_levels"] else ""
        print(f"level {level}: {' -> '.join(steps)}{used}")
    print("output per image: " + ", ".join(f"{k} {format_shape(v)}" for k, v in info["output"].items()))
    flops = info["flops_per_image"]
    print("GFLOPs per image: " + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in flops.items()))
    return 0


def format_shape(dims: list[int | str]) -> str:
    """A shape as docs write it: ``[32, 8, 8]`` -> ``(32, 8, 8)``, ``["K", 4]`` -> ``(K, 4)``, ``["K"]`` -> ``(K,)``.

    Args:
        dims: Sizes, or names such as ``"K"`` for a size known only at run time.
    """
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())
