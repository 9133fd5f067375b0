"""The job client: queue routing, and submitting, following and cancelling jobs through a real Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import classify_config, free_port, queued

from lstmdet.errors import LstmdetError
from lstmdet.workers.client import JobClient
from lstmdet.workers.settings import Settings
from lstmdet.workers.specs import PathRefused
from lstmdet.workers.store import BrokerUnavailable

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


# --- submitting and following jobs (a real Redis) -------------------------------------------------------------------

#: Run in a fresh interpreter: import the client, submit a train job from a YAML file, list what got loaded.
LIGHT_SUBMIT = """
import json, sys
from lstmdet.workers.client import JobClient

def heavy():
    prefixes = ("torch", "torchvision", "lstmdet.engine", "lstmdet.model", "lstmdet.plugins")
    return sorted(m for m in sys.modules if m.split(".")[0] in prefixes[:2] or m.startswith(prefixes[2:]))

after_import = heavy()
job = JobClient().submit_train(sys.argv[1], sys.argv[2], overrides=["train.epochs=3"])
print(json.dumps({"job": job, "after_import": after_import, "after_submit": heavy()}))
"""


def train_yaml(folder: Path) -> Path:
    """A small classification config file (YAML) whose training data is MNIST."""
    config = classify_config({"name": "bilstm", "hidden": 8})
    config["data"] = {"train": {"name": "mnist_idx", "split": "train", "images": 64}}
    config["train"] = {"epochs": 1, "device": "cpu"}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def client(redis_settings: Settings) -> JobClient:
    return JobClient(redis_settings)


def test_import_and_train_submit_load_neither_torch_nor_the_engine(redis_settings, tmp_path):
    env = {**os.environ, "LSTMDET_BROKER_URL": redis_settings.broker_url,
           "LSTMDET_RESULT_URL": redis_settings.result_url, "LSTMDET_DATA_ROOTS": str(tmp_path)}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", LIGHT_SUBMIT, str(train_yaml(tmp_path)), str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["after_import"] == [] and report["after_submit"] == []
    record = JobClient(redis_settings).status(report["job"])
    assert record["state"] == "queued" and record["kind"] == "train"
    assert record["spec"]["config"]["train"]["epochs"] == 3  # the override
    assert record["spec"]["config"]["train"]["batch_size"] == 16  # validated: defaults filled in
    assert [(m["task"], m["id"]) for m in queued(redis_settings.broker_url)] == [("lstmdet.train", report["job"])]


def test_submit_train_applies_overrides_in_order_to_a_file_or_a_dict(client, redis_settings, tmp_path):
    path = train_yaml(tmp_path)
    overrides = ["train.epochs=2", "train.epochs=4", "train.lr=0.01"]
    from_file = client.submit_train(path, tmp_path / "a", overrides=overrides)
    config = yaml.safe_load(path.read_text())
    from_dict = client.submit_train(config, tmp_path / "b", overrides=["model.encoder.hidden=16"], resume=True)
    a, b = client.status(from_file)["spec"], client.status(from_dict)["spec"]
    assert (a["config"]["train"]["epochs"], a["config"]["train"]["lr"], a["resume"]) == (4, 0.01, False)
    assert a["out"] == str((tmp_path / "a").resolve())
    assert (b["config"]["model"]["encoder"]["hidden"], b["config"]["train"]["epochs"], b["resume"]) == (16, 1, True)
    assert config["model"]["encoder"]["hidden"] == 8  # the caller's dict is not changed
    assert [m["id"] for m in queued(redis_settings.broker_url)] == [from_file, from_dict]


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        ("missing.yaml", [], "cannot read config file"),
        (None, ["train.epochs"], "key.path=value"),
        (None, ["train.epochs=0"], r"train\.epochs"),
        (None, ["train=5"], "train"),
    ],
)
def test_a_bad_train_config_is_refused_before_anything_is_recorded(client, redis_settings, tmp_path, config,
                                                                    overrides, message):  # fmt: skip
    path = tmp_path / config if config else train_yaml(tmp_path)
    with pytest.raises(LstmdetError, match=message):
        client.submit_train(path, tmp_path / "run", overrides=overrides)
    assert client.list() == [] and queued(redis_settings.broker_url) == []


def test_submit_detect_records_and_queues_the_checked_spec(client, redis_settings, tmp_path):
    (tmp_path / "in").mkdir()
    job = client.submit_detect(tmp_path / "in" / "..", tmp_path / "out", shard_size=8, batch_size=4, device="cpu")
    record = client.status(job)
    assert (record["state"], record["kind"], record["queue"]) == ("queued", "detect", "cpu")
    assert record["spec"]["src"] == str(tmp_path.resolve()) and record["spec"]["shard_size"] == 8
    assert record["spec"]["options"]["batch_size"] == 4
    (message,) = queued(redis_settings.broker_url)
    assert (message["task"], message["id"], message["args"]) == ("lstmdet.detect", job, [job, record["spec"]])
    assert [r["id"] for r in client.list()] == [job]


def test_a_path_outside_the_roots_is_refused_before_anything_is_recorded(client, redis_settings, tmp_path):
    with pytest.raises(PathRefused, match="LSTMDET_DATA_ROOTS"):
        client.submit_detect("/etc", tmp_path / "out")
    assert client.list() == [] and queued(redis_settings.broker_url) == []


def test_status_wait_and_cancel(client, tmp_path):
    with pytest.raises(LstmdetError, match="jobs list"):
        client.status("no-such-job")
    job = client.submit_eval(tmp_path / "w.pt", device="cpu")
    with pytest.raises(TimeoutError, match="still queued") as info:
        client.wait(job, timeout=0.2, poll=0.05)
    assert isinstance(info.value, LstmdetError)  # the CLI reports it as one line, exit 2
    assert client.cancel(job)["state"] == "cancelled"  # a queued job ends at once
    record = client.wait(job, timeout=5)
    assert record["state"] == "cancelled" and record["error"] == "cancelled before it started"


def test_a_broker_that_cannot_be_reached_fails_the_recorded_job(redis_settings, tmp_path):
    settings = dataclasses.replace(redis_settings, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    client = JobClient(settings)
    with pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
        client.submit_eval(tmp_path / "w.pt", device="cpu")
    (record,) = client.list()
    assert record["state"] == "failed" and record["error"].startswith("could not be queued: cannot reach Redis")


def test_listening_is_false_without_a_worker_and_none_without_a_broker(client, redis_settings):
    assert client.listening("cpu", timeout=0.3) is False
    dead = JobClient(dataclasses.replace(redis_settings, broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert dead.listening("cpu", timeout=0.3) is None
