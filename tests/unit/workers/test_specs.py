"""Job specs: fields checked and every path resolved inside the data roots."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import classify_config

from lstmdet.errors import LstmdetError
from lstmdet.workers.specs import DEFAULT_SHARD_SIZE, PathRefused, check_path, validate_spec


@pytest.fixture
def roots(tmp_path) -> tuple[Path, ...]:
    """One data root (resolved, as Settings gives it) with an input folder inside."""
    root = (tmp_path / "data").resolve()
    (root / "in").mkdir(parents=True)
    return (root,)


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
            "options": {"device": "cpu", "batch_size": 4, "agnostic_nms": True}}  # fmt: skip
    checked = validate_spec("detect", spec, roots)
    assert checked["src"] == str(root / "in")
    assert checked["out"] == str(root / "out")
    assert checked["weights"] == str(root / "w.pt")
    assert checked["shard_size"] == DEFAULT_SHARD_SIZE == 256
    assert checked["options"]["device"] == "cpu" and checked["options"]["batch_size"] == 4
    assert checked["options"]["agnostic_nms"] is True
    assert {"score_thresh", "half", "workers"} <= set(checked["options"])
    assert spec["src"] == f"{root}/in/../in"  # the caller's spec is not changed


def test_detect_spec_default_weights(roots):
    checked = validate_spec("detect", {"src": str(roots[0] / "in"), "out": str(roots[0] / "out")}, roots)
    assert checked["weights"] is None
    named = {"src": str(roots[0] / "in"), "out": str(roots[0] / "out"), "weights": "default"}
    assert validate_spec("detect", named, roots)["weights"] is None  # the shipped model by name: no path to check
    assert validate_spec("eval", {"weights": "default"}, roots)["weights"] == "default"


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
