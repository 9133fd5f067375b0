"""Helpers shared by the tests (importable because pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LSTMDET_BIN = Path(sys.executable).with_name("lstmdet")


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
