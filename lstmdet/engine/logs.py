"""Training logs: ``metrics.jsonl`` (one line per epoch), ``metrics.csv`` and a curve PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file (empty list when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    """The epoch records as a CSV (nested keys joined with ``_``)."""
    rows = [_flatten(r) for r in records]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(path: Path, records: list[dict[str, Any]], metric: str) -> None:
    """Training loss and the validation ``metric`` per epoch, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r["loss"] for r in records], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    values = [r.get("val", {}).get(metric) for r in records]
    if any(v is not None for v in values):
        right.plot(epochs, values, marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
