"""Queued jobs with an exported ``.onnx`` model, through a real ``redis-server`` and a real ``lstmdet worker``.

The worker loads the file through its model cache (``lstmdet.workers.cache.ModelCache``) and runs it in
ONNX Runtime; the queued detect must write what the in-process ONNX Runtime run writes, and a queued
eval must give the in-process metrics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import ROOT, assert_same_outputs
from queue_harness import Queue

import lstmdet
from lstmdet.engine.evaluate import evaluate_checkpoint
from lstmdet.export import export

pytestmark = pytest.mark.redis

DETECT = {"workers": 0, "batch_size": 3}  # no loader processes: small and deterministic
DIGITS = {"name": "digits_det", "images": 12, "seed": 3, "size": 128, "split": "test"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Twelve coco30 photos (many aspect ratios) and the shipped model exported to ONNX."""
    root = tmp_path_factory.mktemp("queue-export")
    photos = root / "photos"
    photos.mkdir()
    for path in sorted((ROOT / "tests" / "data" / "coco30" / "images").glob("*.jpg"))[:12]:
        shutil.copy(path, photos / path.name)
    export(lstmdet.load(), root / "default.onnx")
    return root


@pytest.fixture(scope="module")
def queue(folder):
    q = Queue(folder)
    q.worker("--concurrency", "1")
    yield q
    q.close()


def one_thread(call, *args, **kwargs):
    """``call`` with one torch thread (and so one ONNX Runtime intra-op thread), as the worker runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return call(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def test_queued_onnx_detect_equals_the_in_process_onnx_run(queue, folder):
    reference = folder / "reference"
    one_thread(lstmdet.detect, folder / "photos", reference, folder / "default.onnx", progress=False, **DETECT)
    out = folder / "queued"
    job = queue.client.submit_detect(folder / "photos", out, folder / "default.onnx", shard_size=5, **DETECT)
    record = queue.client.wait(job, timeout=180)
    assert record["state"] == "succeeded", record
    assert record["result"]["images"] == 12
    assert_same_outputs(out, reference)
    lines = (out / "detections.jsonl").read_text().splitlines()
    assert sum(len(json.loads(line)["detections"]) for line in lines) > 0


def test_queued_onnx_eval_gives_the_in_process_metrics(queue, folder):
    want = one_thread(evaluate_checkpoint, folder / "default.onnx", data=DIGITS, batch_size=4, device="cpu")
    job = queue.client.submit_eval(folder / "default.onnx", data=DIGITS, out=folder / "m.json", batch_size=4,
                                   device="cpu")  # fmt: skip
    record = queue.client.wait(job, timeout=180)
    assert record["state"] == "succeeded", record
    assert json.loads((folder / "m.json").read_text()) == json.loads(json.dumps(want))
