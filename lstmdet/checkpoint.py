"""Self-describing checkpoints that load without unpickling code.

A checkpoint holds the full config, the class names, the weights and the lstmdet version, so
``lstmdet.load(path)`` (and ``detect --weights FILE``) needs nothing else. Two formats:

* ``.pt`` (default): a ``torch.save`` dict of plain data and tensors, read back with
  ``torch.load(weights_only=True)``. It may also carry a ``train_state`` (optimiser, scheduler,
  RNG, epoch) for resuming. A file carrying any other pickled object is refused.
* ``.safetensors``: the weights as safetensors, everything else as JSON in its metadata.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from lstmdet.errors import CheckpointError
from lstmdet.fileio import atomic_path

FORMAT = "lstmdet.checkpoint"
FORMAT_VERSION = 1
DEFAULT_MODEL = "default.pt"
#: The name ``--weights`` and :func:`load_model` take for the shipped model (a file named so: ``./default``).
DEFAULT_WEIGHTS = "default"
#: What to pass instead of a file that is not a checkpoint.
WRITTEN_BY = "pass a file written by `lstmdet train` (best.pt / last.pt)"
#: How the two checkpoint formats begin: a zip archive (``torch.save``), a pickle (older
#: ``torch.save``), or safetensors' 8-byte header length followed by its JSON header.
_ZIP_MAGIC, _PICKLE_PROTO = b"PK\x03\x04", 0x80
#: Bytes read to tell what a file that is no checkpoint holds.
_SNIFF_BYTES = 1 << 16


def default_model_path() -> Path:
    """Path of the default model shipped inside the package (``lstmdet/weights/default.pt``)."""
    return Path(str(resources.files("lstmdet") / "weights" / DEFAULT_MODEL))


def save_checkpoint(path: str | Path, model: torch.nn.Module, *, train_state: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (an :class:`~lstmdet.model.LstmdetModel`) to ``path`` atomically.

    Args:
        path: Target file; ``.safetensors`` selects that format, anything else is a torch file.
        model: The model; its ``config`` and ``classes`` are stored with the weights.
        train_state: Extra plain data and tensors for resuming training (``.pt`` only).

    Returns:
        The path written.
    """
    from lstmdet import __version__

    path = Path(path)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lstmdet_version": __version__,
        "config": model.config,
        "classes": list(model.classes),
    }
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            if train_state is not None:
                raise CheckpointError("a .safetensors checkpoint cannot hold train_state; save it as .pt")
            from safetensors.torch import save_file

            save_file(state_dict, str(tmp), metadata={"lstmdet": json.dumps(header)})
        else:
            torch.save({**header, "state_dict": state_dict, "train_state": train_state}, tmp)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint's contents without executing any code from it.

    Returns:
        Dict with ``config``, ``classes``, ``state_dict``, ``lstmdet_version`` and ``train_state``
        (``None`` when absent).

    Raises:
        CheckpointError: Missing or unreadable file, not an lstmdet checkpoint, or the file
            carries pickled objects other than plain data and tensors.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}; {WRITTEN_BY}")
    content = _sniff(path)
    if content is not None:
        raise CheckpointError(f"{path} is not an lstmdet checkpoint (it is {content}); {WRITTEN_BY}")
    data = _read_safetensors(path, map_location) if path.suffix == ".safetensors" else _torch_load(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an lstmdet checkpoint (it is a PyTorch file without the '{FORMAT}' header, e.g. a bare "
            f"state_dict or another library's checkpoint); {WRITTEN_BY}, or lstmdet.checkpoint.save_checkpoint"
        )
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {data['format_version']}, newer than this lstmdet understands "
            f"({FORMAT_VERSION}); upgrade lstmdet"
        )
    data.setdefault("train_state", None)
    return data


def _sniff(path: Path) -> str | None:
    """What ``path`` holds when it is clearly no checkpoint (``"a text file ..."``); ``None`` when it may be one."""
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if not head:
        return "empty: 0 bytes"
    if path.suffix == ".safetensors" or head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTO:
        return None  # read by safetensors / torch, whose errors say what is wrong
    if head[8:10] == b'{"':
        return "a safetensors file; give it the .safetensors suffix"
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image")):
        if head.startswith(magic):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # binary, unless only a character cut at the end of the sample
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if not text or "\x00" in text:
        return "binary data of an unknown format"
    try:
        data = json.loads(text) if text.lstrip().startswith(("{", "[")) else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        data = None
    if isinstance(data, dict) and {"task", "model"} & set(data):
        return "a text file holding a YAML config, which `lstmdet train CONFIG` turns into a checkpoint"
    if isinstance(data, (dict, list)):
        return f"a text file holding {'JSON' if text.lstrip()[:1] in '{[' else 'YAML'} data"
    return "a text file"


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)`` with its failures reported as :class:`CheckpointError`."""
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise about a file that is refused anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:  # no foreign object named: a pickle that torch's safe loader cannot parse
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
            reason = f" ({detail.group(1).strip()[:200]})" if detail else ""
            raise CheckpointError(
                f"cannot read checkpoint {path}: it is a pickle file that is not a PyTorch checkpoint{reason}; "
                f"{WRITTEN_BY}"
            ) from None
        raise CheckpointError(
            f"refused to load {path}: it carries pickled Python objects ({found.group(1)}) that are not plain data "
            "or tensors, and loading them could run code from the file. lstmdet never unpickles code; re-save the "
            f"model with lstmdet (or as .safetensors) from a trusted environment, or {WRITTEN_BY}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is not a complete PyTorch file ({reason}); it may be truncated or "
            f"damaged: {WRITTEN_BY}"
        ) from None


def _read_safetensors(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            state_dict = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read safetensors checkpoint {path}: {exc}") from None
    try:
        header = json.loads(meta["lstmdet"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has no lstmdet metadata: it is not an lstmdet checkpoint") from None
    return {**header, "state_dict": state_dict}


def load_model(path: str | Path | None = None, *, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model stored in a checkpoint (``None`` or ``"default"``: the shipped default model;
    ``torchvision:<builder>``: that COCO detector, see :mod:`lstmdet.pretrained`).

    The components named in the stored config must be registered (their plugins installed).

    Raises:
        CheckpointError: See :func:`read_checkpoint`; also when the weights do not fit the config.
    """
    from lstmdet.model import build_model
    from lstmdet.pretrained import is_pretrained_name, pretrained_model

    if is_pretrained_name(str(path)):  # torchvision:<builder>: a COCO detector through torchvision's weights API
        return pretrained_model(str(path)).to(map_location)
    if path is None or str(path) == DEFAULT_WEIGHTS:
        path = default_model_path()
        if not path.is_file():
            raise CheckpointError(
                f"the default model file {path} is missing from this installation; pass a checkpoint "
                "with --weights / lstmdet.load(path), or reinstall lstmdet"
            )
    data = read_checkpoint(path, map_location)
    model = build_model(data["config"], load_weights=False)  # the checkpoint holds every weight
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {path} do not fit the model its config describes: {exc}") from None
    return model.to(map_location).eval()
