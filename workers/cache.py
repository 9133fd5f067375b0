"""Models kept loaded in a worker process between tasks.

A checkpoint (or an exported ``.onnx`` file, run by ONNX Runtime) is loaded once per process and reused
by every later task that names it; the key is
the resolved path, its modification time and size, and the device, so a checkpoint rewritten in
place (a newer ``best.pt``) is loaded again. The least recently used model is dropped beyond
``size`` entries.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lstmdet.engine.detect import Detector


class ModelCache:
    """An LRU cache of :class:`~lstmdet.engine.detect.Detector` objects.

    Args:
        size: Models kept at most.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._models: OrderedDict[tuple, Detector] = OrderedDict()
        self.loads = 0

    @staticmethod
    def _key(weights: str | None, device: str) -> tuple:
        from lstmdet.checkpoint import default_model_path
        from lstmdet.pretrained import builder_name, is_pretrained_name, weights_file

        if weights is not None and is_pretrained_name(weights):  # torchvision:<builder>: its hub cache file
            path = weights_file(builder_name(weights, "--weights"))[0]
        else:
            path = Path(weights).resolve() if weights is not None else default_model_path()
        if not path.exists():  # loading says what is missing
            return str(path), 0, 0, device
        stat = path.stat()
        return str(path), stat.st_mtime_ns, stat.st_size, device

    def get(self, weights: str | None, device: str = "auto") -> Detector:
        """The detector for ``weights`` (``None``: the default model) on ``device``, loading it if needed."""
        from lstmdet.engine.detect import open_detector

        key = self._key(weights, device)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        detector = open_detector(weights, device=device)
        self.loads += 1
        self._models[key] = detector
        while len(self._models) > self.size:
            self._models.popitem(last=False)
        return detector
