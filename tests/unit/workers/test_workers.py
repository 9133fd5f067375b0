"""Worker pieces that need no Redis: settings, Celery config, specs and data roots, launcher, routing, model cache."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from helpers import classify_config, save_tiny

from lstmdet.errors import LstmdetError
from lstmdet.workers.cache import ModelCache
from lstmdet.workers.client import JobClient
from lstmdet.workers.launcher import WorkerProcess, parse_gpus, plan_workers, run_workers
from lstmdet.workers.settings import DEFAULT_BROKER_URL, QUEUES, Settings, celery_config, mask_url
from lstmdet.workers.specs import DEFAULT_SHARD_SIZE, PathRefused, check_path, validate_spec
from lstmdet.workers.store import BrokerUnavailable, explain

TIME_VARS = ("LSTMDET_SOFT_TIME_LIMIT", "LSTMDET_TIME_LIMIT", "LSTMDET_VISIBILITY_TIMEOUT")


@pytest.fixture
def roots(tmp_path) -> tuple[Path, ...]:
    """One data root (resolved, as Settings gives it) with an input folder inside."""
    root = (tmp_path / "data").resolve()
    (root / "in").mkdir(parents=True)
    return (root,)


# --- settings -------------------------------------------------------------------------------------------------------


def test_settings_defaults():
    s = Settings.from_env({})
    assert s.broker_url == DEFAULT_BROKER_URL == "redis://127.0.0.1:6379/0"
    assert s.result_url == s.broker_url
    assert s.data_roots == ()
    assert s.default_queue == "cpu"
    assert s.soft_time_limit < s.time_limit < s.visibility_timeout


def test_result_url_follows_broker_unless_set():
    broker = "redis://:pw@redis.example:6380/2"
    assert Settings.from_env({"LSTMDET_BROKER_URL": broker}).result_url == broker
    s = Settings.from_env({"LSTMDET_BROKER_URL": broker, "LSTMDET_RESULT_URL": "redis://other:6379/5"})
    assert (s.broker_url, s.result_url) == (broker, "redis://other:6379/5")


def test_data_roots_parsed_and_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"LSTMDET_DATA_ROOTS": f":{tmp_path}/a/../b::rel:"}
    assert Settings.from_env(env).data_roots == ((tmp_path / "b").resolve(), (tmp_path / "rel").resolve())


def test_time_limits_consistent_values_accepted():
    s = Settings.from_env(dict(zip(TIME_VARS, ("10", "20", "30"), strict=True)))
    assert (s.soft_time_limit, s.time_limit, s.visibility_timeout) == (10, 20, 30)
    big = Settings.from_env({"LSTMDET_SOFT_TIME_LIMIT": "90000"})  # derived hard and visibility follow soft
    assert 90000 < big.time_limit < big.visibility_timeout


@pytest.mark.parametrize(
    "soft, hard, vis",
    [("100", "100", "500"), ("100", "200", "200"), ("300", "200", "500"), ("100", "600", "500")],
)
def test_time_limit_order_enforced(soft, hard, vis):
    with pytest.raises(LstmdetError) as err:
        Settings.from_env(dict(zip(TIME_VARS, (soft, hard, vis), strict=True)))
    assert all(name in str(err.value) for name in TIME_VARS)


def test_hard_limit_alone_below_default_soft_refused():
    with pytest.raises(LstmdetError, match="LSTMDET_TIME_LIMIT"):
        Settings.from_env({"LSTMDET_TIME_LIMIT": "60"})


@pytest.mark.parametrize("name", [*TIME_VARS, "LSTMDET_MAX_DELIVERIES", "LSTMDET_RESULT_EXPIRES"])
@pytest.mark.parametrize("text", ["ten", "1.5", "0", "-3"])
def test_bad_integer_names_variable(name, text):
    with pytest.raises(LstmdetError, match=name):
        Settings.from_env({name: text})


def test_empty_integer_means_default():
    assert Settings.from_env({"LSTMDET_MAX_DELIVERIES": ""}).max_deliveries == Settings.max_deliveries


def test_bad_default_queue():
    with pytest.raises(LstmdetError, match="LSTMDET_DEFAULT_QUEUE"):
        Settings.from_env({"LSTMDET_DEFAULT_QUEUE": "fast"})
    assert Settings.from_env({"LSTMDET_DEFAULT_QUEUE": "gpu"}).default_queue == "gpu"


def test_celery_config():
    env = {"LSTMDET_BROKER_URL": "redis://b:1/0", "LSTMDET_RESULT_URL": "redis://r:2/0"}
    s = Settings.from_env({**env, **dict(zip(TIME_VARS, ("100", "200", "300"), strict=True))})
    c = celery_config(s)
    assert (c["broker_url"], c["result_backend"]) == ("redis://b:1/0", "redis://r:2/0")
    assert c["task_serializer"] == c["result_serializer"] == "json"
    assert c["accept_content"] == ["json"]
    assert c.get("result_accept_content", ["json"]) == ["json"]
    assert c["task_acks_late"] is True
    assert c["task_reject_on_worker_lost"] is True
    assert c["worker_prefetch_multiplier"] == 1
    assert c["broker_transport_options"]["visibility_timeout"] == 300
    assert c["result_backend_transport_options"]["visibility_timeout"] == 300
    assert c["visibility_timeout"] == 300
    assert c["visibility_timeout"] > c["task_time_limit"] == 200 > c["task_soft_time_limit"] == 100
    assert c["task_publish_retry"] is True
    assert 0 < c["task_publish_retry_policy"]["max_retries"] <= 10
    assert c["broker_connection_retry_on_startup"] is True
    assert c["result_expires"] == s.result_expires > 0
    assert [q.name for q in c["task_queues"]] == list(QUEUES) == ["gpu", "cpu"]
    assert c["task_default_queue"] == s.default_queue


def test_celery_config_keys_are_celery_settings():
    """Celery ignores a misspelt key silently; the one extra key is the documented top-level visibility_timeout."""
    from celery.app.defaults import NAMESPACES, flatten

    known = {name for name, _ in flatten(NAMESPACES)}
    assert set(celery_config(Settings())) - known == {"visibility_timeout"}


@pytest.mark.parametrize(
    "url, secret, shown",
    [
        ("redis://:secret@h:1/0", "secret", "redis://:***@h:1/0"),
        ("redis://user:hunter2@host:6379/2", "hunter2", "redis://user:***@host:6379/2"),
        ("rediss://:pw9@h:6380/0?ssl_cert_reqs=required", "pw9", "rediss://:***@h:6380/0?ssl_cert_reqs=required"),
        ("redis://:secret@[::1]:6379/0", "secret", "redis://:***@[::1]:6379/0"),
    ],
)
def test_mask_url_hides_password(url, secret, shown):
    masked = mask_url(url)
    assert secret not in masked
    assert masked == shown


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://user@h:1/3", "rediss://h:6380/0?ssl=1"])
def test_mask_url_leaves_passwordless_urls(url):
    assert mask_url(url) == url


def test_explain_masks_password():
    import redis

    url = "redis://:secret@h:1/0"
    down = explain(redis.ConnectionError("Connection refused"), url)
    auth = explain(redis.AuthenticationError("WRONGPASS invalid password"), url)
    assert isinstance(down, BrokerUnavailable) and isinstance(auth, BrokerUnavailable)
    assert "cannot reach" in str(down) and "credentials" in str(auth)
    assert all("secret" not in str(e) and "redis://:***@h:1/0" in str(e) for e in (down, auth))


# --- specs: paths ---------------------------------------------------------------------------------------------------


def test_check_path_inside_root(roots):
    root = roots[0]
    assert check_path(root / "in", roots, "src") == str(root / "in")
    assert check_path(root / "not" / "yet" / "made.pt", roots, "out") == str(root / "not" / "yet" / "made.pt")
    assert check_path(root, roots, "src") == str(root)
    assert check_path(f"{root}/in/../in/./x", roots, "src") == str(root / "in" / "x")


def test_check_path_outside_root(roots, tmp_path):
    with pytest.raises(PathRefused, match="LSTMDET_DATA_ROOTS"):
        check_path(tmp_path / "elsewhere", roots, "src")
    with pytest.raises(PathRefused):
        check_path("/etc/passwd", roots, "src")


def test_check_path_sibling_with_common_prefix(roots):
    """``/x/data2`` is not inside ``/x/data`` even though the string starts the same."""
    with pytest.raises(PathRefused):
        check_path(str(roots[0]) + "2/file", roots, "src")


def test_check_path_dotdot_escape(roots):
    with pytest.raises(PathRefused):
        check_path(f"{roots[0]}/../elsewhere", roots, "src")
    with pytest.raises(PathRefused):
        check_path(f"{roots[0]}/in/../../elsewhere/x", roots, "src")


def test_check_path_symlink_out_of_root(roots, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.txt").write_text("x")
    (roots[0] / "link").symlink_to(outside)
    with pytest.raises(PathRefused, match="outside"):
        check_path(roots[0] / "link", roots, "src")
    with pytest.raises(PathRefused):
        check_path(roots[0] / "link" / "secret.txt", roots, "src")


def test_check_path_symlink_into_root_resolved(roots, tmp_path):
    (tmp_path / "alias").symlink_to(roots[0])
    assert check_path(tmp_path / "alias" / "in", roots, "src") == str(roots[0] / "in")


def test_check_path_no_roots(roots):
    with pytest.raises(PathRefused, match="LSTMDET_DATA_ROOTS"):
        check_path(roots[0] / "in", (), "src")
    with pytest.raises(PathRefused, match="LSTMDET_DATA_ROOTS"):
        validate_spec("detect", {"src": str(roots[0] / "in"), "out": str(roots[0] / "out")}, ())


def test_path_refused_is_lstmdet_error():
    assert issubclass(PathRefused, LstmdetError)


# --- specs: kinds ---------------------------------------------------------------------------------------------------


def test_detect_spec_resolved(roots):
    root = roots[0]
    (root / "w.pt").write_bytes(b"")
    spec = {"src": f"{root}/in/../in", "out": f"{root}/out", "weights": f"{root}/./w.pt",
            "options": {"device": "cpu", "batch_size": 4}}  # fmt: skip
    checked = validate_spec("detect", spec, roots)
    assert checked["src"] == str(root / "in")
    assert checked["out"] == str(root / "out")
    assert checked["weights"] == str(root / "w.pt")
    assert checked["shard_size"] == DEFAULT_SHARD_SIZE == 256
    assert checked["options"]["device"] == "cpu" and checked["options"]["batch_size"] == 4
    assert {"score_thresh", "half", "workers"} <= set(checked["options"])
    assert spec["src"] == f"{root}/in/../in"  # the caller's spec is not changed


def test_detect_spec_default_weights(roots):
    checked = validate_spec("detect", {"src": str(roots[0] / "in"), "out": str(roots[0] / "out")}, roots)
    assert checked["weights"] is None


@pytest.mark.parametrize("field", ["src", "out", "weights"])
def test_detect_spec_paths_refused(roots, tmp_path, field):
    spec = {"src": str(roots[0] / "in"), "out": str(roots[0] / "out"), field: str(tmp_path / "elsewhere")}
    with pytest.raises(PathRefused):
        validate_spec("detect", spec, roots)


def test_detect_spec_unknown_option(roots):
    spec = {"src": str(roots[0] / "in"), "out": str(roots[0] / "out"), "options": {"colour": "red"}}
    with pytest.raises(LstmdetError) as err:
        validate_spec("detect", spec, roots)
    message = str(err.value)
    assert "colour" in message
    assert all(name in message for name in ("batch_size", "device", "score_thresh", "max_pixels"))


def test_detect_spec_bad_option_value(roots):
    spec = {"src": str(roots[0] / "in"), "out": str(roots[0] / "out"), "options": {"batch_size": 0}}
    with pytest.raises(LstmdetError):
        validate_spec("detect", spec, roots)


@pytest.mark.parametrize("shard_size", [0, -1, 1.5, "8", True, None])
def test_detect_spec_bad_shard_size(roots, shard_size):
    spec = {"src": str(roots[0] / "in"), "out": str(roots[0] / "out"), "shard_size": shard_size}
    with pytest.raises(LstmdetError, match="shard_size"):
        validate_spec("detect", spec, roots)


@pytest.mark.parametrize("missing", ["src", "out"])
def test_detect_spec_missing_path(roots, missing):
    spec = {"src": str(roots[0] / "in"), "out": str(roots[0] / "out")}
    del spec[missing]
    with pytest.raises(LstmdetError, match=missing):
        validate_spec("detect", spec, roots)


def train_config(**train_data) -> dict:
    config = classify_config({"name": "bilstm", "hidden": 8})
    config["data"] = {"train": {"name": "mnist_idx", "split": "train", "images": 64, **train_data}}
    config["train"] = {"epochs": 1, "device": "cpu"}
    return config


def test_train_spec_valid(roots):
    root = roots[0]
    config = train_config(root=f"{root}/in/..")
    checked = validate_spec("train", {"config": config, "out": f"{root}/runs/a"}, roots)
    assert checked["out"] == str(root / "runs" / "a")
    assert checked["resume"] is False
    assert checked["config"]["data"]["train"]["root"] == str(root)
    assert checked["config"]["data"]["train"]["images"] == 64  # an int under a path-like key is left alone
    assert checked["config"]["train"]["batch_size"] == 16  # load_config filled the defaults
    assert config["data"]["train"]["root"] == f"{root}/in/.."


def test_train_spec_without_data_paths(roots):
    checked = validate_spec("train", {"config": train_config(), "out": str(roots[0] / "run")}, roots)
    assert "root" not in checked["config"]["data"]["train"]


def test_train_spec_dataset_path_outside(roots, tmp_path):
    config = train_config()
    config["data"]["val"] = {"name": "yolo", "root": str(tmp_path / "outside")}
    with pytest.raises(PathRefused, match=r"data\.val\.root"):
        validate_spec("train", {"config": config, "out": str(roots[0] / "run")}, roots)
    config["data"]["val"] = None
    config["data"]["train"] = {"name": "yolo", "root": "/outside"}
    with pytest.raises(PathRefused, match=r"data\.train\.root"):
        validate_spec("train", {"config": config, "out": str(roots[0] / "run")}, roots)


@pytest.mark.parametrize("key", ["annotations", "images", "names"])
def test_train_spec_other_path_keys_checked(roots, tmp_path, key):
    config = train_config()
    config["data"]["test"] = {"name": "coco", "annotations": str(roots[0] / "in" / "a.json"), key: str(tmp_path)}
    with pytest.raises(PathRefused, match=rf"data\.test\.{key}"):
        validate_spec("train", {"config": config, "out": str(roots[0] / "run")}, roots)


def test_train_spec_out_outside(roots, tmp_path):
    with pytest.raises(PathRefused):
        validate_spec("train", {"config": train_config(), "out": str(tmp_path / "run")}, roots)


def test_train_spec_bad_config(roots):
    config = train_config()
    config["train"]["epochs"] = 0
    with pytest.raises(LstmdetError, match=r"train\.epochs"):
        validate_spec("train", {"config": config, "out": str(roots[0] / "run")}, roots)
    with pytest.raises(LstmdetError, match="config"):
        validate_spec("train", {"config": "a.yaml", "out": str(roots[0] / "run")}, roots)


def test_eval_spec(roots, tmp_path):
    root = roots[0]
    checked = validate_spec("eval", {"weights": f"{root}/in/../w.pt", "out": f"{root}/m.json"}, roots)
    assert checked["weights"] == str(root / "w.pt") and checked["out"] == str(root / "m.json")
    assert checked["data"] is None and checked["device"] == "auto"
    with pytest.raises(LstmdetError, match="weights"):
        validate_spec("eval", {"out": str(root / "m.json")}, roots)
    with pytest.raises(PathRefused):
        validate_spec("eval", {"weights": str(tmp_path / "w.pt")}, roots)
    with pytest.raises(PathRefused, match=r"data\.root"):
        validate_spec("eval", {"weights": str(root / "w.pt"), "data": {"name": "yolo", "root": str(tmp_path)}}, roots)
    with pytest.raises(LstmdetError, match="name"):
        validate_spec("eval", {"weights": str(root / "w.pt"), "data": {"root": str(root)}}, roots)


@pytest.mark.parametrize("kind", ["predict", "", "TRAIN"])
def test_unknown_kind(roots, kind):
    with pytest.raises(LstmdetError, match="train, detect, eval"):
        validate_spec(kind, {}, roots)


def test_spec_must_be_object(roots):
    with pytest.raises(LstmdetError):
        validate_spec("detect", ["src", "out"], roots)


# --- launcher -------------------------------------------------------------------------------------------------------


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_plan_gpu_workers():
    plan = plan_workers(queues=["gpu"], gpus=["0", "1"], cores=8)
    assert len(plan) == 2
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in plan] == ["0", "1"]
    assert all(w.env["LSTMDET_TORCH_THREADS"] == "4" for w in plan)
    for w in plan:
        assert _after(w.argv, "--concurrency") == "1"
        assert _after(w.argv, "--prefetch-multiplier") == "1"
        assert _after(w.argv, "--queues") == "gpu"
        assert "lstmdet.workers.app:app" in w.argv
    hostnames = [_after(w.argv, "--hostname") for w in plan]
    assert len(set(hostnames)) == 2


def test_plan_cpu_worker():
    plan = plan_workers(queues=["cpu"], concurrency=2, cores=2)
    assert len(plan) == 1
    (w,) = plan
    assert _after(w.argv, "--concurrency") == "2"
    assert _after(w.argv, "--prefetch-multiplier") == "1"
    assert w.env == {"CUDA_VISIBLE_DEVICES": "", "LSTMDET_TORCH_THREADS": "1"}
    assert _after(w.argv, "--queues") == "cpu"


def test_plan_threads_split_between_processes():
    assert plan_workers(queues=["cpu"], concurrency=3, cores=8)[0].env["LSTMDET_TORCH_THREADS"] == "2"
    assert _after(plan_workers(queues=["cpu", "gpu"], gpus=["0"], cores=8)[0].argv, "--queues") == "cpu,gpu"
    assert plan_workers(queues=["cpu"], concurrency=4, cores=2)[0].env["LSTMDET_TORCH_THREADS"] == "1"
    assert plan_workers(queues=["gpu"], gpus=["0", "1", "2"], cores=2)[0].env["LSTMDET_TORCH_THREADS"] == "1"
    assert plan_workers(queues=["gpu"], gpus=["3"], concurrency=1, cores=4)[0].env["CUDA_VISIBLE_DEVICES"] == "3"


def test_plan_names():
    plan = plan_workers(queues=["gpu"], gpus=["0", "1"], name="box", cores=2)
    assert all(_after(w.argv, "--hostname").startswith(f"box-gpu{g}@") for w, g in zip(plan, ["0", "1"], strict=True))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"queues": ["tpu"]},
        {"queues": ["gpu", "fast"]},
        {"queues": []},
        {"queues": ["cpu"], "concurrency": 0},
        {"queues": ["cpu"], "concurrency": -2},
        {"queues": ["gpu"], "gpus": ["0"], "concurrency": 2},
        {"queues": ["cpu", "gpu"]},  # the gpu queue without GPUs: its jobs would fail on this worker
    ],
)
def test_plan_refused(kwargs):
    with pytest.raises(LstmdetError):
        plan_workers(cores=2, **kwargs)


def test_parse_gpus():
    assert parse_gpus("0,1") == ["0", "1"]
    assert parse_gpus(" 2 , 3 ") == ["2", "3"]
    assert parse_gpus(None) == parse_gpus("") == []
    for bad in ("0,x", "0,0", "cuda:0", "-1"):
        with pytest.raises(LstmdetError, match="--gpus"):
            parse_gpus(bad)


def test_run_workers_stops_all_when_a_later_worker_dies():
    """The second worker exits with 3 while the first runs: the first is stopped and 3 returned, promptly."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        start = time.monotonic()
        status = run_workers([WorkerProcess(["sleep", "3"], {}), WorkerProcess(["sh", "-c", "exit 3"], {})])
        elapsed = time.monotonic() - start
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert status == 3
    assert elapsed < 2.5, f"the supervisor noticed the dead worker only after {elapsed:.1f}s"


