"""The ``plugins`` and ``model`` commands: output contract, --help, one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import ROOT, classify_config, detect_config, run_cli

from lstmdet.cli.main import main


def test_plugins_table_and_json(capsys):
    assert main(["plugins"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["KIND", "NAME", "PLUGIN", "DISTRIBUTION"]
    assert any(line.split()[:3] == ["encoders", "convlstm", "encoders_convlstm"] for line in table.splitlines())
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"kind", "name", "plugin", "distribution"} == set(rows[0])


@pytest.mark.parametrize("encoder", ["identity", "lstm", "bilstm", "convlstm"])
def test_model_json_reports_shapes_params_and_flops(encoder, tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(
        yaml.safe_dump(detect_config({"name": encoder, "hidden": 32} if encoder != "identity" else {"name": encoder}))
    )
    assert main(["model", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [p["part"] for p in info["parts"]] == ["backbone", "neck", "encoder", "head"]
    assert info["params"] == sum(p["params"] for p in info["parts"])
    assert info["levels"]["c3"]["backbone"] == [32, 8, 8]
    flops = info["flops_per_image"]
    assert flops["backbone"] > 0 and flops["head"] > 0
    assert (flops["encoder"] > 0) == (encoder != "identity")
    assert flops["total"] == pytest.approx(sum(v for k, v in flops.items() if k != "total"))


def test_lstm_flops_are_counted_analytically(tmp_path, capsys):
    """An nn.LSTM is invisible to PyTorch's FLOP counter; the report must still count its steps."""
    config = classify_config(
        {"name": "lstm", "hidden": 16, "scan": "rows"}, backbone={"name": "small_cnn", "widths": [8]}
    )
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["model", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # c1 of a 28x28 input is 14x14 with 8 channels; one row sweep = 14*14 LSTM steps of 4 gates.
    matmul_flops = 14 * 14 * 4 * 16 * (8 + 16) * 2
    assert info["flops_per_image"]["encoder"] >= matmul_flops


def test_model_text_output(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(classify_config({"name": "bilstm", "hidden": 8})))
    assert main(["model", str(path), "--set", "model.encoder.hidden=4"]) == 0
    out = capsys.readouterr().out
    assert "bilstm" in out and "encoders_lstm" in out and "GFLOPs per image" in out
    assert "encoder (8, 7, 7)" in out  # hidden 4 per direction after the override


@pytest.mark.parametrize("command", ["plugins", "model"])
def test_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "usage: lstmdet " + command in result.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(classify_config({"name": "gru"})))
    result = run_cli("model", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "model.encoder.name" in result.stderr and "bilstm" in result.stderr
    missing = run_cli("model", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read config file" in missing.stderr


def test_shipped_configs_build(capsys):
    paths = sorted((ROOT / "examples").rglob("*.yaml")) + sorted((ROOT / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        assert main(["model", str(path), "--json"]) == 0, path
        capsys.readouterr()


@pytest.mark.parametrize(
    ("baseline", "recipe"),
    [("digits_det_identity", "digits_det_bilstm"), ("digits_video_frame", "digits_video_convlstm")],
)
def test_paired_recipes_differ_only_in_the_encoder(baseline, recipe):
    """Each LSTM recipe is measured against a baseline with the same backbone, head, data and budget."""
    configs = [yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text()) for name in (baseline, recipe)]
    for config in configs:
        assert config["model"].pop("encoder")
    assert configs[0] == configs[1]
