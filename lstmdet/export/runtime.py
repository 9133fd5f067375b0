"""ONNX Runtime as a detection runtime: an exported ``.onnx`` detector behind the model interface of ``detect``.

:class:`OnnxModel` offers what the detect engine uses of an :class:`~lstmdet.model.LstmdetModel`
(``task``, ``classes``, ``config``, ``stateful``, ``head`` thresholds, ``predict``, ``predict_step``),
so ``lstmdet detect SRC --weights model.onnx`` runs through the same loader, writers and exit codes.
Images are resized and padded into batches exactly as the PyTorch model batches them (each batch
padded to its largest image rounded up to the stride, with the normalisation mean, which is zero
after normalisation), and the boxes mapped back to original pixels as PyTorch does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lstmdet.errors import ExportError, LstmdetError
from lstmdet.export import contract
from lstmdet.transforms import resized_size


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "running .onnx files needs ONNX Runtime, which is not installed; pip install 'lstmdet[export]'"
        ) from None
    return onnxruntime


def choose_providers(device: str, available: list[str]) -> list[Any]:
    """ONNX Runtime execution providers for a ``--device`` value, given the providers ONNX Runtime has.

    A pure function (no ONNX Runtime call): ``cpu``: the CPU provider. ``auto``: CUDA (device 0) first when
    ``available`` has it, else the CPU provider. ``cuda`` / ``cuda:N``: CUDA on device ``N`` (0 by default),
    with the CPU provider for ops CUDA lacks.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        available: ``onnxruntime.get_available_providers()``.

    Returns:
        The ``providers`` argument of ``onnxruntime.InferenceSession``.

    Raises:
        LstmdetError: An unknown device, or CUDA asked for where ONNX Runtime has no CUDA provider.
    """
    cuda = "CUDAExecutionProvider" in available
    device = str(device)
    if device == "cpu" or (device == "auto" and not cuda):
        return ["CPUExecutionProvider"]
    if device == "auto" or device.split(":")[0] == "cuda":
        index = device.split(":")[1] if ":" in device else "0"
        if not index.isdigit() or device.count(":") > 1:
            raise LstmdetError(f"unknown device {device!r} (--device); use auto, cpu, cuda or cuda:N")
        if not cuda:
            raise LstmdetError(
                f"device {device!r} was asked for but this ONNX Runtime has no CUDA provider (it has "
                f"{', '.join(available)}); install onnxruntime-gpu, or use --device cpu"
            )
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise LstmdetError(f"unknown device {device!r} (--device); use auto, cpu, cuda or cuda:N")


def providers_for(device: str) -> list[Any]:
    """:func:`choose_providers` with the providers this ONNX Runtime has."""
    return choose_providers(device, list(_onnxruntime().get_available_providers()))


#: ONNX Runtime session config entries of every session lstmdet makes (``benchmarks/export_profile.py
#: --variants`` compares others). Idle intra-op threads sleep instead of spinning: image decoding and the
#: writers run between calls on the same cores, and spinning threads would take their time (about 35 % of
#: a detect call on 2 cores, measured with cProfile on coco128).
SESSION_CONFIG: dict[str, str] = {"session.intra_op.allow_spinning": "0"}


def make_session(path: str | Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path``.

    Args:
        path: The ``.onnx`` file.
        device: See :func:`providers_for`.
        threads: Intra-op threads; default: ``torch.get_num_threads()`` (the machine's cores, or
            ``OMP_NUM_THREADS``), the same budget as the PyTorch path.

    Raises:
        ExportError: The file is missing or ONNX Runtime cannot load it.
    """
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    if not Path(path).is_file():
        raise ExportError(f"ONNX file {path} does not exist (or is not a file); write one with `lstmdet export`")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers_for(device))
    except LstmdetError:
        raise
    except Exception as exc:  # (ONNX Runtime raises its own types)
        raise ExportError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:300]}") from None


