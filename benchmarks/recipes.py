"""Train the recipes in configs/ and report their held-out metrics, wall time and training speed.

Usage::

    python benchmarks/recipes.py mnist_rowlstm mnist_cnn_bilstm [--out runs] [--json FILE] [--set k=v ...]

Each recipe runs as ``lstmdet train configs/NAME.yaml --out OUT/NAME`` in a subprocess (the
command a user would type), timed from start to exit. Results are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(name: str, out: Path, overrides: list[str]) -> dict:
    """Train one recipe from scratch; return its summary plus wall time."""
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [str(Path(sys.executable).with_name("lstmdet")), "train", str(ROOT / "configs" / f"{name}.yaml"),
               "--out", str(run_dir), "--set", "train.progress=false"]  # fmt: skip
    for assignment in overrides:
        command += ["--set", assignment]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"recipe": name, "wall_s": round(wall, 1), **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", help="names of configs/NAME.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs")
    parser.add_argument("--json", type=Path, help="append results as JSON lines to this file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    print("| recipe | metric | value | wall time | train images/s | epochs |\n|---|---|---|---|---|---|")
    for name in args.recipes:
        result = run_recipe(name, args.out, args.overrides)
        metrics = result["metrics"]
        key = "accuracy" if result["task"] == "classify" else "map"
        extra = f" (AP50 {metrics['map_50']:.3f})" if key == "map" else ""
        print(f"| {name} | {key} | {metrics[key]:.4f}{extra} | {result['wall_s'] / 60:.1f} min | "
              f"{result['train_images_per_s']} | {result['epochs']} |", flush=True)  # fmt: skip
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps({k: v for k, v in result.items() if k != "metrics"} | {"metrics": {
                    k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
