"""Helpers shared by the tests (importable because pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

import lstmdet
from lstmdet.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LSTMDET_BIN = Path(sys.executable).with_name("lstmdet")
#: summary.json fields that depend on timing.
TIMING = ("seconds", "images_per_s")


class HubCache(NamedTuple):
    """A temporary torch hub cache and the URLs that something tried to download into it."""

    dir: Path
    calls: list[str]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``lstmdet`` console script; returns the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(LSTMDET_BIN), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300)


def classify_config(encoder: dict, backbone: dict | None = None, **head) -> dict:
    """A small MNIST-sized classification config around ``encoder``."""
    return {
        "task": "classify",
        "model": {
            "input": {"size": 28, "mean": [0.13] * 3, "std": [0.31] * 3},
            "backbone": backbone or {"name": "small_cnn", "widths": [16, 32]},
            "encoder": encoder,
            "head": {"name": "classifier", "num_classes": 10, **head},
        },
    }


def detect_config(encoder: dict, head: str = "fcos", **extra) -> dict:
    """A small detection config for 64x64 images around ``encoder``."""
    return {
        "task": "detect",
        "model": {
            "input": {"size": 64, "max_size": 64},
            "backbone": {"name": "small_cnn", "widths": [16, 32, 32], "levels": ["c2", "c3"]},
            "neck": {"channels": 32},
            "encoder": encoder,
            "head": {"name": head, "num_classes": 3, **extra},
        },
    }


def install_plugin(site: Path, package: str, source: str, entry_point: str) -> Path:
    """Write ``package`` (one module) and its ``.dist-info`` into ``site``, as pip would install it.

    Args:
        site: A folder to put on ``PYTHONPATH`` / ``sys.path``.
        package: Import name of the plugin package.
        source: Its ``__init__.py``.
        entry_point: Name of its entry point in the ``lstmdet`` group.
    """
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    dist_info = site / f"{package}-0.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.3\n")
    (dist_info / "entry_points.txt").write_text(f"[lstmdet]\n{entry_point} = {package}\n")
    (dist_info / "INSTALLER").write_text("pip\n")
    (dist_info / "RECORD").write_text("")
    return site


def assert_same_outputs(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> None:
    """Same files under ``a`` and ``b``, byte for byte; ``summary.json`` equal but for timing and ``ignore``."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        if rel.name == "summary.json":
            drop = (*TIMING, *ignore)
            sa, sb = (json.loads((root / rel).read_text()) for root in (a, b))
            assert {k: v for k, v in sa.items() if k not in drop} == {k: v for k, v in sb.items() if k not in drop}
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def tiny_config(encoder: dict | None = None) -> dict:
    """A very small detector (32-48 px inputs) that keeps every detection (score_thresh 0)."""
    return {
        "task": "detect",
        "model": {
            "classes": ["cat", "dog", "kite"],
            "input": {"size": 32, "max_size": 48},
            "backbone": {"name": "small_cnn", "widths": [8, 8, 8], "levels": ["c2", "c3"]},
            "neck": {"channels": 8},
            "encoder": encoder or {"name": "identity"},
            "head": {"name": "fcos", "num_classes": 3, "num_convs": 1, "norm": "none", "score_thresh": 0.0,
                     "detections_per_img": 10},
        },
    }  # fmt: skip


def save_tiny(path: Path, encoder: dict | None = None, category_ids: list[int] | None = None) -> Path:
    """Build the tiny model with large random weights (distinct scores, real boxes) and save it."""
    torch.manual_seed(3)
    config = tiny_config(encoder)
    if category_ids is not None:
        config["model"]["category_ids"] = category_ids
    model = lstmdet.create_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return save_checkpoint(path, model)


def digit_clip(frames: int, size: int = 48, seed: int = 1) -> Any:
    """A moving-digit clip ``(T, size, size, 3)`` uint8 from the ``digits_video`` dataset (test digits)."""
    clips = lstmdet.create_component("datasets", "digits_video", clips=1, frames=frames, size=size, seed=seed,
                                     split="test", digits=(2, 2))  # fmt: skip
    return clips[0][0]