def test_run_workers_passes_env():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = run_workers([WorkerProcess(["sh", "-c", 'exit "$LSTMDET_TEST_CODE"'], {"LSTMDET_TEST_CODE": "5"})])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert status == 5


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


# --- model cache ----------------------------------------------------------------------------------------------------


def test_cache_default_model_loaded_once():
    cache = ModelCache(size=1)
    first = cache.get(None, "cpu")
    assert cache.get(None, "cpu") is first
    assert cache.loads == 1


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("cache")
    return save_tiny(folder / "a.pt"), save_tiny(folder / "b.pt"), save_tiny(folder / "c.pt")


def test_cache_reloads_rewritten_checkpoint(checkpoints, tmp_path):
    path = tmp_path / "a.pt"
    path.write_bytes(checkpoints[0].read_bytes())
    cache = ModelCache(size=2)
    first = cache.get(str(path), "cpu")
    assert cache.get(str(path), "cpu") is first and cache.loads == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert cache.get(str(path), "cpu") is not first
    assert cache.loads == 2


def test_cache_evicts_least_recently_used(checkpoints):
    a, b, c = (str(p) for p in checkpoints)
    cache = ModelCache(size=1)
    cache.get(a, "cpu")
    cache.get(b, "cpu")
    assert cache.loads == 2
    cache.get(a, "cpu")  # evicted by b: loaded again
    assert cache.loads == 3
    lru = ModelCache(size=2)
    for weights in (a, b, a, c):  # a was used after b, so c evicts b
        lru.get(weights, "cpu")
    assert lru.loads == 3
    lru.get(a, "cpu")
    assert lru.loads == 3
    lru.get(b, "cpu")
    assert lru.loads == 4


def test_cache_key_includes_device(checkpoints):
    cache = ModelCache(size=4)
    cache.get(str(checkpoints[0]), "cpu")
    cache.get(str(checkpoints[0]), "auto")
    assert cache.loads == 2
