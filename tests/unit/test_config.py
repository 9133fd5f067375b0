"""Config validation names the bad field and the allowed values."""

from __future__ import annotations

import pytest
import yaml
from helpers import classify_config, detect_config

import lstmdet
from lstmdet.config import load_config, set_value
from lstmdet.errors import ConfigError, LstmdetError


def _error(config) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(config)
    return info.value


def test_defaults_are_filled():
    cfg = load_config(detect_config({"name": "bilstm", "hidden": 16}))
    assert cfg["model"]["classes"] == ["0", "1", "2"]
    assert cfg["model"]["category_ids"] == [0, 1, 2]
    assert cfg["model"]["input"]["max_size"] == 64
    assert cfg["model"]["encoder"]["levels"] is None
    cfg = load_config(
        {"task": "classify", "model": {"backbone": "rows", "head": {"name": "classifier", "num_classes": 2}}}
    )
    assert cfg["model"]["encoder"]["name"] == "identity"
    assert cfg["model"]["input"]["size"] == [224, 224]


@pytest.mark.parametrize(
    ("mutate", "field", "hint"),
    [
        (lambda c: c.update(task="segment"), "task", "classify, detect"),
        (lambda c: c.update(modle={}), "modle", "allowed keys"),
        (lambda c: c["model"].pop("backbone"), "model.backbone", "mapping"),
        (lambda c: c["model"]["encoder"].pop("name"), "model.encoder.name", "registered"),
        (lambda c: c["model"]["head"].update(num_classes=0), "model.head.num_classes", "positive"),
        (lambda c: c["model"].update(classes=["a", "b"]), "model.head.num_classes", "agree"),
        (lambda c: c["model"]["input"].update(size=[28]), "model.input.size", "[height, width]"),
        (lambda c: c["model"]["input"].update(std=[1, 0, 1]), "model.input.std", "positive"),
        (lambda c: c["model"]["input"].update(max_size=10), "model.input.max_size", "classify"),
        (lambda c: c["model"]["encoder"].update(levels=[]), "model.encoder.levels", "non-empty"),
        (lambda c: c.update(train=[1]), "train", "mapping"),
        (lambda c: c["model"].update(category_ids=[1, 2]), "model.category_ids", "one id per class"),
        (lambda c: c["model"].update(category_ids=[1] * 10), "model.category_ids", "without repeats"),
        (lambda c: c["model"].update(category_ids=["a"] * 10), "model.category_ids", "integers"),
    ],
)
def test_bad_fields_are_named(mutate, field, hint):
    config = classify_config({"name": "lstm"})
    mutate(config)
    error = _error(config)
    assert error.field == field
    assert hint in str(error)
    assert str(error).startswith(f"config field {field}:")


def test_detect_max_size_below_size():
    config = detect_config({"name": "identity"})
    config["model"]["input"]["max_size"] = 32
    assert _error(config).field == "model.input.max_size"


def test_yaml_file_errors(tmp_path):
    with pytest.raises(LstmdetError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(LstmdetError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(LstmdetError, match="mapping at the top level"):
        load_config(bad)


def test_set_value_parses_yaml_and_creates_sections():
    config = {"train": {"epochs": 2}}
    set_value(config, "train.epochs=5")
    set_value(config, "model.encoder.hidden=32")
    set_value(config, "model.backbone.widths=[8, 16]")
    assert config["train"]["epochs"] == 5
    assert config["model"]["encoder"]["hidden"] == 32
    assert config["model"]["backbone"]["widths"] == [8, 16]
    with pytest.raises(ConfigError):
        set_value(config, "no-equals-sign")
    with pytest.raises(ConfigError, match=r"train\.epochs: holds a value of type int"):
        set_value(config, "train.epochs.x=1")


@pytest.mark.parametrize("make", [lambda: classify_config({"name": "lstm"}), lambda: detect_config({"name": "bilstm"})])
def test_validation_is_idempotent(make):
    """Checkpoints store validated configs, which are validated again when loaded."""
    once = load_config(make())
    assert load_config(once) == once


def test_load_config_applies_overrides_to_a_file_or_a_dict_without_changing_the_dict(tmp_path):
    import yaml

    config = classify_config({"name": "lstm"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    for source in (path, str(path), config):
        cfg = load_config(source, ["train.epochs=3", "model.encoder.hidden=8"])
        assert cfg["train"]["epochs"] == 3 and cfg["model"]["encoder"]["hidden"] == 8
    assert "train" not in config and "hidden" not in config["model"]["encoder"]
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(config, ["no-equals-sign"])


def test_load_config_copies_a_dict_as_plain_data(tmp_path):
    config = detect_config({"name": "identity"})
    config["model"]["backbone"]["widths"] = (16, 32, 32)
    config["model"]["encoder"]["levels"] = ("c2", "c3")
    config["data"] = {"train": {"name": "coco", "annotations": tmp_path / "a.json"}}
    cfg = load_config(config)
    assert cfg["model"]["backbone"]["widths"] == [16, 32, 32] and cfg["model"]["encoder"]["levels"] == ["c2", "c3"]
    assert cfg["data"]["train"]["annotations"] == str(tmp_path / "a.json")
    config["model"]["head"]["extra"] = object()
    with pytest.raises(LstmdetError, match=r"only mappings, lists, strings, numbers, booleans and null.*object"):
        load_config(config)


def test_an_unknown_key_is_named_with_the_closest_allowed_one():
    config = classify_config({"name": "lstm"})
    config["train"] = {"epoch": 3}
    error = _error(config)
    assert error.field == "train.epoch"
    assert str(error).startswith("config field train.epoch: unknown key (did you mean 'epochs'?); allowed keys here:")


def test_a_misspelt_component_option_names_only_the_unknown_key(tmp_path):
    """`--set model.encoder.hiden=16` names hiden (not hidden), suggests hidden and lists what is accepted."""
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(classify_config({"name": "bilstm", "hidden": 8})))
    config = load_config(path, ["model.encoder.hiden=16"])
    with pytest.raises(ConfigError) as info:
        lstmdet.create_model(config)
    message = str(info.value)
    assert info.value.field == "model.encoder.hiden"
    assert message == (
        "config field model.encoder.hiden: encoder 'bilstm' has no option 'hiden' (did you mean 'hidden'?); "
        "accepted options: hidden, layers, scan, init"
    )
