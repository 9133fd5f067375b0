"""Fixtures of the export tests: the shipped default model and its ONNX export (made once per session)."""

from __future__ import annotations

import pytest

import lstmdet
from lstmdet.export import export


@pytest.fixture(scope="session")
def default_model():
    """The model shipped with lstmdet: a trained small_cnn + bilstm + fcos digit detector."""
    return lstmdet.load()


@pytest.fixture(scope="session")
def default_onnx(tmp_path_factory, default_model):
    """``default_model`` exported to ONNX (dynamic batch)."""
    return export(default_model, tmp_path_factory.mktemp("onnx") / "default.onnx")
