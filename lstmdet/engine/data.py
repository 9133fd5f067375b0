"""Datasets from a config, augmentation, and reproducible data loaders.

Reproducibility does not depend on how many epochs ran in this process: the order of an epoch
is drawn from a generator seeded with ``(seed, epoch)``, and each item's augmentation is seeded
with ``(seed, epoch, index)``, whichever loader worker handles it. Training 4 epochs straight
and training 2, stopping and resuming 2 therefore see exactly the same batches; so does stopping
mid-epoch, since ``EpochSampler.set_epoch(epoch, start)`` skips the items already trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lstmdet.data.augment import build_augment, collate, to_tensors
from lstmdet.data.images import ImageReadError
from lstmdet.errors import ConfigError
from lstmdet.manager import current_registry


def build_dataset(spec: dict[str, Any], field: str, task: str | None = None) -> Dataset:
    """Create the registered dataset a ``data.<split>`` section names.

    Args:
        spec: ``{name: ..., **options}``.
        field: Where the spec comes from, for messages (``data.train``, ``--data``).
        task: The model's task; when given, the dataset's ``task`` must be the same (a detector
            scored on classification data would otherwise report a silent ``map: 0.0``).

    Raises:
        ConfigError: Unknown dataset or a bad option, or a dataset of another task than ``task``;
            the message names ``field``.
    """
    dataset = current_registry().create_from_spec("datasets", spec, field)
    found = getattr(dataset, "task", None)
    if task is not None and found is not None and found != task:
        raise ConfigError(
            field,
            f"dataset {spec['name']!r} is a {found} dataset but the model is a {task} model; give a {task} "
            "dataset (`lstmdet plugins` lists the datasets)",
        )
    return dataset


def _item_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` pairs: a shuffled (or ordered) pass seeded by ``(seed, epoch)``.

    Args:
        size: Number of items in the dataset.
        shuffle: Draw a permutation; otherwise indices in order.
        seed: Base seed of the run.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int) -> None:
        self.size, self.shuffle, self.seed, self.epoch, self.start = size, shuffle, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch whose order the next iteration yields.

        Args:
            epoch: 0-based epoch; the order is a function of ``(seed, epoch)`` only.
            start: Skip the first ``start`` items of that order (resuming mid-epoch: pass
                ``batches_done * batch_size``). Skipped items are never loaded.

        Raises:
            ValueError: ``start`` is negative.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0 (items of the epoch to skip), got {start}")
        self.epoch, self.start = epoch, min(start, self.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = range(self.size)
        return ((self.epoch, i) for i in order[self.start :])

    def __len__(self) -> int:
        """Items the next iteration yields: the dataset size less the skipped ``start`` items.

        A ``DataLoader`` therefore reports the batches left in the epoch; take the full epoch's
        batch count (e.g. for a schedule's total steps) while ``start`` is 0.
        """
        return self.size - self.start


class AugmentedDataset(Dataset):
    """Applies a split's augmentation to a dataset and converts items to model tensors.

    Indexed by ``(epoch, index)`` pairs from :class:`EpochSampler` (or a plain index, epoch 0).

    Args:
        dataset: A registered dataset (numpy items, see ``lstmdet.hookspecs``).
        task: ``"classify"`` or ``"detect"``.
        split: ``"train"`` (random augmentation) or ``"eval"``.
        augment: The config's ``data.augment`` section, or ``None`` for the presets.
        seed: Base seed of the run.
    """

    def __init__(self, dataset: Dataset, *, task: str, split: str, augment: dict | None, seed: int) -> None:
        self.dataset, self.task, self.seed, self.split = dataset, task, seed, split
        self.augment = build_augment(task, split, augment)
        if split == "eval" and hasattr(dataset, "replace_unreadable"):
            dataset.replace_unreadable = False  # never score one image twice in place of another

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, Any]:
        """``(image, target)`` model tensors; in the ``eval`` split an unreadable file gives
        ``(None, {"unreadable": path, "reason": reason})`` (see :func:`readable`)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        try:
            image, target = self.dataset[index]
        except ImageReadError as exc:
            if self.split != "eval":
                raise
            return None, {"unreadable": exc.path, "reason": exc.reason}
        self.augment.set_seed(_item_seed(self.seed, epoch, index))
        image, target = self.augment(image, target)
        return to_tensors(image, target, self.task)


def readable(images: list[Any], targets: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
    """Split a collated eval batch into its readable part and the paths of unreadable files.

    Returns:
        ``(images, targets, unreadable)``: the batch without the ``None`` items of unreadable files
        (and their one marker target each), and those files' paths.
    """
    unreadable = [t["unreadable"] for t in targets if "unreadable" in t]
    if not unreadable:
        return images, targets, []
    return [i for i in images if i is not None], [t for t in targets if "unreadable" not in t], unreadable


def build_loader(
    dataset: AugmentedDataset, *, batch_size: int, shuffle: bool, workers: int, seed: int, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over ``(epoch, index)`` keys; call ``loader.sampler.set_epoch(e)`` each epoch.

    ``loader.sampler.set_epoch(e, start=k)`` resumes epoch ``e`` after its first ``k`` items.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=seed),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        # A private generator: creating an iterator does not consume the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )
