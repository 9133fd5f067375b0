"""``lstmdet model`` and ``lstmdet plugins NAME``: the text a user reads."""

from __future__ import annotations

import yaml

from lstmdet.cli.inspect_cmds import format_shape
from lstmdet.cli.main import main

#: A detector whose neck changes the channels of c3 (48 -> 32) and whose encoder runs on c3 only.
NECK_CONFIG = {
    "task": "detect",
    "model": {
        "input": {"size": 64, "max_size": 64},
        "backbone": {"name": "small_cnn", "widths": [16, 32, 48], "levels": ["c2", "c3"]},
        "neck": {"channels": 32},
        "encoder": {"name": "bilstm", "hidden": 16, "levels": ["c3"]},
        "head": {"name": "fcos", "num_classes": 3},
    },
}

MODEL_TEXT = """\
task: detect  classes: 3  input: (1, 3, 64, 64) (T, 3, H, W)
PART      COMPONENT  PLUGIN           PARAMS  OPTIONS
backbone  small_cnn  backbones_small  51,504  {"widths": [16, 32, 48], "levels": ["c2", "c3"]}
neck      fpn        lstmdet          21,120  {"channels": 32}
encoder   bilstm     encoders_lstm    12,800  {"hidden": 16, "levels": ["c3"]}
head      fcos       heads_detection  76,808  {"num_classes": 3, "levels": null}
parameters: 162,232
level c2: backbone (32, 16, 16) -> neck (32, 16, 16) -> head
level c3: backbone (48, 8, 8) -> neck (32, 8, 8) -> encoder (32, 8, 8) -> head
output per image: boxes (K, 4), scores (K,), labels (K,)
"""


def test_model_text_shows_the_neck_on_every_level_and_plain_shapes(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(NECK_CONFIG, sort_keys=False))
    assert main(["model", str(path)]) == 0
    text, flops = capsys.readouterr().out.rsplit("GFLOPs per image: ", 1)
    assert text == MODEL_TEXT
    assert [part.split()[0] for part in flops.split(", ")] == ["backbone", "neck", "encoder", "head", "total"]


def test_model_json_has_the_neck_shapes():
    from lstmdet import create_model
    from lstmdet.summary import describe_model

    info = describe_model(create_model(NECK_CONFIG))
    assert info["levels"] == {
        "c2": {"backbone": [32, 16, 16], "neck": [32, 16, 16]},
        "c3": {"backbone": [48, 8, 8], "neck": [32, 8, 8], "encoder": [32, 8, 8]},
    }
    assert info["output"] == {"boxes": ["K", 4], "scores": ["K"], "labels": ["K"]}


def test_shapes_read_as_in_the_docs():
    assert format_shape(["K", 4]) == "(K, 4)"
    assert format_shape(["K"]) == "(K,)"
    assert format_shape([1, 3, 64, 64]) == "(1, 3, 64, 64)"
    assert format_shape([]) == "()"
