"""Which ``torch.device`` a run uses: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked."""

from __future__ import annotations

import torch

from lstmdet.errors import LstmdetError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device, *, setting: str = "--device") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; any other name as ``torch.device(name)``, checked.

    Args:
        name: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or a ``torch.device``).
        setting: Where the user chose the device, named in messages: a command-line flag
            (``"--device"``) or a config field (``"train.device"``, fixed with ``--set``).

    Returns:
        The device.

    Raises:
        LstmdetError: ``name`` is not a device, or names CUDA where CUDA is not available; the
            message says what to pass instead.
    """
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise LstmdetError(f"unknown device {name!r} ({setting}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        fix = f"{setting} cpu" if setting.startswith("-") else f"--set {setting}=cpu"
        raise LstmdetError(f"device {name!r} was asked for but CUDA is not available; use {fix} (or auto)")
    return device
