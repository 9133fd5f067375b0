"""Ctrl-C on ``lstmdet detect`` reading a live stream: the real console script, a real SIGINT, a slow HTTP
stream on 127.0.0.1; the run ends at once with complete, valid outputs (exit status 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from helpers import LSTMDET_BIN, decode_video, digit_clip, encode_video, save_tiny, wait_for
from stream_server import StreamServer


def test_ctrl_c_on_a_live_stream_leaves_complete_valid_outputs(tmp_path):
    weights = save_tiny(tmp_path / "tiny.pt")
    ts = encode_video(tmp_path / "live.ts", digit_clip(40, size=48, seed=4), 10, container="mpegts")
    out = tmp_path / "out"
    jsonl = out / "detections.jsonl"
    with StreamServer(ts, "slow", chunk=512, pause=0.2) as server:  # about 20 s for the whole stream
        process = subprocess.Popen(
            [str(LSTMDET_BIN), "detect", server.url, "--weights", str(weights), "--out", str(out), "--save-video",
             "--batch-size", "1", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        try:
            wait_for(lambda: jsonl.is_file() and jsonl.read_text().count("\n") >= 3, 60, "three frames detected")
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "stream stopped by Ctrl-C" in stderr
    text = jsonl.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    assert 3 <= len(records) < 40
    assert [r["frame_index"] for r in records] == list(range(len(records)))
    assert all("detections" in r for r in records)
    images = json.loads((out / "images.json").read_text())
    assert len(images["images"]) == len(records) and images["videos"][0]["frames"] == len(records)
    assert len(json.loads((out / "coco_results.json").read_text())) == sum(len(r["detections"]) for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["interrupted"], summary["frames"], summary["failed"]) == (True, len(records), 0)
    (saved,) = (out / "videos").iterdir()
    decoded, _ = decode_video(saved)
    assert len(decoded) == len(records) and decoded[0].shape == (48, 48, 3)
    assert f"outputs in {out}" in stdout
