"""Helpers shared by the tests (importable because pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LSTMDET_BIN = Path(sys.executable).with_name("lstmdet")
#: summary.json fields that depend on timing.
TIMING = ("seconds", "images_per_s")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``lstmdet`` console script; returns the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(LSTMDET_BIN), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)


def classify_config(encoder: dict, backbone: dict | None = None, **head) -> dict:
    """A small MNIST-sized classification config around ``encoder``."""
    return {
        "task": "classify",
        "model": {
            "input": {"size": 28, "mean": [0.13] * 3, "std": [0.31] * 3},
            "backbone": backbone or {"name": "small_cnn", "widths": [16, 32]},
            "encoder": encoder,
            "head": {"name": "classifier", "num_classes": 10, **head},
        },
    }


def detect_config(encoder: dict, head: str = "fcos", **extra) -> dict:
    """A small detection config for 64x64 images around ``encoder``."""
    return {
        "task": "detect",
        "model": {
            "input": {"size": 64, "max_size": 64},
            "backbone": {"name": "small_cnn", "widths": [16, 32, 32], "levels": ["c2", "c3"]},
            "neck": {"channels": 32},
            "encoder": encoder,
            "head": {"name": head, "num_classes": 3, **extra},
        },
    }


def install_plugin(site: Path, package: str, source: str, entry_point: str) -> Path:
    """Write ``package`` (one module) and its ``.dist-info`` into ``site``, as pip would install it.

    Args:
        site: A folder to put on ``PYTHONPATH`` / ``sys.path``.
        package: Import name of the plugin package.
        source: Its ``__init__.py``.
        entry_point: Name of its entry point in the ``lstmdet`` group.
    """
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    dist_info = site / f"{package}-0.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.3\n")
    (dist_info / "entry_points.txt").write_text(f"[lstmdet]\n{entry_point} = {package}\n")
    (dist_info / "INSTALLER").write_text("pip\n")
    (dist_info / "RECORD").write_text("")
    return site


def assert_same_outputs(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> None:
    """Same files under ``a`` and ``b``, byte for byte; ``summary.json`` equal but for timing and ``ignore``."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        if rel.name == "summary.json":
            drop = (*TIMING, *ignore)
            sa, sb = (json.loads((root / rel).read_text()) for root in (a, b))
            assert {k: v for k, v in sa.items() if k not in drop} == {k: v for k, v in sb.items() if k not in drop}
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
