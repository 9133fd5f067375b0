"""Checkpoints: self-describing round trips, and refusal of anything that would unpickle code."""

from __future__ import annotations

import pickle

import pytest
import torch
from helpers import detect_config

import lstmdet
from lstmdet.checkpoint import read_checkpoint, save_checkpoint
from lstmdet.errors import CheckpointError


class _Exploit:
    """Unpickling this would run a shell command: the classic malicious-checkpoint payload."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/lstmdet-pwned",))


def _model():
    torch.manual_seed(1)
    config = detect_config({"name": "bilstm", "hidden": 16}, score_thresh=0.0)
    config["model"]["classes"] = ["zero", "one", "two"]
    model = lstmdet.create_model(config)
    # Move BatchNorm statistics away from their defaults so the round trip covers buffers too.
    model.train()
    model.backbone(torch.rand(4, 3, 64, 64))
    return model.eval()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_gives_identical_outputs(tmp_path, suffix):
    model = _model()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 80)]
    before = model.predict(images)
    path = save_checkpoint(tmp_path / f"model{suffix}", model)
    loaded = lstmdet.load(path)
    assert loaded.classes == ["zero", "one", "two"]
    assert loaded.config == model.config
    after = loaded.predict(images)
    for a, b in zip(before, after, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_category_ids_round_trip_and_old_checkpoints_get_label_indices(tmp_path, suffix):
    torch.manual_seed(1)
    config = detect_config({"name": "identity"})
    config["model"]["category_ids"] = [3, 7, 90]
    path = save_checkpoint(tmp_path / f"ids{suffix}", lstmdet.create_model(config))
    loaded = lstmdet.load(path)
    assert loaded.category_ids == [3, 7, 90] and read_checkpoint(path)["config"]["model"]["category_ids"] == [3, 7, 90]

    old = _model()  # a checkpoint written before category ids existed: its config has none
    path = save_checkpoint(tmp_path / "old.pt", old)
    data = torch.load(path, weights_only=True)
    del data["config"]["model"]["category_ids"]
    torch.save(data, path)
    assert lstmdet.load(path).category_ids == [0, 1, 2]


def test_the_shipped_model_loads_by_the_name_default():
    named, shipped = lstmdet.load("default"), lstmdet.load()
    assert named.config == shipped.config
    pairs = zip(named.state_dict().values(), shipped.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_checkpoint_carries_version_and_train_state(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "last.pt", model, train_state={"epoch": 3, "rng": torch.get_rng_state()})
    data = read_checkpoint(path)
    assert data["lstmdet_version"] == lstmdet.__version__
    assert data["train_state"]["epoch"] == 3


def test_malicious_checkpoint_is_refused(tmp_path):
    model = _model()
    path = tmp_path / "evil.pt"
    header = {"format": "lstmdet.checkpoint", "format_version": 1, "config": model.config, "classes": []}
    torch.save({**header, "state_dict": model.state_dict(), "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*pickled Python objects"):
        lstmdet.load(path)
    import os

    assert not os.path.exists("/tmp/lstmdet-pwned")


def test_plain_pickle_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an lstmdet checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        read_checkpoint(garbage)


def test_weights_that_do_not_fit_the_config(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.pt", model)
    data = torch.load(path, weights_only=True)
    data["config"]["model"]["encoder"]["hidden"] = 32
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        lstmdet.load(path)


@pytest.mark.slow
def test_shipped_default_model_detects_held_out_digits():
    """The default model finds digits it never saw: mAP@[.5:.95] on 60 generated test scenes.

    The scenes use the recipe's test seed and the 2,000 held-out MNIST digits; benchmarks/RESULTS.md
    gives 0.85+ on the recipe's 500 test scenes, so 0.8 on 60 leaves room for sampling only.
    """
    from lstmdet.engine.data import AugmentedDataset, build_dataset
    from lstmdet.engine.evaluate import evaluate

    model = lstmdet.load()
    assert model.task == "detect" and model.classes == [str(d) for d in range(10)]
    spec = {"name": "digits_det", "images": 60, "seed": 7, "size": 128, "split": "test"}
    dataset = AugmentedDataset(build_dataset(spec, "data"), task="detect", split="eval", augment=None, seed=0)
    metrics = evaluate(model, dataset)
    assert metrics["map"] > 0.8 and metrics["map_50"] > 0.95, metrics


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("fake.pt", b"task: detect\nmodel: {backbone: small_cnn}\n", "it is a text file holding a YAML config"),
        ("notes.pt", b"hello world\nfoo bar\n", "it is a text file)"),
        ("meta.pt", b'{"format": "x"}', "it is a text file holding JSON data"),
        ("empty.pt", b"", "it is empty: 0 bytes"),
        ("photo.pt", b"\xff\xd8\xff\xe0" + bytes(100), "it is a JPEG image"),
        ("random.pt", b"\x13\x00\xfe" * 50, "it is binary data of an unknown format"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path, name, content, what):
    """`--weights fake.pt` says what the file is and what to pass, never torch's unpickling advice."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert f"{path} is not an lstmdet checkpoint ({what}" in message
    assert "pass a file written by `lstmdet train` (best.pt / last.pt)" in message
    assert "weights_only" not in message and "pickled" not in message


def test_damaged_checkpoints_and_folders_say_what_to_pass(tmp_path):
    model = _model()
    good = save_checkpoint(tmp_path / "good.pt", model)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or damaged: pass a file written by `lstmdet train`"):
        read_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="is a folder; pass a file written by `lstmdet train`"):
        read_checkpoint(tmp_path)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty: 0 bytes"):
        read_checkpoint(empty)


def test_refusing_foreign_objects_never_suggests_weights_only_false(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": _Exploit()}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "refused to load" in message and "system" in message  # the object it would call: os.system
    assert "weights_only" not in message and "\n" not in message
