"""``lstmdet export``: writes the file, names it after the checkpoint by default, one-line errors (exit 2)."""

from __future__ import annotations

import json

import torch
from helpers import run_cli, save_tiny

from lstmdet.cli.main import main


def test_export_writes_onnx_and_torchscript(tmp_path, capsys, monkeypatch):
    ckpt = save_tiny(tmp_path / "tiny.pt")
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(ckpt)]) == 0  # default: tiny.onnx in the current folder
    assert capsys.readouterr().out.startswith("wrote tiny.onnx (") and (tmp_path / "tiny.onnx").is_file()
    out = tmp_path / "ts" / "tiny.torchscript"
    assert (
        main(["export", str(ckpt), "--format", "torchscript", "--out", str(out), "--batch", "3", "--conf", "0.2"]) == 0
    )
    extra = {"lstmdet.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["lstmdet.json"])
    assert meta["batch"] == "3" and json.loads(meta["postprocess"])["score_thresh"] == 0.2
    assert [t.shape for t in module(torch.rand(3, 3, 32, 48))] == [(3, 10, 4), (3, 10), (3, 10), (3,)]


def test_export_errors_are_one_line_with_exit_2(tmp_path, capsys):
    ckpt = save_tiny(tmp_path / "tiny.pt")
    for args, words in (
        (["--batch", "none"], "batch must be 'dynamic' or a positive integer, got 'none'"),
        (["--opset", "99"], "opset 99 is not supported"),
        (["--conf", "1.5"], "--conf: expected a number in [0, 1], got '1.5'"),
    ):
        assert main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("lstmdet export: error: ") and words in err, err
    missing = run_cli("export", str(tmp_path / "none.pt"), env={"OMP_NUM_THREADS": "1"})  # the installed script
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "x.onnx").exists()