class BakedHead:
    """The detection post-processing baked into an exported graph, as the head attributes ``detect`` sets.

    A run may tighten it (a higher ``score_thresh``, fewer ``detections_per_img``: filtering the
    graph's output gives exactly what the graph would give) but not loosen it or change the NMS IoU.
    """

    def __init__(self, settings: dict[str, Any], source: str) -> None:
        self._baked = settings
        self._source = source
        self._score = float(settings["score_thresh"])
        self._max = int(settings["detections_per_img"])

    @property
    def score_thresh(self) -> float:
        """Minimum score kept (at least the baked one)."""
        return self._score

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        baked = float(self._baked["score_thresh"])
        if value < baked:
            raise LstmdetError(
                f"{self._source} was exported with score_thresh {baked}: the graph drops lower scores, so --conf "
                f"{value} cannot be honoured; use --conf >= {baked}, or export again with "
                f"`lstmdet export ... --conf {value}`"
            )
        self._score = float(value)

    @property
    def nms_thresh(self) -> float:
        """NMS IoU threshold (fixed in the graph)."""
        return float(self._baked["nms_thresh"])

    @nms_thresh.setter
    def nms_thresh(self, value: float) -> None:
        if value != self.nms_thresh:
            raise LstmdetError(
                f"{self._source} was exported with NMS IoU threshold {self.nms_thresh}, which is part of the graph; "
                f"leave --iou unset, or export again with `lstmdet export ... --iou {value}`"
            )

    @property
    def detections_per_img(self) -> int:
        """Detections kept per image (at most the baked number)."""
        return self._max

    @detections_per_img.setter
    def detections_per_img(self, value: int) -> None:
        baked = int(self._baked["detections_per_img"])
        if value > baked:
            raise LstmdetError(
                f"{self._source} was exported with {baked} detections per image: --max-det {value} cannot be "
                f"honoured; use --max-det <= {baked}, or export again with `lstmdet export ... --max-det {value}`"
            )
        self._max = int(value)


