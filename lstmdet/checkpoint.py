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
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from lstmdet.errors import CheckpointError
from lstmdet.fileio import atomic_path

FORMAT = "lstmdet.checkpoint"
FORMAT_VERSION = 1
DEFAULT_MODEL = "default.pt"
#: The name ``--weights`` and :func:`load_model` take for the shipped model (a file named so: ``./default``).
DEFAULT_WEIGHTS = "default"


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
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        data = _read_safetensors(path, map_location)
    else:
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"refused to load {path}: it carries pickled Python objects that are not plain data or tensors "
                f"({str(exc).splitlines()[0][:200]}). lstmdet never unpickles code; re-save the model with "
                "lstmdet (or as .safetensors) from a trusted environment"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an lstmdet checkpoint (no '{FORMAT}' header); "
            "checkpoints are written by `lstmdet train` or lstmdet.checkpoint.save_checkpoint"
        )
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {data['format_version']}, newer than this lstmdet understands "
            f"({FORMAT_VERSION}); upgrade lstmdet"
        )
    data.setdefault("train_state", None)
    return data


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
    """Rebuild the model stored in a checkpoint (``None`` or ``"default"``: the shipped default model).

    The components named in the stored config must be registered (their plugins installed).

    Raises:
        CheckpointError: See :func:`read_checkpoint`; also when the weights do not fit the config.
    """
    from lstmdet.model import build_model

    if path is None or str(path) == DEFAULT_WEIGHTS:
        path = default_model_path()
        if not path.is_file():
            raise CheckpointError(
                f"the default model file {path} is missing from this installation; pass a checkpoint "
                "with --weights / lstmdet.load(path), or reinstall lstmdet"
            )
    data = read_checkpoint(path, map_location)
    model = build_model(data["config"])
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {path} do not fit the model its config describes: {exc}") from None
    return model.to(map_location).eval()
