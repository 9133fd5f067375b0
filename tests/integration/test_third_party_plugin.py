"""A third-party plugin from a real installed distribution works everywhere a built-in name does.

The test writes a tiny package and its ``.dist-info`` (METADATA + entry_points.txt: what pip
installs) into a temporary site directory, puts it on ``PYTHONPATH`` and drives the real
``lstmdet`` console script in subprocesses.
"""

from __future__ import annotations

import json
import textwrap

import torch
import yaml
from helpers import run_cli

import lstmdet


def _config(tmp_path):
    config = {
        "task": "classify",
        "model": {
            "input": {"size": 16},
            "backbone": {"name": "tiny_cnn", "width": 8},
            "encoder": {"name": "gru_sweep", "hidden": 12},
            "head": {"name": "classifier", "num_classes": 3},
        },
    }
    path = tmp_path / "gru.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_plugin_is_listed_with_its_distribution(plugin_site):
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(plugin_site)})
    assert result.returncode == 0, result.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    assert rows[("encoders", "gru_sweep")]["plugin"] == "gru"
    assert rows[("encoders", "gru_sweep")]["distribution"] == "lstmdet-gru-plugin 0.3"
    assert rows[("backbones", "tiny_cnn")]["plugin"] == "gru"
    assert rows[("encoders", "bilstm")]["distribution"].startswith("lstmdet ")


def test_plugin_names_work_in_configs(plugin_site, tmp_path):
    result = run_cli("model", str(_config(tmp_path)), "--json", env={"PYTHONPATH": str(plugin_site)})
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    parts = {p["part"]: p for p in info["parts"]}
    assert parts["encoder"]["component"] == "gru_sweep" and parts["encoder"]["plugin"] == "gru"
    assert info["levels"]["c1"]["encoder"] == [12, 8, 8]


def test_disabled_plugin_is_gone_with_a_clear_error(plugin_site, tmp_path):
    env = {"PYTHONPATH": str(plugin_site), "LSTMDET_DISABLE_PLUGINS": "gru"}
    listed = run_cli("plugins", "--json", env=env)
    assert "gru_sweep" not in {r["name"] for r in json.loads(listed.stdout)}
    result = run_cli("model", str(_config(tmp_path)), env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unknown backbone 'tiny_cnn'" in result.stderr and "may not be installed" in result.stderr


def test_plugin_in_process_through_python_api(plugin_site, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    assert lstmdet.components()["encoders"]["gru_sweep"] == "gru"
    model = lstmdet.create_model(_config(tmp_path))
    preds = model.predict([torch.rand(3, 16, 16)])
    assert preds[0]["scores"].shape == (3,)


def test_readme_plugin_example_is_complete(tmp_path):
    """The README's plugin example must be a working package: install it and use its name."""
    from helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- plugin-example:start -->")
    end = readme.index("<!-- plugin-example:end -->")
    blocks = readme[start:end].split("```")
    files = {}
    for block in blocks[1::2]:
        header, _, body = block.partition("\n")
        name = header.split("#", 1)[-1].strip() if "#" in header else None
        if name:
            files[name] = textwrap.dedent(body)
    assert {"pyproject.toml", "lstmdet_gru/__init__.py"} <= set(files), sorted(files)
    site = tmp_path / "site"
    (site / "lstmdet_gru").mkdir(parents=True)
    (site / "lstmdet_gru" / "__init__.py").write_text(files["lstmdet_gru/__init__.py"])
    entry_points = files["pyproject.toml"].split("[project.entry-points.lstmdet]", 1)[1].strip().splitlines()[0]
    dist_info = site / "lstmdet_gru-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: lstmdet-gru\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[lstmdet]\n" + entry_points.replace(chr(34), "") + "\n")
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    assert "gru_sweep" in {r["name"] for r in json.loads(result.stdout)}
