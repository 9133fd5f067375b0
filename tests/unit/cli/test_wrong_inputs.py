"""Every sub-command, given wrong inputs: exit status 2, one line on stderr, no traceback.

The walk runs the CLI in-process (``main``) for speed, and a handful of the same cases through the
installed console script to show that the exit statuses hold end to end. Queue commands point at a
loopback port where nothing listens (or at a URL with a wrong scheme); no worker is ever started.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, free_port, run_cli, save_tiny, tiny_config
from PIL import Image

from lstmdet.cli.main import build_parser, main

WARNING = "lstmdet: warning: "
NOT_REDIS = {"LSTMDET_BROKER_URL": "http://x"}

#: (argv, extra environment): each must fail with exit status 2 and one line. Placeholders in braces
#: name the paths of the ``place`` fixture; ``{o}`` is a fresh output path under it.
CASES: list[tuple[list[str], dict[str, str]]] = [
    # top level
    ([], {}),
    (["nosuch"], {}),
    # plugins
    (["plugins"], {"LSTMDET_DISABLE_PLUGINS": "nosuch"}),
    (["plugins", "--bogus"], {}),
    # model
    (["model", "{missing}.yaml"], {}),
    (["model", "{adir}"], {}),
    (["model", "{empty_yaml}"], {}),
    (["model", "{png}"], {}),
    (["model", "{gru_yaml}"], {}),
    (["model", "{good}", "--frames", "0"], {}),
    (["model", "{good}", "--frames", "x"], {}),
    (["model", "{good}", "--set", "model.encoder.hiden=16"], {}),
    (["model", "{good}", "--set", "nonsense"], {}),
    (["model", "{good}", "--set", "model.head.name=nosuch"], {}),
    (["model", "{good}"], {"LSTMDET_DISABLE_PLUGINS": "heads_detecton"}),
    # train
    (["train", "{missing}.yaml", "--out", "{o}"], {}),
    (["train", "{adir}", "--out", "{o}"], {}),
    (["train", "{good}", "--out", "{afile}"], {}),
    (["train", "{good}", "--out", "{afile}/sub"], {}),
    (["train", "{nodata}", "--out", "{o}"], {}),
    (["train", "{good}", "--out", "{o}", "--resume"], {}),
    (["train", "{good}", "--out", "{o}", "--set", "train.epoch=1"], {}),
    # eval
    (["eval", "--weights", "{missing}.pt"], {}),
    (["eval", "--weights", "{adir}"], {}),
    (["eval", "--weights", "{fake_pt}"], {}),
    (["eval", "--weights", "{empty_pt}"], {}),
    (["eval", "--weights", "{png}"], {}),
    (["eval", "--weights", "{tiny}"], {}),  # its config names no data: pass --data
    (["eval", "--weights", "{tiny}", "--batch-size", "x"], {}),
    (["eval", "--weights", "{tiny}", "--batch-size", "0"], {}),
    (["eval", "--weights", "{tiny}", "--workers", "-1"], {}),
    (["eval", "--weights", "{tiny}", "--data", "[1, 2"], {}),
    (["eval", "--weights", "{tiny}", "--data", "{{name: nosuch}}"], {}),
    (["eval", "--weights", "{tiny}", "--data", "{{name: digits_det, image: 2}}"], {}),
    (["eval", "--weights", "{tiny}", "--out", "{adir}"], {}),
    (["eval", "--weights", "{tiny}", "--device", "nosuch"], {}),
    # detect
    (["detect", "{missing}", "--out", "{o}"], {}),  # the default model's note must not make it two lines
    (["detect", "{missing}", "--weights", "{tiny}", "--out", "{o}"], {}),
    (["detect", "{adir}", "--weights", "{tiny}", "--out", "{o}"], {}),
    (["detect", "{images}", "--weights", "{missing}.pt", "--out", "{o}"], {}),
    (["detect", "{images}", "--weights", "{adir}", "--out", "{o}"], {}),
    (["detect", "{images}", "--weights", "{fake_pt}", "--out", "{o}"], {}),
    (["detect", "{images}", "--weights", "{empty_pt}", "--out", "{o}"], {}),
    (["detect", "{images}", "--weights", "{tiny}", "--out", "{afile}"], {}),
    (["detect", "{images}", "--weights", "{tiny}", "--out", "{afile}/sub"], {}),
    (["detect", "{images}", "--weights", "{tiny}", "--out", "/proc/lstmdet-wrong-inputs"], {}),
    (["detect", "{images}", "--weights", "{tiny}", "--out", "{o}", "--device", "nosuch"], {}),
    (["detect", "{images}", "--out", "{o}", "--batch-size", "x"], {}),
    (["detect", "{images}", "--out", "{o}", "--batch-size", "0"], {}),
    (["detect", "{images}", "--out", "{o}", "--workers", "-1"], {}),
    (["detect", "{images}", "--out", "{o}", "--conf", "2"], {}),
    (["detect", "{images}", "--out", "{o}", "--iou", "x"], {}),
    (["detect", "{images}", "--out", "{o}", "--max-pixels", "0"], {}),
    (["detect", "{images}", "--out", "{o}", "--max-det", "-1"], {}),
    (["detect", "{images}"], {}),
    (["detect", "{images}", "--out", "{o}", "--vid-stride", "0"], {}),
    (["detect", "{images}", "--out", "{o}", "--vid-stride", "x"], {}),
    (["detect", "{images}", "--out", "{o}", "--start", "-1"], {}),
    (["detect", "{images}", "--out", "{o}", "--end", "0"], {}),
    (["detect", "{images}", "--out", "{o}", "--end", "nan"], {}),
    (["detect", "{images}", "--out", "{o}", "--max-frames", "-2"], {}),
    (["detect", "{images}", "--out", "{o}", "--start", "5", "--end", "2"], {}),
    (["submit", "detect", "{images}", "--out", "{o}", "--chunk-frames", "0"], {}),
    (["submit", "detect", "{images}", "--out", "{o}", "--warmup-frames", "-1"], {}),
    (["submit", "detect", "{images}", "--out", "{o}", "--stream-timeout", "3"], {}),  # queued jobs read no streams
    # data digits-det / digits-video
    (["data", "digits-det", "{afile}", "--images", "1"], {}),
    (["data", "digits-det", "{afile}/sub", "--images", "1"], {}),
    (["data", "digits-det", "/proc/lstmdet-wrong-inputs", "--images", "1"], {}),
    (["data", "digits-det", "{o}", "--images", "x"], {}),
    (["data", "digits-det", "{o}", "--images", "-1"], {}),
    (["data", "digits-det", "{o}", "--seed", "-1"], {}),
    (["data", "digits-det", "{o}", "--images", "1", "--size", "5"], {}),
    (["data", "digits-det", "{o}", "--split", "val"], {}),
    (["data", "digits-video", "{afile}", "--clips", "1", "--frames", "1"], {}),
    (["data", "digits-video", "{o}", "--frames", "0"], {}),
    (["data", "digits-video", "{o}", "--clips", "x"], {}),
    (["data"], {}),
    # data convert yolo
    (["data", "convert", "yolo", "{missing}", "{o}.json"], {}),
    (["data", "convert", "yolo", "{afile}", "{o}.json"], {}),
    (["data", "convert", "yolo", "{yolo_no_names}", "{o}.json"], {}),
    (["data", "convert", "yolo", "{coco30}", "{adir}"], {}),
    (["data", "convert", "yolo", "{coco30}", "{afile}/c.json"], {}),
    (["data", "convert", "yolo", "{coco30}", "{o}.json", "--names", "{missing}.yaml"], {}),
    (["data", "convert", "yolo", "{coco30}", "{o}.json", "--names", "{empty_yaml}"], {}),
    (["data", "convert", "yolo", "{coco30}", "{o}.json", "--missing-labels", "skip"], {}),
    (["data", "convert", "coco", "{coco30}", "{o}.json"], {}),
    # submit train | detect | eval
    (["submit", "train", "{missing}.yaml", "--out", "{o}"], {}),
    (["submit", "train", "{empty_yaml}", "--out", "{o}"], {}),
    (["submit", "train", "{good}", "--out", "{o}"], {}),  # nothing listening
    (["submit", "train", "{good}", "--out", "{o}"], NOT_REDIS),
    (["submit", "train", "{good}", "--out", "{o}", "--set", "train.epoch=1"], {}),
    (["submit", "detect", "{images}", "--out", "{o}"], {}),  # nothing listening
    (["submit", "detect", "{images}", "--out", "{o}"], {"LSTMDET_DATA_ROOTS": ""}),
    (["submit", "detect", "/etc", "--out", "{o}"], {}),  # outside the data roots
    (["submit", "detect", "{images}", "--out", "{o}", "--shard-size", "0"], {}),
    (["submit", "detect", "{images}", "--out", "{o}", "--conf", "x"], {}),
    (["submit", "detect", "{images}", "--out", "{o}", "--queue", "tpu"], {}),
    (["submit", "eval", "--weights", "{tiny}"], {}),  # nothing listening
    (["submit", "eval", "--weights", "{tiny}"], {"LSTMDET_BROKER_URL": "redis://:secret@host:port/0"}),
    (["submit", "eval", "--weights", "{tiny}", "--batch-size", "x"], {}),
    (["submit", "eval", "--weights", "{tiny}", "--data", "[1, 2"], {}),
    (["submit"], {}),
    # jobs list | status | wait | cancel
    (["jobs", "list"], {}),  # nothing listening
    (["jobs", "list"], NOT_REDIS),
    (["jobs", "list"], {"LSTMDET_RESULT_URL": "amqp://guest@localhost//"}),
    (["jobs", "list", "--limit", "0"], {}),
    (["jobs", "list", "--offset", "-1"], {}),
    (["jobs", "list", "--state", "done"], {}),
    (["jobs", "list", "--kind", "export"], {}),
    (["jobs", "status", "no-such-job"], {}),
    (["jobs", "status", "no-such-job"], NOT_REDIS),
    (["jobs", "wait", "no-such-job", "--timeout", "1"], {}),
    (["jobs", "wait", "no-such-job", "--timeout", "x"], {}),
    (["jobs", "cancel", "no-such-job"], {}),
    (["jobs", "cancel"], {}),
    (["jobs"], {}),
    # export
    (["export", "{missing}.pt"], {}),
    (["export", "{adir}"], {}),
    (["export", "{fake_pt}"], {}),
    (["export", "{empty_pt}"], {}),
    (["export", "{tiny}", "--format", "tflite"], {}),
    (["export", "{tiny}", "--out", "{adir}"], {}),
    (["export", "{tiny}", "--out", "/proc/lstmdet-wrong-inputs/m.onnx"], {}),
    (["export", "{tiny}", "--opset", "x"], {}),
    (["export", "{tiny}", "--conf", "2"], {}),
    (["export", "{tiny}", "--max-det", "0"], {}),
    # workers (the live workers' registry)
    (["workers"], {}),  # nothing listening
    (["workers"], NOT_REDIS),
    (["workers", "--bogus"], {}),
    # worker (must fail before starting any process)
    (["worker"], NOT_REDIS),
    (["worker", "--concurrency", "0"], {}),
    (["worker", "--concurrency", "x"], {}),
    (["worker", "--gpus", "x"], {}),
    (["worker", "--gpus", "0,0"], {}),
    (["worker", "--queues", "bogus"], {}),
    (["worker", "--queues", "gpu"], {}),
    (["worker", "--gpus", "0", "--concurrency", "2"], {}),
    (["worker"], {"LSTMDET_TIME_LIMIT": "x"}),
]

#: Some of CASES again, through the installed ``lstmdet`` script: the exit statuses hold end to end.
CONSOLE_CASES = [
    (["detect", "{images}", "--weights", "{fake_pt}", "--out", "{o}"], {}),
    (["detect", "{images}", "--out", "{o}", "--start", "5", "--end", "2"], {}),
    (["model", "{good}", "--frames", "0"], {}),
    (["plugins"], {"LSTMDET_DISABLE_PLUGINS": "nosuch"}),
    (["jobs", "list"], NOT_REDIS),
    (["jobs", "list"], {}),
]


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The wrong inputs: files where folders belong and back, empty files, a text 'checkpoint'..."""
    root = tmp_path_factory.mktemp("wrong")
    (root / "afile.txt").write_text("just text\n")
    (root / "adir").mkdir()
    (root / "empty.yaml").write_bytes(b"")
    (root / "empty.pt").write_bytes(b"")
    (root / "images").mkdir()
    Image.new("RGB", (24, 16), (200, 30, 30)).save(root / "images" / "a.png")
    (root / "yolo_no_names" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "yolo_no_names" / "images" / "b.png")
    good = tiny_config()
    good["data"] = {"train": {"name": "digits_det", "images": 2, "size": 32}}
    (root / "good.yaml").write_text(yaml.safe_dump(good))
    (root / "fake.pt").write_text(yaml.safe_dump(good))  # a config given as --weights
    (root / "nodata.yaml").write_text(yaml.safe_dump(tiny_config()))
    (root / "gru.yaml").write_text(yaml.safe_dump(tiny_config({"name": "gru"})))
    save_tiny(root / "tiny.pt")
    paths = {
        "root": root,
        "missing": root / "missing",
        "afile": root / "afile.txt",
        "adir": root / "adir",
        "empty_yaml": root / "empty.yaml",
        "empty_pt": root / "empty.pt",
        "png": root / "images" / "a.png",
        "images": root / "images",
        "yolo_no_names": root / "yolo_no_names",
        "coco30": ROOT / "tests" / "data" / "coco30",
        "good": root / "good.yaml",
        "fake_pt": root / "fake.pt",
        "nodata": root / "nodata.yaml",
        "gru_yaml": root / "gru.yaml",
        "tiny": root / "tiny.pt",
    }
    return {key: str(value) for key, value in paths.items()}


