"""Device names: auto, cpu, cuda, cuda:N; bad names and missing CUDA give errors saying what to pass."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lstmdet.engine.device import resolve_device
from lstmdet.errors import LstmdetError


def test_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(("setting", "named"), [("--device", "--device"), ("train.device", "train.device")])
def test_unknown_names_are_refused_naming_the_setting(setting, named):
    with pytest.raises(LstmdetError, match=rf"unknown device 'gpu' \({named}\); use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu", setting=setting)


def test_cuda_without_cuda_says_how_to_choose_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(LstmdetError, match=r"CUDA is not available; use --device cpu \(or auto\)"):
        resolve_device("cuda:0")
    with pytest.raises(LstmdetError, match=r"use --set train\.device=cpu \(or auto\)"):
        resolve_device("cuda", setting="train.device")


def _imports(module: Path) -> set[str]:
    """Every module ``module`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_evaluate_does_not_import_train():
    """``train`` imports ``evaluate``; the other way round would be an import cycle."""
    engine = Path(__file__).resolve().parents[3] / "lstmdet" / "engine"
    assert "lstmdet.engine.evaluate" in _imports(engine / "train.py")
    assert "lstmdet.engine.train" not in _imports(engine / "evaluate.py")
