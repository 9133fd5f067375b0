"""Sharded batch detection: one folder split into pieces that any process can take, then merged.

This is how a queued ``detect`` job runs on many workers; each step is idempotent, so a step that
runs twice (a redelivered task) changes nothing:

1. :func:`plan_shards` lists SRC once and writes ``OUT/.lstmdet-shards/plan.json``: the files in
   input order, the shard boundaries, the options and the run's identity (weights SHA-256,
   thresholds). Shards are whole batches (whole videos for a stateful model in sequence mode), so
   every image meets the same batch mates as in an in-process run. Video files follow as chunks of
   frames (:mod:`lstmdet.engine.video_chunks`), numbered after the image shards.
2. :func:`run_shard` detects one shard (or chunk) into ``shard-NNNNN.jsonl`` (written under a
   temporary name and renamed) and then writes ``shard-NNNNN.json``, the marker that the shard is
   done. A done shard is never run again.
3. :func:`merge_shards` joins the shard files in order into ``detections.jsonl`` and writes
   ``images.json``, ``coco_results.json``, ``options.json``, ``summary.json`` (and with
   ``save_video`` the annotated videos) exactly as :func:`lstmdet.engine.detect.detect` does (so
   ``lstmdet detect --resume`` can continue from them), then removes the shard folder.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lstmdet.engine.detect import Detector, _runner, detect_files, summary_record
from lstmdet.engine.detect_inputs import Inputs, list_inputs
from lstmdet.engine.detect_options import DetectOptions, head_options, options_record
from lstmdet.engine.video_chunks import (
    DEFAULT_CHUNK_FRAMES,
    DEFAULT_WARMUP_FRAMES,
    chunk_from_json,
    chunk_to_json,
    draw_videos,
    merged_lines,
    plan_chunks,
    run_chunk,
)
from lstmdet.engine.writers import DETECTIONS, OPTIONS, SUMMARY, finalize
from lstmdet.errors import LstmdetError
from lstmdet.fileio import atomic_open, atomic_path, atomic_write_json

#: Folder inside OUT that holds the plan and the finished shards until the merge.
SHARDS = ".lstmdet-shards"
PLAN = "plan.json"


@dataclass
class ShardPlan:
    """What ``plan.json`` holds.

    Attributes:
        job: The job that owns the output folder.
        root: The folder the file names are relative to.
        names: Every input file, in input order.
        videos: Sequence mode: each file's video; else ``None``.
        frames: Sequence mode: each file's frame index; else ``None``.
        shards: ``[start, stop)`` index ranges into ``names``.
        options: :class:`DetectOptions` as JSON.
        run_options: What ``options.json`` records (weights SHA-256, effective thresholds...).
        identity: ``weights`` and ``weights_sha256`` of the model.
        classes: The model's class names.
        device: The device the plan was made on.
        started: Wall-clock time (``time.time()``) the job started.
        video_files: The video files, in output order (after the images).
        chunks: The chunks of the videos (:class:`~lstmdet.engine.video_chunks.VideoChunk` as
            JSON); chunk ``i`` is shard number ``len(shards) + i``.
    """

    job: str
    root: str
    names: list[str]
    videos: list[str] | None
    frames: list[int] | None
    shards: list[list[int]]
    options: dict[str, Any]
    run_options: dict[str, Any]
    identity: dict[str, Any]
    classes: list[str]
    device: str
    started: float
    video_files: list[str] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Image shards and video chunks together: the job's pieces of work."""
        return len(self.shards) + len(self.chunks)

    def inputs(self, index: int | None = None) -> Inputs:
        """The image inputs of shard ``index`` (all inputs, videos included, when ``None``)."""
        if index is None:
            return Inputs(Path(self.root), self.names, self.videos, self.frames, list(self.video_files))
        start, stop = self.shards[index]
        cut = slice(start, stop)
        videos = self.videos[cut] if self.videos is not None else None
        frames = self.frames[cut] if self.frames is not None else None
        return Inputs(Path(self.root), self.names[cut], videos, frames)


def shard_folder(out: str | Path) -> Path:
    """Where the plan and the shard files of ``out`` live."""
    return Path(out) / SHARDS