class OnnxModel:
    """An exported model (``.onnx``) run by ONNX Runtime, with the interface ``detect`` and ``eval`` use.

    Images are fed as :class:`~lstmdet.model.LstmdetModel` feeds them, so that the outputs agree:
    detectors with dynamic ``H, W`` get each batch resized (:func:`~lstmdet.transforms.resize_for_detection`)
    and padded to the batch's largest size rounded up to the stride, with each image's size as
    ``image_sizes``; a fixed-size detector gets images fitted into its input size
    (:func:`~lstmdet.export.contract.fit_size`); a classifier gets images resized to its input size.

    Args:
        path: The file ``lstmdet export`` wrote.
        device: ``auto``, ``cpu``, ``cuda[:N]`` (see :func:`providers_for`).
        threads: Intra-op threads (default: ``torch.get_num_threads()``).

    Raises:
        ExportError: Not an lstmdet export, or ONNX Runtime cannot load it.
    """

    training = False

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = make_session(self.path, device, threads)
        meta = contract.parse_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.meta = meta
        self.task: str = meta["task"]
        self.classes: list[str] = list(meta["classes"])
        self.config: dict[str, Any] = meta["config"]
        #: COCO category id of each class, as the checkpoint's model (0..N-1 for files without them).
        self.category_ids: list[int] = list(
            self.config.get("model", {}).get("category_ids") or range(len(self.classes))
        )
        self.state_entries: list[dict[str, Any]] = list(meta["state"])
        self.stateful = bool(self.state_entries)
        self.batch: int | None = meta["batch"]
        self.input_size = contract.input_size(self.config)
        self.dynamic_size = bool(meta["input"].get("dynamic_size", False))
        self.stride = int(meta["input"].get("size_divisible", 1))
        self.sizes_input = contract.IMAGE_SIZES in meta["input"].get("optional_inputs", {})
        self.pad_value = np.asarray(meta["input"]["pad_value"], dtype=np.float32).reshape(3, 1, 1)
        self.head = BakedHead(meta["postprocess"], str(self.path)) if self.task == "detect" else None
        self.device = torch.device("cpu")  # inputs and outputs go through NumPy on the CPU

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses."""
        return list(self.session.get_providers())

    def eval(self) -> OnnxModel:
        """No-op (an exported graph is always in inference mode)."""
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        """No-op for ``mode=False``; an exported graph cannot be trained.

        Raises:
            LstmdetError: ``mode`` is true.
        """
        if mode:
            raise LstmdetError(f"{self.path} is an exported graph: it cannot be trained; train the checkpoint")
        return self

    def to(self, device: Any) -> OnnxModel:
        """No-op: the device is chosen when the session is made."""
        return self

    def zero_state(self, n: int, height: int, width: int) -> list[np.ndarray]:
        """Zero state tensors for ``n`` streams of ``height x width`` input batches (state entries' order)."""
        state = []
        for entry in self.state_entries:
            _, channels, h, w = entry["shape"]
            if self.dynamic_size:
                stride = int(entry["stride"])
                h, w = -(-height // stride), -(-width // stride)
            state.append(np.zeros((n, channels, h, w), dtype=np.float32))
        return state

    def run(
        self,
        images: np.ndarray,
        state: list[np.ndarray] | None = None,
        image_sizes: np.ndarray | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Run the graph on a ready batch.

        Args:
            images: ``(N, 3, H, W)`` float32 in ``[0, 1]`` at the input size.
            state: The state tensors in :attr:`state_entries` order (stateful models), or ``None`` for zeros.
            image_sizes: ``(N, 2)`` int64 height and width of each image inside the batch (detectors
                with dynamic ``H, W``), or ``None``: the whole batch.

        Returns:
            (the outputs of :data:`~lstmdet.export.contract.DETECT_OUTPUTS` or ``CLASSIFY_OUTPUTS``, new state).
        """
        n = images.shape[0]
        if self.stateful and state is None:
            state = self.zero_state(n, images.shape[2], images.shape[3])
        chunk = self.batch or n
        outputs: list[list[np.ndarray]] = []
        for start in range(0, n, chunk):
            part = images[start : start + chunk]
            parts_state = [s[start : start + chunk] for s in state or []]
            sizes = None if image_sizes is None or not self.sizes_input else image_sizes[start : start + chunk]
            real = part.shape[0]
            if real < chunk:  # a fixed-batch file: fill the last chunk with copies
                part = np.concatenate([part, np.repeat(part[-1:], chunk - real, axis=0)])
                parts_state = [np.concatenate([s, np.repeat(s[-1:], chunk - real, axis=0)]) for s in parts_state]
                if sizes is not None:
                    sizes = np.concatenate([sizes, np.repeat(sizes[-1:], chunk - real, axis=0)])
            feed = {contract.IMAGES: np.ascontiguousarray(part, dtype=np.float32)}
            if sizes is not None:
                feed[contract.IMAGE_SIZES] = np.ascontiguousarray(sizes, dtype=np.int64)
            feed.update(
                {e["input"]: s.astype(np.float32) for e, s in zip(self.state_entries, parts_state, strict=True)}
            )
            outputs.append([o[:real] for o in self.session.run(None, feed)])
        merged = [np.concatenate(column) for column in zip(*outputs, strict=True)]
        count = len(merged) - len(self.state_entries)
        return merged[:count], merged[count:]

    def _sizes(self, images: list[Tensor]) -> list[tuple[int, int]]:
        """The size each image is resized to before it goes into the graph."""
        out = []
        for image in images:
            if image.dim() != 3 or image.shape[0] != 3:
                raise LstmdetError(f"images must be (3, H, W) RGB tensors, got shape {tuple(image.shape)}")
            h, w = (int(v) for v in image.shape[-2:])
            if self.task == "classify":
                out.append(self.input_size)
            elif self.dynamic_size:
                spec = self.config["model"]["input"]
                out.append(resized_size(h, w, spec["size"], spec["max_size"]))
            else:
                out.append(contract.fit_size(h, w, self.config))
        return out

    def _batch(self, images: list[Tensor]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Resize and pad images into one input batch, as the PyTorch model batches them.

        Returns:
            (``(N, 3, H, W)`` float32 batch, the resized ``(h, w)`` of each image inside it).
        """
        sizes = self._sizes(images)
        if self.dynamic_size:
            height = -(-max(h for h, _ in sizes) // self.stride) * self.stride
            width = -(-max(w for _, w in sizes) // self.stride) * self.stride
        else:
            height, width = self.input_size
        batch = np.empty((len(images), 3, height, width), dtype=np.float32)
        batch[:] = self.pad_value
        for i, (image, size) in enumerate(zip(images, sizes, strict=True)):
            image = image.detach().float().cpu()
            if tuple(image.shape[-2:]) != size:
                # contiguous: bilinear resizing of a permuted (H, W, C)-strided image is ~100x slower
                image = image.contiguous()
                if self.task == "classify":  # as ClassifyTransform
                    image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
                else:  # as DetectTransform (torchvision's GeneralizedRCNNTransform)
                    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            batch[i, :, : size[0], : size[1]] = image.numpy()
        return batch, sizes

    def _detections(
        self, outputs: list[np.ndarray], sizes: list[tuple[int, int]], originals: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per-image dicts like ``LstmdetModel.predict``'s: boxes in original pixels, the run's thresholds."""
        if self.task == "classify":  # as ClassifierHead: softmax probabilities and their arg-max
            probs = torch.from_numpy(outputs[0]).softmax(dim=1)
            return [{"scores": p, "labels": p.argmax()} for p in probs]
        boxes, scores, labels, num = outputs
        head = self.head
        results = []
        for i, ((rh, rw), (h, w)) in enumerate(zip(sizes, originals, strict=True)):
            n = int(num[i])
            b = torch.from_numpy(boxes[i, :n].copy())
            s = torch.from_numpy(scores[i, :n].copy())
            lab = torch.from_numpy(labels[i, :n].copy())
            keep = (s > head.score_thresh).nonzero().flatten()[: head.detections_per_img]
            b, s, lab = b[keep], s[keep], lab[keep]
            b[:, 0::2] = b[:, 0::2].clamp(min=0, max=rw)
            b[:, 1::2] = b[:, 1::2].clamp(min=0, max=rh)
            ratio_h = torch.tensor(h, dtype=torch.float32) / torch.tensor(rh, dtype=torch.float32)
            ratio_w = torch.tensor(w, dtype=torch.float32) / torch.tensor(rw, dtype=torch.float32)
            b = b * torch.stack([ratio_w, ratio_h, ratio_w, ratio_h])
            results.append({"boxes": b, "scores": s, "labels": lab})
        return results

    def _forward(self, frames: list[Tensor], state: list[np.ndarray] | None) -> tuple[list[dict], Any]:
        batch, sizes = self._batch(frames)
        image_sizes = np.asarray(sizes, dtype=np.int64) if self.sizes_input else None
        outputs, state = self.run(batch, state, image_sizes)
        originals = [(int(f.shape[-2]), int(f.shape[-1])) for f in frames]
        return self._detections(outputs, sizes, originals), state

    def predict(self, images: list[Tensor]) -> list[dict[str, Tensor]] | list[list[dict[str, Tensor]]]:
        """Predictions for still images or clips, as :meth:`LstmdetModel.predict` gives them.

        Args:
            images: ``(3, H, W)`` float tensors in ``[0, 1]`` of any size, or ``(T, 3, H, W)`` clips
                (a stateful model steps through their frames, carrying its state).

        Returns:
            For still images one dict per image: detectors ``boxes`` ``(K, 4)`` xyxy original pixels,
            ``scores`` ``(K,)``, ``labels`` ``(K,)``; classifiers ``scores`` (probabilities) and ``labels``.
            For clips, one list of per-frame dicts per clip.
        """
        if not images:
            raise LstmdetError("no images given: pass a non-empty list of (3, H, W) tensors")
        if images[0].dim() != 4:
            return self._forward(list(images), None)[0]
        lengths = {clip.shape[0] for clip in images}
        if len(lengths) != 1:
            raise LstmdetError(f"clips in one batch must have the same number of frames, got {sorted(lengths)}")
        if not self.stateful:
            flat = self._forward([frame for clip in images for frame in clip], None)[0]
            t = lengths.pop()
            return [flat[i : i + t] for i in range(0, len(flat), t)]
        per_clip: list[list[dict]] = [[] for _ in images]
        state = None
        for t in range(lengths.pop()):
            outputs, state = self._forward([clip[t] for clip in images], state)
            for clip_out, out in zip(per_clip, outputs, strict=True):
                clip_out.append(out)
        return per_clip

    def predict_step(self, frames: list[Tensor], state: list[np.ndarray] | None = None) -> tuple[list[dict], Any]:
        """One frame per stream, continuing ``state`` (``None`` starts the streams), as ``LstmdetModel.predict_step``.

        Returns:
            (one prediction dict per frame, new state: the state tensors as NumPy arrays).
        """
        return self._forward(list(frames), state)
