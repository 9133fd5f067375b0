"""``lstmdet model`` and ``lstmdet plugins NAME``: the text a user reads."""

from __future__ import annotations

import json

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


def _options(text: str) -> dict[str, tuple[str, str]]:
    """``{option: (default, type)}`` from the table of ``lstmdet plugins NAME``."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("OPTION "))
    starts = [lines[header].index(column) for column in ("DEFAULT", "TYPE")]
    return {
        line[: starts[0]].strip(): (line[starts[0] : starts[1]].strip(), line[starts[1] :].strip())
        for line in lines[header + 1 :]
    }


def test_plugins_name_shows_a_heads_task_and_its_options_with_defaults(capsys):
    assert main(["plugins", "fcos"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("head fcos (plugin heads_detection, lstmdet ")
    assert "\ntask: detect\n" in out
    assert "set by lstmdet: in_channels, num_classes (from model.head.num_classes), feature_info\n" in out
    options = _options(out)
    assert options["score_thresh"] == ("0.2", "float")
    assert options["norm"] == ("group", "str")
    assert options["anchor_offsets"] == ("[[0.0, 0.0]]", "Sequence[Sequence[float]]")
    assert not {"in_channels", "num_classes", "feature_info"} & set(options)

    assert main(["plugins", "classifier"]) == 0
    out = capsys.readouterr().out
    assert "\ntask: classify\n" in out and _options(out)["pool"] == ("mean", "str")


def test_plugins_name_shows_required_options_and_components_without_options(capsys):
    assert main(["plugins", "coco"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset coco ") and "\ntask: detect\n" in out
    assert _options(out)["annotations"] == ("(required)", "str | os.PathLike")
    assert _options(out)["images"][0] == "null"
    assert main(["plugins", "identity"]) == 0
    out = capsys.readouterr().out
    assert "task:" not in out and "options: none" in out


def test_plugins_name_json(capsys):
    assert main(["plugins", "bilstm", "--json"]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert (info["kind"], info["name"], info["plugin"], info["task"]) == ("encoders", "bilstm", "encoders_lstm", None)
    assert info["options"][0] == {"name": "hidden", "required": False, "default": 64, "type": "int"}


def test_an_unknown_name_is_one_line_with_the_close_names(capsys):
    assert main(["plugins", "lstn"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "lstmdet plugins: error: no component named 'lstn'; did you mean lstm, bilstm, convlstm? "
        "`lstmdet plugins` lists them all\n"
    )
    assert main(["plugins", "zzz"]) == 2
    assert "did you mean" not in capsys.readouterr().err
