"""The training loop behind ``lstmdet train`` and ``lstmdet.train``.

Writes to ``out``: ``last.pt`` (every epoch, with everything needed to resume), ``best.pt``
(best validation metric), ``metrics.jsonl`` (one line per epoch), ``metrics.csv``,
``curves.png`` and ``summary.json`` ``{"task", "epochs", "seconds", "metrics"}`` with the final
metrics on the held-out split (``data.test``, else ``data.val``) computed with ``best.pt``.

Resuming restores model, optimiser, scheduler, AMP scaler, RNG state and epoch counters; data
order and augmentation are functions of ``(seed, epoch, index)`` (see :mod:`lstmdet.engine.data`),
so a resumed run continues exactly as an uninterrupted one would have. A run stopped by
``fit(should_stop=...)`` leaves a mid-epoch ``last.pt`` (batches done and the epoch's partial
sums); resuming skips those batches without loading them and also continues exactly.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstmdet.checkpoint import read_checkpoint, save_checkpoint
from lstmdet.config import load_config
from lstmdet.engine.data import AugmentedDataset, build_dataset, build_loader
from lstmdet.engine.device import resolve_device
from lstmdet.engine.evaluate import evaluate, headline
from lstmdet.engine.logs import append_jsonl, plot_curves, read_jsonl, write_csv
from lstmdet.engine.optim import build_optimizer, build_scheduler, freeze_parts, keep_frozen_norms
from lstmdet.engine.progress import progress
from lstmdet.errors import ConfigError, LstmdetError
from lstmdet.fileio import prepare_folder
from lstmdet.model import LstmdetModel, build_model


def _adopt_classes(cfg: dict[str, Any], dataset: Any) -> None:
    """Take the training dataset's class names and category ids when the config gives none; check them.

    The ids go into the model's config (and so into every checkpoint), and the files ``detect``
    writes carry them: a model trained on a COCO file with ids 1..90 writes results with those ids.

    Raises:
        ConfigError: The class count differs from the dataset's, or ``model.category_ids`` was given
            and differs from the dataset's ids.
    """
    names = [str(c) for c in getattr(dataset, "classes", [])]
    model = cfg["model"]
    dataset_name = cfg["data"]["train"]["name"]
    if names and len(names) != model["head"]["num_classes"]:
        raise ConfigError(
            "model.head.num_classes",
            f"is {model['head']['num_classes']} but dataset {dataset_name!r} has {len(names)} classes",
        )
    if names and model["classes"] == [str(i) for i in range(len(names))]:
        model["classes"] = names
    ids = getattr(dataset, "category_ids", None)
    if not names or ids is None:
        return
    ids = [int(i) for i in ids]
    if model["category_ids"] == list(range(len(names))):
        model["category_ids"] = ids
    elif model["category_ids"] != ids:
        raise ConfigError(
            "model.category_ids",
            f"is {model['category_ids']} but dataset {dataset_name!r} has category ids {ids}; leave "
            "model.category_ids out to take the dataset's",
        )


def _to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device) -> tuple[list, list]:
    non_blocking = device.type == "cuda"
    images = [img.to(device, non_blocking=non_blocking) for img in images]
    targets = [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in targets]
    return images, targets


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain numbers (loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": [has_gauss, gauss]},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    keys = numpy_state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy_state["pos"], *numpy_state["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _no_partial() -> dict[str, Any]:
    """The partial sums of an epoch before its first batch."""
    return {"loss": 0.0, "images": 0, "seconds": 0.0}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One training run into one output folder.

    Args:
        cfg: A validated config (see :func:`lstmdet.config.load_config`) with ``data.train``.
        out: Output folder.
        resume: Continue from ``out/last.pt``.
    """

    def __init__(self, cfg: dict[str, Any], out: str | Path, *, resume: bool = False) -> None:
        self.out = Path(out)
        self.cfg = cfg
        self.tcfg = cfg["train"]
        if cfg["data"].get("train") is None:
            raise ConfigError("data.train", "training needs a dataset: data.train: {name: ..., ...}")
        last = self.out / "last.pt"
        if last.exists() and not resume:
            raise LstmdetError(f"{self.out} already holds a run (last.pt): pass --resume, or choose another --out")
        if resume and not last.exists():
            raise LstmdetError(f"cannot resume: {last} does not exist")
        prepare_folder(self.out, "--out")
        self.device = resolve_device(self.tcfg["device"], setting="train.device")
        _seed_everything(self.tcfg["seed"])

        seed, task = self.tcfg["seed"], cfg["task"]
        train_set = build_dataset(cfg["data"]["train"], "data.train", task=task)
        _adopt_classes(cfg, train_set)
        augment = cfg["data"].get("augment")
        self.train_data = AugmentedDataset(train_set, task=task, split="train", augment=augment, seed=seed)
        self.eval_data = {
            split: AugmentedDataset(build_dataset(cfg["data"][split], f"data.{split}", task=task), task=task,
                                    split="eval", augment=augment, seed=seed)
            for split in ("val", "test")
            if cfg["data"].get(split) is not None
        }  # fmt: skip
        workers = self.tcfg["workers"]
        self.loader = build_loader(
            self.train_data, batch_size=self.tcfg["batch_size"], shuffle=True, workers=workers, seed=seed,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        self.steps = len(self.loader)  # batches in a full epoch (the sampler starts at 0 here)
        self.model: LstmdetModel = build_model(cfg).to(self.device)
        self.frozen = freeze_parts(self.model, self.tcfg)
        self.optimizer = build_optimizer(self.model, self.tcfg)
        self.scheduler = build_scheduler(self.optimizer, self.tcfg, self.tcfg["epochs"] * self.steps)
        self.amp = self.tcfg["amp"] and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch, self.best, self.best_epoch, self.stale, self.seconds = 0, float("-inf"), 0, 0, 0.0
        # Mid-epoch position: batches done in the current epoch and their loss sum, images, seconds.
        self.step, self.partial = 0, _no_partial()
        if resume:
            self._restore(last)

    def _restore(self, path: Path) -> None:
        data = read_checkpoint(path, map_location=self.device)
        stored = load_config(data["config"])  # defaults of newer versions filled in (e.g. model.category_ids)
        if stored["model"] != self.cfg["model"] or stored["task"] != self.cfg["task"]:
            raise LstmdetError(f"cannot resume {path}: the config's task or model differs from the checkpoint's")
        state = data["train_state"]
        if state is None:
            raise LstmdetError(f"cannot resume {path}: it holds no training state")
        step, partial = int(state.get("step", 0)), state.get("partial") or {}
        saved_batch = partial.get("batch_size", self.tcfg["batch_size"])
        if step and saved_batch != self.tcfg["batch_size"]:
            raise LstmdetError(
                f"cannot resume {path}: it stopped mid-epoch after {step} batches of {saved_batch}, but "
                f"train.batch_size is {self.tcfg['batch_size']}; resume with --set train.batch_size={saved_batch}"
            )
        self.model.load_state_dict(data["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.stale, self.seconds = state["stale"], state["seconds"]
        self.step = step
        self.partial = {key: type(zero)(partial.get(key, zero)) for key, zero in _no_partial().items()}
        _set_rng_state(state["rng"])

    def _train_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "seconds": self.seconds,
            "step": self.step,
            "partial": {**self.partial, "batch_size": self.tcfg["batch_size"]},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
        }

    def train_epoch(
        self,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, float] | None:
        """One pass over the training data, from batch ``self.step`` on (0 unless resumed mid-epoch).

        Args:
            should_stop: Asked after every optimisation step; when it returns True the mid-epoch
                state goes to ``last.pt`` and the pass ends there.
            on_progress: Called after every step with a ``phase="step"`` event (see :meth:`fit`).

        Returns:
            Mean loss, images/s and seconds of the whole epoch, or None when ``should_stop`` stopped it.
        """
        self.model.train()
        keep_frozen_norms(self.model, self.frozen)
        batch_size, size = self.tcfg["batch_size"], len(self.train_data)
        self.loader.sampler.set_epoch(self.epoch, start=self.step * batch_size)
        total_loss, images_seen, before = self.partial["loss"], self.partial["images"], self.partial["seconds"]
        start = time.perf_counter()
        bar = progress(
            self.loader, desc=f"epoch {self.epoch + 1}/{self.tcfg['epochs']}", unit="batches", initial=self.step,
            total=self.steps, enabled=self.tcfg["progress"], leave=False,
        )  # fmt: skip
        for images, targets in bar:
            images, targets = _to_device(images, targets, self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                losses = self.model(images, targets)
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise LstmdetError(
                    f"training diverged at epoch {self.epoch + 1} (loss {loss.item()}); lower train.lr or set "
                    "train.grad_clip"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.tcfg["grad_clip"]:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg["grad_clip"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            value = loss.item()
            total_loss += value * len(images)
            images_seen += sum(1 if img.dim() == 3 else img.shape[0] for img in images)
            self.step += 1
            elapsed = before + time.perf_counter() - start
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{images_seen / max(elapsed, 1e-9):.1f}")
            if on_progress is not None:
                on_progress(self._event("step", total_loss / min(self.step * batch_size, size)))
            if should_stop is not None and should_stop():
                bar.close()
                self.partial = {"loss": total_loss, "images": images_seen, "seconds": elapsed}
                save_checkpoint(self.out / "last.pt", self.model, train_state=self._train_state())
                return None
        seconds = before + time.perf_counter() - start
        self.step, self.partial = 0, _no_partial()
        return {
            "loss": total_loss / max(1, size),
            "images_per_s": images_seen / max(seconds, 1e-9),
            "seconds": seconds,
        }

    def _event(self, phase: str, loss: float, **extra: Any) -> dict[str, Any]:
        """A progress event: ``epoch`` is 1-based (the epoch running, or just finished for "epoch")."""
        epoch = self.epoch + 1 if phase == "step" else self.epoch
        step = self.step if phase == "step" else self.steps
        return {"phase": phase, "epoch": epoch, "epochs": self.tcfg["epochs"], "step": step, "steps": self.steps,
                "loss": loss, **extra}  # fmt: skip

    def _evaluate(self, split: str) -> dict[str, Any]:
        batch = self.tcfg["eval_batch_size"] or self.tcfg["batch_size"]
        return evaluate(self.model, self.eval_data[split], batch_size=batch, workers=self.tcfg["workers"])

    def fit(
        self,
        max_epochs: int | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        fence: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Train the remaining epochs, then write ``summary.json``; returns the summary.

        Args:
            max_epochs: Stop after this many epochs in this call (``last.pt`` is then ready for
                ``--resume``; no summary is written). Used to cut long jobs into pieces. An epoch
                resumed mid-way counts as one.
            should_stop: Asked after every optimisation step (e.g. a job's revoke flag; keep it
                cheap). When it returns True, ``last.pt`` gets the mid-epoch state (resume continues
                exactly), no ``metrics.jsonl`` line is written for the partial epoch, and ``fit`` returns.
            on_progress: Called after every step with ``{"phase": "step", "epoch": E, "epochs": N,
                "step": S, "steps": B, "loss": L}`` (``E`` the running epoch, 1-based; ``S`` of ``B``
                batches done in it; ``L`` its running mean loss) and after every epoch with
                ``phase="epoch"``, ``step=B``, the epoch's mean loss and ``"metric"`` (the validation
                headline metric, or None without ``data.val``). Called on the training thread.
            fence: Called just before the files of a finished epoch are written; it raises to
                abandon the run without writing them (a queued job whose task now runs elsewhere).

        Returns:
            The summary; ``{"finished": False, "epoch": N}`` when stopped by ``max_epochs``;
            ``{"finished": False, "epoch": N, "step": S, "stopped": True}`` when stopped by
            ``should_stop`` (``N`` epochs completed, ``S`` batches done in the next).
        """
        task, metrics_path = self.cfg["task"], self.out / "metrics.jsonl"
        key = "accuracy" if task == "classify" else "map"
        stop_at = self.tcfg["epochs"] if max_epochs is None else min(self.tcfg["epochs"], self.epoch + max_epochs)
        while self.epoch < stop_at:
            result = self.train_epoch(should_stop, on_progress)
            if result is None:
                print(f"stopped in epoch {self.epoch + 1} after batch {self.step}/{self.steps}; "
                      f"{self.out / 'last.pt'} is ready for --resume", flush=True)  # fmt: skip
                return {"finished": False, "epoch": self.epoch, "step": self.step, "stopped": True}
            record = {"epoch": self.epoch + 1, **result, "lr": self.optimizer.param_groups[0]["lr"]}
            self.epoch += 1
            self.seconds += record["seconds"]
            improved, metric = True, None
            if "val" in self.eval_data:
                val = self._evaluate("val")
                record["val"] = {k: v for k, v in val.items() if isinstance(v, (int, float))}
                metric = headline(val, task)
                improved = metric > self.best
                if improved:
                    self.best, self.best_epoch = metric, self.epoch
            self.stale = 0 if improved else self.stale + 1
            if fence is not None:
                fence()
            save_checkpoint(self.out / "last.pt", self.model, train_state=self._train_state())
            if improved:
                save_checkpoint(self.out / "best.pt", self.model)
            append_jsonl(metrics_path, record)
            shown = f" val {key} {record['val'][key]:.4f}" if "val" in record else ""
            print(f"epoch {self.epoch}/{self.tcfg['epochs']}: loss {record['loss']:.4f}{shown} "
                  f"({record['images_per_s']:.1f} img/s)", flush=True)  # fmt: skip
            if on_progress is not None:
                on_progress(self._event("epoch", record["loss"], metric=metric))
            if self.tcfg["patience"] is not None and self.stale >= self.tcfg["patience"]:
                print(f"early stop: no improvement in {self.stale} epochs", flush=True)
                break
        else:
            if self.epoch < self.tcfg["epochs"]:
                return {"finished": False, "epoch": self.epoch}
        return self._summarise(read_jsonl(metrics_path), key)

    def _summarise(self, records: list[dict[str, Any]], key: str) -> dict[str, Any]:
        write_csv(self.out / "metrics.csv", records)
        plot_curves(self.out / "curves.png", records, key)
        best = read_checkpoint(self.out / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["state_dict"])
        split = "test" if "test" in self.eval_data else "val" if "val" in self.eval_data else None
        metrics = self._evaluate(split) if split else {}
        train_rates = [r["images_per_s"] for r in records]
        summary = {
            "task": self.cfg["task"],
            "epochs": self.epoch,
            "seconds": round(self.seconds, 2),
            "metrics": metrics,
            "split": split,
            "best_epoch": self.best_epoch,
            "train_images_per_s": round(float(np.median(train_rates)), 2) if train_rates else None,
            "device": str(self.device),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def train(
    config: dict[str, Any] | str | Path,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
) -> dict[str, Any]:
    """Train a model from a config into ``out``; returns the ``summary.json`` dict.

    Args:
        config: Config dict or YAML path (needs ``data.train``; ``data.val`` selects ``best.pt``).
        out: Output folder (created).
        overrides: ``key.path=value`` strings applied before validation.
        resume: Continue the run in ``out`` from its ``last.pt``.
    """
    return Trainer(load_config(config, overrides), out, resume=resume).fit()
