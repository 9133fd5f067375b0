"""The job client: queue routing."""

from __future__ import annotations

import pytest

from lstmdet.errors import LstmdetError
from lstmdet.workers.client import JobClient
from lstmdet.workers.settings import Settings

# --- client routing -------------------------------------------------------------------------------------------------


def _client(default_queue: str = "gpu") -> JobClient:
    client = JobClient.__new__(JobClient)
    client.settings = Settings(default_queue=default_queue)
    return client


@pytest.mark.parametrize(
    "device, queue", [("cuda:0", "gpu"), ("cuda", "gpu"), ("cpu", "cpu"), ("auto", "gpu"), (None, "gpu")]
)
def test_queue_from_detect_device(device, queue):
    options = {} if device is None else {"device": device}
    assert _client("gpu")._queue("detect", {"options": options}, None) == queue


def test_queue_auto_follows_default_queue():
    assert _client("cpu")._queue("detect", {"options": {"device": "auto"}}, None) == "cpu"
    assert _client("cpu")._queue("detect", {"options": {"device": "cuda:1"}}, None) == "gpu"


def test_queue_train_and_eval():
    assert _client("cpu")._queue("train", {"config": {"train": {"device": "cuda:0"}}}, None) == "gpu"
    assert _client("gpu")._queue("train", {"config": {"train": {"device": "cpu"}}}, None) == "cpu"
    assert _client("cpu")._queue("eval", {"device": "cuda"}, None) == "gpu"
    assert _client("gpu")._queue("eval", {"device": "auto"}, None) == "gpu"


def test_queue_explicit():
    assert _client("gpu")._queue("detect", {"options": {"device": "cuda:0"}}, "cpu") == "cpu"
    for bad in ("GPU", "tpu", ""):
        with pytest.raises(LstmdetError, match="queue"):
            _client()._queue("detect", {"options": {}}, bad)
