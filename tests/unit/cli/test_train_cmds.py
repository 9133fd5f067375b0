"""``lstmdet eval`` (and ``train``) from the command line: output that reads well in a log file."""

from __future__ import annotations

import json
import re

from helpers import classify_config, run_cli

import lstmdet
from lstmdet.checkpoint import save_checkpoint


def test_eval_logs_plain_progress_lines_when_stderr_is_a_pipe(tmp_path):
    model = lstmdet.create_model(classify_config({"name": "identity"}, backbone={"name": "small_cnn", "widths": [8]}))
    save_checkpoint(tmp_path / "m.pt", model)
    done = run_cli("eval", "--weights", str(tmp_path / "m.pt"), "--batch-size", "4",
                   "--data", "{name: mnist_idx, split: test, images: 40}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("eval: ")]
    assert len(lines) == 10, done.stderr  # ten batches of 4: one line per tenth
    assert re.fullmatch(r"eval: 40/40 items \(100%\), [\d.]+ items/s", lines[-1]), lines[-1]
    assert 0.0 <= json.loads(done.stdout)["accuracy"] <= 1.0
    quiet = run_cli("eval", "--weights", str(tmp_path / "m.pt"), "--quiet",
                    "--data", "{name: mnist_idx, split: test, images: 8}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert quiet.returncode == 0 and "eval: " not in quiet.stderr, quiet.stderr