def _leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[list[str]]:
    """Every runnable command path of ``parser``: ``["plugins"]``, ``["data", "convert", "yolo"]``, ..."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        return [list(path)]
    return [leaf for name, sub in subcommands[0].choices.items() for leaf in _leaf_commands(sub, (*path, name))]


def _argv(template: list[str], place: dict[str, str], n: int) -> list[str]:
    return [arg.format(**place, o=str(Path(place["root"]) / f"out{n}")) for arg in template]


def _environment(extra: dict[str, str], place: dict[str, str], port: int) -> dict[str, str]:
    return {
        "LSTMDET_BROKER_URL": f"redis://127.0.0.1:{port}/0",  # loopback, nothing listening
        "LSTMDET_RESULT_URL": "",
        "LSTMDET_DATA_ROOTS": place["root"],
        "LSTMDET_DISABLE_PLUGINS": "",
        **extra,
    }


def _problem(status: int, stderr: str) -> str | None:
    """What breaks the rule (exit 2, one line, no traceback), or ``None``."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(WARNING)]
    if "Traceback" in stderr:
        return "a traceback"
    if status != 2:
        return f"exit status {status}"
    if len(lines) != 1:
        return f"{len(lines)} lines"
    return None


def test_every_subcommand_refuses_wrong_inputs_in_one_line(place, monkeypatch, capsys):
    from lstmdet.workers import launcher

    def no_workers(workers):
        raise AssertionError(f"the walk would have started worker processes: {workers}")

    monkeypatch.setattr(launcher, "run_workers", no_workers)
    port = free_port()
    missing = [leaf for leaf in _leaf_commands(build_parser()) if not any(t[: len(leaf)] == leaf for t, _ in CASES)]
    assert not missing, f"sub-commands without wrong-input cases: {missing}"
    failures = []
    for n, (template, extra) in enumerate(CASES):
        for key, value in _environment(extra, place, port).items():
            monkeypatch.setenv(key, value)
        argv = _argv(template, place, n)
        status = main(argv)
        stderr = capsys.readouterr().err
        problem = _problem(status, stderr)
        if problem:
            failures.append(f"lstmdet {' '.join(template)} {extra or ''}: {problem}:\n{stderr}")
    assert not failures, f"{len(failures)} of {len(CASES)} cases break the rule:\n" + "\n".join(failures)


@pytest.mark.parametrize("case", range(len(CONSOLE_CASES)))
def test_wrong_inputs_exit_2_through_the_console_script(place, case):
    template, extra = CONSOLE_CASES[case]
    argv = _argv(template, place, 1000 + case)
    result = run_cli(*argv, env=_environment(extra, place, free_port()))
    assert _problem(result.returncode, result.stderr) is None, (argv, result.returncode, result.stderr)
    assert result.stdout == ""