def _shard_files(out: Path, index: int) -> tuple[Path, Path]:
    folder = shard_folder(out)
    return folder / f"shard-{index:05d}.jsonl", folder / f"shard-{index:05d}.json"


def _split(inputs: Inputs, batch_size: int, shard_size: int, whole_videos: bool) -> list[list[int]]:
    """``[start, stop)`` ranges of about ``shard_size`` files, cut between batches (or videos)."""
    n = len(inputs.names)
    if whole_videos and inputs.videos is not None:
        bounds, start = [], 0
        for i in range(1, n + 1):
            if i == n or (inputs.videos[i] != inputs.videos[i - 1] and i - start >= shard_size):
                bounds.append([start, i])
                start = i
        return bounds
    step = max(1, -(-shard_size // batch_size)) * batch_size
    return [[start, min(start + step, n)] for start in range(0, n, step)]


def load_plan(out: str | Path) -> ShardPlan | None:
    """The plan of ``out``, or ``None`` when there is none."""
    path = shard_folder(out) / PLAN
    if not path.is_file():
        return None
    return ShardPlan(**json.loads(path.read_text(encoding="utf-8")))


def plan_shards(
    src: str | Path,
    out: str | Path,
    detector: Detector,
    opts: DetectOptions,
    *,
    shard_size: int = 64,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    warmup_frames: int = DEFAULT_WARMUP_FRAMES,
    job: str = "",
) -> ShardPlan:
    """List SRC and write the shard plan into ``out`` (kept as it is when ``job`` already made one).

    Args:
        src: Image file or folder (as for :func:`~lstmdet.engine.detect.detect`).
        out: Output folder.
        detector: The model the shards will run (its identity is recorded and checked).
        opts: Run options.
        shard_size: Files per shard (rounded up to whole batches; whole videos for a stateful model
            in sequence mode).
        chunk_frames: Processed frames per chunk of a video file (see :mod:`lstmdet.engine.video_chunks`).
        warmup_frames: Frames a stateful model runs before each chunk to warm its state up.
        job: The owning job's id.

    Raises:
        LstmdetError: ``out`` already holds detections or another job's plan; SRC has no inputs or
            is a live stream.
    """
    out = Path(out)
    if shard_size < 1:
        raise LstmdetError(f"shard_size must be >= 1, got {shard_size}")
    existing = load_plan(out)
    if existing is not None:
        if existing.job != job:
            raise LstmdetError(f"{out} is the output of another job ({existing.job}); choose another --out")
        return existing
    if (out / DETECTIONS).exists():
        raise LstmdetError(f"{out} already holds detections ({DETECTIONS}); choose another --out")
    inputs = list_inputs(src, out, sequence=opts.sequence)
    if inputs.url is not None:
        raise LstmdetError(
            f"a queued detect job cannot read the live stream {inputs.url} (it has no end to cut into chunks); run "
            "`lstmdet detect URL` in process, or submit a recorded video file"
        )
    with head_options(detector, opts) as run_options:
        pass
    stateful = opts.sequence and detector.model.stateful
    chunks = plan_chunks(inputs.root, inputs.video_files, opts, chunk_frames=chunk_frames,
                         warmup_frames=warmup_frames, stateful=detector.model.stateful)  # fmt: skip
    plan = ShardPlan(
        job=job, root=str(inputs.root), names=inputs.names, videos=inputs.videos, frames=inputs.frames,
        shards=_split(inputs, opts.batch_size, shard_size, stateful) if inputs.names else [],
        options=opts.to_json(), run_options=run_options, identity=dict(detector.identity),
        classes=list(detector.model.classes), device=str(detector.device), started=time.time(),
        video_files=inputs.video_files, chunks=[chunk_to_json(chunk) for chunk in chunks],
    )  # fmt: skip
    shard_folder(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(shard_folder(out) / PLAN, asdict(plan))
    return plan


def shards_done(out: str | Path, plan: ShardPlan) -> list[int]:
    """Indices of the finished shards."""
    return [i for i in range(plan.count) if _shard_files(Path(out), i)[1].is_file()]


def run_shard(
    out: str | Path,
    plan: ShardPlan,
    index: int,
    detector: Detector,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Detect shard ``index`` of ``plan`` (an image shard, or from ``len(plan.shards)`` on a video chunk)
    unless it is done; returns its record.

    Returns:
        ``{"shard", "files", "seconds", "skipped"}`` (``files``: lines written; a chunk adds
        ``frames``, its frames with detections); ``skipped`` is True when the shard was already
        done (its file is not touched).

    Raises:
        LstmdetError: The model's weights or thresholds differ from the plan's.
        Cancelled: ``should_stop`` returned True; the shard leaves no file behind.
    """
    out = Path(out)
    jsonl, marker = _shard_files(out, index)
    if marker.is_file():
        return {**json.loads(marker.read_text(encoding="utf-8")), "skipped": True}
    opts = DetectOptions.from_json(plan.options)
    with atomic_path(jsonl) as tmp, head_options(detector, opts) as run_options:
        if run_options != plan.run_options:
            raise LstmdetError(
                f"shard {index} of {out} would run with other weights or options than the job's plan "
                f"({run_options} vs {plan.run_options}); was the checkpoint replaced during the job?"
            )
        extra = {}
        if index < len(plan.shards):
            written, seconds = detect_files(detector, plan.inputs(index), tmp, opts, out=out,
                                            should_stop=should_stop)  # fmt: skip
        else:
            chunk = chunk_from_json(plan.chunks[index - len(plan.shards)])
            written, frames, seconds = run_chunk(_runner(detector, opts), Path(plan.root), chunk, tmp, opts,
                                                 out=out, should_stop=should_stop)  # fmt: skip
            extra = {"frames": frames}
    record = {"shard": index, "files": written, "seconds": round(seconds, 3), **extra}
    atomic_write_json(marker, record)
    return {**record, "skipped": False}


def merge_shards(out: str | Path) -> dict[str, Any]:
    """Join the finished shards of ``out`` into the final files; returns the summary.

    The files equal those an in-process :func:`~lstmdet.engine.detect.detect` run writes; in
    ``summary.json`` ``seconds`` is the job's wall time from planning to merge and
    ``images_per_s`` the images over that time. A merge that already happened returns the
    existing summary.

    Raises:
        LstmdetError: No plan, or some shards are not done.
    """
    out = Path(out)
    plan = load_plan(out)
    if plan is None:
        if (out / SUMMARY).is_file() and (out / DETECTIONS).is_file():
            return json.loads((out / SUMMARY).read_text(encoding="utf-8"))
        raise LstmdetError(f"{out} holds no shard plan to merge")
    missing = sorted(set(range(plan.count)) - set(shards_done(out, plan)))
    if missing:
        raise LstmdetError(f"cannot merge {out}: shards {missing[:10]} of {plan.count} are not done")
    chunks, first_chunk = [chunk_from_json(c) for c in plan.chunks], len(plan.shards)
    parts = [_shard_files(out, i)[0] for i in range(first_chunk)]
    parts += [path for _, path in merged_lines(chunks, lambda i: _shard_files(out, first_chunk + i)[0])]
    with atomic_open(out / DETECTIONS, "wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    opts = DetectOptions.from_json(plan.options)
    atomic_write_json(out / OPTIONS, options_record(plan.run_options, plan.identity["weights"], opts))
    inputs = plan.inputs()
    counts = finalize(out, inputs.files, videos=bool(plan.video_files))
    if opts.save_video:
        draw_videos(inputs.root, plan.video_files, out / DETECTIONS, opts, out)
    seconds, fps = time.time() - plan.started, None
    if plan.video_files:
        markers = [_shard_files(out, i)[1] for i in range(first_chunk, plan.count)]
        video_seconds = sum(json.loads(m.read_text(encoding="utf-8"))["seconds"] for m in markers)
        fps = counts.get("frames", 0) / video_seconds if video_seconds > 0 else 0.0
    summary = summary_record(
        plan.identity, plan.classes, plan.device, inputs, opts, plan.run_options, counts,
        seconds=seconds, images_per_s=len(plan.names) / seconds if seconds > 0 else 0.0, resumed=0, fps=fps,
    )  # fmt: skip
    atomic_write_json(out / SUMMARY, summary)
    shutil.rmtree(shard_folder(out), ignore_errors=True)
    return summary