def encode_video(
    path: Path, frames: Any, fps: int = 10, *, rotation: float | None = None, hflip: bool = False, gop: int = 4,
    codec: str = "libx264", pix_fmt: str = "yuv420p", container: str | None = None,
) -> Path:  # fmt: skip
    """Encode ``frames`` (``(T, H, W, 3)`` uint8 RGB) with PyAV: frame ``t`` at ``t / fps`` seconds.

    Args:
        rotation: A display matrix rotating the video counter-clockwise by this many degrees.
        hflip: The display matrix also mirrors it.
        gop: Key frame interval (a seek lands on the key frame before the target).
    """
    import av

    with av.open(str(path), mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps, options={"g": str(gop)} if codec == "libx264" else None)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if rotation is not None or hflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip)
        for t, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = t
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def corrupt_video(path: Path, frames: Any, fps: int, at: float) -> Path:
    """``frames`` as PNG-coded frames in a MOV (each frame its own key frame), 200 bytes zeroed at the share
    ``at`` of the file: FFmpeg's decoder fails on that packet."""
    encode_video(path, frames, fps, codec="png", pix_fmt="rgb24")
    data = bytearray(path.read_bytes())
    middle = int(len(data) * at)
    data[middle : middle + 200] = bytes(200)
    path.write_bytes(bytes(data))
    return path


def decode_video(path: Path) -> tuple[list[Any], list[float]]:
    """PyAV's own decode of ``path``: the RGB arrays (as stored) and the frame times in seconds."""
    import av

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return [f.to_ndarray(format="rgb24") for f in frames], [float(f.time) for f in frames]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.1) -> object:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class RedisServer:
    """A private ``redis-server`` (AOF with fsync on every write, so a restart loses nothing).

    The real binary (``.ci/run`` installs it when missing) on a free loopback port.

    Args:
        folder: Its working folder (AOF files).
        password: ``requirepass``, or ``None``.
        tls: A folder from :func:`make_certificates`: serve TLS only (``rediss://``).
    """

    def __init__(self, folder: Path, password: str | None = None, tls: Path | None = None) -> None:
        self.folder, self.password, self.tls, self.port = folder, password, tls, free_port()
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0, password: str | None = None) -> str:
        secret = password if password is not None else self.password
        auth = f":{secret}@" if secret else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/{db}"
        return f"rediss://{auth}127.0.0.1:{self.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={self.tls / 'ca.crt'}"

    def start(self) -> RedisServer:
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls is not None:
            argv[argv.index("--port") + 1] = "0"
            argv += ["--tls-port", str(self.port), "--tls-cert-file", str(self.tls / "server.crt"),
                     "--tls-key-file", str(self.tls / "server.key"), "--tls-ca-cert-file", str(self.tls / "ca.crt"),
                     "--tls-auth-clients", "no"]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, 20, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        if self.tls is not None:
            auth += ["--tls", "--cacert", str(self.tls / "ca.crt")]
        done = subprocess.run(["redis-cli", "-p", str(self.port), *auth, "ping"], capture_output=True, text=True)
        return done.stdout.strip() == "PONG"

    def kill(self) -> None:
        """SIGKILL the server (a crash: only what the AOF holds survives)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def queued(broker_url: str, queue: str = "cpu") -> list[dict[str, Any]]:
    """The Celery messages waiting in ``queue`` of a Redis broker, oldest first.

    Returns:
        ``{"task", "id", "args", "eta", "raw"}`` per message; ``raw`` is the list entry as stored.
    """
    import redis

    client = redis.Redis.from_url(broker_url, decode_responses=True)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    messages = []
    for text in reversed(raw):  # kombu pushes on the left
        message = json.loads(text)
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        headers = message["headers"]
        messages.append({"task": headers["task"], "id": headers["id"], "args": args, "eta": headers.get("eta"),
                         "raw": text})  # fmt: skip
    return messages
