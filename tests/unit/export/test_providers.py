"""Which ONNX Runtime execution providers ``--device`` selects (CPU here; CUDA where the machine has it)."""

from __future__ import annotations

import json

import onnxruntime
import pytest
from export_helpers import PHOTOS

import lstmdet
from lstmdet.errors import LstmdetError
from lstmdet.export.runtime import OnnxModel, choose_providers, providers_for

CPU = ["CPUExecutionProvider"]
WITH_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("device", "available", "want"),
    [
        ("cpu", CPU, CPU),
        ("cpu", WITH_CUDA, CPU),
        ("auto", CPU, CPU),
        ("auto", WITH_CUDA, [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]),
        ("cuda", WITH_CUDA, [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]),
        ("cuda:1", WITH_CUDA, [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]),
    ],
)
def test_choose_providers(device, available, want):
    assert choose_providers(device, available) == want


@pytest.mark.parametrize(
    ("device", "available", "words"),
    [
        (
            "cuda",
            CPU,
            "has no CUDA provider (it has CPUExecutionProvider); install onnxruntime-gpu, or use --device cpu",
        ),
        ("cuda:x", WITH_CUDA, "unknown device 'cuda:x' (--device); use auto, cpu, cuda or cuda:N"),
        ("tpu", WITH_CUDA, "unknown device 'tpu'"),
    ],
)
def test_choose_providers_refuses_clearly(device, available, words):
    with pytest.raises(LstmdetError, match=words.replace("(", r"\(").replace(")", r"\)")):
        choose_providers(device, available)


def test_providers_for_reads_what_onnxruntime_has(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: WITH_CUDA)
    assert providers_for("cuda:2") == [("CUDAExecutionProvider", {"device_id": 2}), "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: CPU)
    assert providers_for("auto") == CPU


def test_a_cpu_session_uses_the_cpu_provider(default_onnx):
    assert OnnxModel(default_onnx, device="auto").providers[0] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert OnnxModel(default_onnx, device="cpu").providers == CPU


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in onnxruntime.get_available_providers(), reason="no CUDA provider in ONNX Runtime"
)
def test_detect_runs_with_the_cuda_provider(tmp_path, default_onnx):
    assert OnnxModel(default_onnx, device="cuda:0").providers[0] == "CUDAExecutionProvider"
    for kind, weights, device in (("cuda", default_onnx, "cuda:0"), ("cpu", default_onnx, "cpu")):
        lstmdet.detect(PHOTOS[0].parent, tmp_path / kind, weights, device=device, workers=0, progress=False)
    records = {k: (tmp_path / k / "detections.jsonl").read_text().splitlines() for k in ("cuda", "cpu")}
    assert [json.loads(r)["file"] for r in records["cuda"]] == [json.loads(r)["file"] for r in records["cpu"]]
    assert sum(len(json.loads(r)["detections"]) for r in records["cuda"]) > 0
