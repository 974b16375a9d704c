"""Ignite handlers for the training workflow: atomic checkpoints, resume, and a per-epoch metrics log.

Checkpoints are plain dicts loadable with ``torch.load(weights_only=True)``:

* ``last.pt`` after every epoch: network, optimizer, scheduler and trainer state plus the best metric so far,
  so ``--resume`` loses no completed epoch;
* ``best.pt`` when the validation metric improves: network weights, the network's config (so
  ``pconv3d infer`` can rebuild it) and the metric; the final weights if no validation ever ran.

Every file is written to a temporary file in the same folder and renamed over the target, so a run killed
at any moment leaves either the previous or the new file, never a partial one. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.handlers import from_engine

from pconv3d.io.sitk import atomic_write

LAST, BEST = "last.pt", "best.pt"
# everything a training run writes into its folder: one run's files, never mixed with another's
RUN_FILES = (LAST, BEST, "metrics.json", "metrics.csv", "tensorboard")
# learning-rate scheduler attributes that hold the planned length of training
_SCHEDULE_LENGTHS = ("T_max", "total_iters")


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`pconv3d.io.sitk.atomic_write`: complete file or none, replacing ``path``.

    Serialized in memory first: torch's zip writer reports a full disk as a bare ``RuntimeError``, a plain
    file write as the ``OSError`` it is."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()), overwrite=True)


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text), overwrite=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary folders a killed run left behind (``atomic_write`` names them ``.<file>.<random>.tmp``)."""
    for name in (LAST, BEST, "metrics.json", "metrics.csv"):
        for stale in folder.glob(f".{name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


class CheckpointHandler:
    """Writes ``last.pt`` every epoch and ``best.pt`` on a better validation metric; resumes from ``last.pt``.

    Args:
        save_dir: output folder.
        network: the trained network (DDP-wrapped or not).
        optimizer: its optimizer.
        network_def: the network's config (a ``_target_`` dict of plain values, or that dict as JSON), stored in
            the checkpoints so ``pconv3d infer`` can rebuild the network; ``None`` leaves that to the
            inference config.
        lr_scheduler: optional scheduler, saved and restored with the rest.
        evaluator: engine whose ``metric_name`` decides ``best.pt``.
        metric_name: key of ``evaluator.state.metrics``.
        resume: load ``save_dir/last.pt`` (if present) before training starts.
    """

    def __init__(
        self,
        save_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        network_def: Mapping[str, Any] | str | None = None,
        lr_scheduler: Any = None,
        evaluator: Engine | None = None,
        metric_name: str = "val_mean_dice",
        resume: bool = False,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.network = network
        self.optimizer = optimizer
        self.network_def = json.loads(network_def) if isinstance(network_def, str) else network_def
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        self.metric_name = metric_name
        self.resume = resume
        self.best = -math.inf
        self.trainer: Engine | None = None

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        trainer.add_event_handler(Events.STARTED, self._load)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._save_last)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._save_best)
        trainer.add_event_handler(Events.COMPLETED, self._save_final_if_never_validated)

    def _states(self) -> dict[str, Any]:
        states = {"network": _unwrap(self.network).state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.lr_scheduler is not None:
            states["lr_scheduler"] = self.lr_scheduler.state_dict()
        return states

    def _load(self, trainer: Engine) -> None:
        if is_main_process():
            remove_stale_temporaries(self.save_dir)
        path = self.save_dir / LAST
        if not self.resume or not path.exists():
            return
        ckpt = load_checkpoint(path)
        _unwrap(self.network).load_state_dict(ckpt["network"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        note = ""
        if self.lr_scheduler is not None and "lr_scheduler" in ckpt:
            planned = self.lr_scheduler.state_dict()
            self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            note = stretch_schedule(self.lr_scheduler, planned)
        self.best = ckpt.get("best_metric", -math.inf)
        max_epochs = trainer.state.max_epochs
        trainer.load_state_dict({**ckpt["trainer"], "max_epochs": max_epochs})
        trainer.state.max_epochs = max_epochs
        print(f"resumed from {path} at epoch {trainer.state.epoch} of {max_epochs}{note}", flush=True)

    def _save_last(self, trainer: Engine) -> None:
        if is_main_process():
            atomic_save({**self._states(), "trainer": trainer.state_dict(), "best_metric": self.best,
                         "network_def": self.network_def}, self.save_dir / LAST)

    def _write_best(self, metric: float | None) -> None:
        if is_main_process():
            epoch = self.trainer.state.epoch if self.trainer is not None else 0
            atomic_save({"network": _unwrap(self.network).state_dict(), "network_def": self.network_def,
                         "metric": {self.metric_name: metric}, "epoch": epoch}, self.save_dir / BEST)

    def _save_best(self, evaluator: Engine) -> None:
        metric = float(evaluator.state.metrics.get(self.metric_name, -math.inf))
        if metric > self.best:
            self.best = metric
            self._write_best(metric)

    def _save_final_if_never_validated(self, trainer: Engine) -> None:
        if self.best == -math.inf and not (self.save_dir / BEST).exists():
            self._write_best(None)


def stretch_schedule(scheduler: Any, planned: Mapping[str, Any]) -> str:
    """Give a resumed ``scheduler`` the length configured now (``planned``, its state before loading), where the
    saved one was planned for another number of epochs; returns a note for the user ("" when nothing changed).

    The learning rate continues as if the run had been planned this long from the start (the closed form at
    the current epoch): a cosine schedule that had reached 0 after the first run's epochs rises again to where
    the longer schedule is, instead of training the new epochs at a learning rate of 0.
    """
    changed = [(k, getattr(scheduler, k), planned[k]) for k in _SCHEDULE_LENGTHS
               if k in planned and getattr(scheduler, k, planned[k]) != planned[k]]
    if not changed:
        return ""
    if not hasattr(scheduler, "_get_closed_form_lr"):
        raise ValueError(f"cannot resume {type(scheduler).__name__} with another length ({changed[0][0]} "
                         f"{changed[0][1]} -> {changed[0][2]}): it has no closed form to continue from; "
                         "resume with the first run's number of epochs")
    for key, _, new in changed:
        setattr(scheduler, key, new)
    lrs = scheduler._get_closed_form_lr()
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    key, old, new = changed[0]
    return (f"; learning-rate schedule ({type(scheduler).__name__}) stretched from {old} to {new} epochs, "
            f"learning rate now {lrs[0]:.3g}")


class MetricsLog:
    """Appends one row per epoch (loss, learning rate, validation metrics) to ``metrics.csv`` and ``metrics.json``.

    Args:
        save_dir: output folder.
        optimizer: read for the learning rate.
        evaluator: its ``state.metrics`` are logged for the epochs it ran.
    """

    def __init__(self, save_dir: str, optimizer: torch.optim.Optimizer, evaluator: Engine | None = None) -> None:
        self.save_dir = Path(save_dir)
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.rows: list[dict[str, Any]] = []
        self._losses: list[float] = []
        self._metrics: dict[str, float] = {}

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._add_loss)
        # after the validation handler, which runs the evaluator on the same event
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._write)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._keep_metrics)

    def _earlier_rows(self, epoch: int) -> list[dict[str, Any]]:
        """Rows of the epochs before ``epoch`` from an earlier run of this training (after ``--resume``)."""
        path = self.save_dir / "metrics.json"
        return [r for r in json.loads(path.read_text()) if r["epoch"] < epoch] if path.exists() and epoch > 1 else []

    def _add_loss(self, trainer: Engine) -> None:
        self._losses.append(float(from_engine(["loss"], first=True)(trainer.state.output)))

    def _keep_metrics(self, evaluator: Engine) -> None:
        self._metrics = {k: float(v) for k, v in evaluator.state.metrics.items()}

    def _write(self, trainer: Engine) -> None:
        row = {"epoch": trainer.state.epoch, "loss": sum(self._losses) / max(len(self._losses), 1),
               "lr": self.optimizer.param_groups[0]["lr"], **self._metrics}
        self._losses, self._metrics = [], {}
        if not self.rows:
            self.rows = self._earlier_rows(trainer.state.epoch)
        self.rows.append(row)
        if not is_main_process():
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(self.save_dir / "metrics.json", json.dumps(self.rows, indent=1))
        fields = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "epoch", k))
        text = io.StringIO()
        writer = csv.DictWriter(text, fields)
        writer.writeheader()
        writer.writerows(self.rows)
        _write_text_atomic(self.save_dir / "metrics.csv", text.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a pconv3d checkpoint with ``weights_only=True``; a clear ``ValueError`` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean "not a checkpoint we can read"
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {(str(e).splitlines() or ['empty or cut short'])[0][:200]})") from None
    if not isinstance(ckpt, dict) or "network" not in ckpt:
        raise ValueError(f"{path} is not a pconv3d checkpoint (expected a dict with the network's weights under 'network')")
    return ckpt


def check_architecture(network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise a ``ValueError`` naming the keys or shapes that differ unless ``state`` (from ``path``) fits
    ``network`` exactly."""
    own = network.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    shapes = [] if missing or unexpected else [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        details = "; ".join(filter(None, [
            f"missing {sorted(missing)[:3]}" if missing else "",
            f"unexpected {sorted(unexpected)[:3]}" if unexpected else "",
            f"shapes differ ({', '.join(shapes[:3])})" if shapes else "",
        ]))
        raise ValueError(f"{path} holds weights of another architecture than {type(network).__name__} "
                         f"as configured: {details}")


def load_network(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load ``path``'s weights into ``network`` strictly; a clear error when the architectures differ."""
    state = load_checkpoint(path)["network"]
    check_architecture(network, state, path)
    network.load_state_dict(state)
    return network.eval()


def network_from_checkpoint(path: str | os.PathLike) -> torch.nn.Module:
    """The network a checkpoint records (its ``network_def``), with the checkpoint's weights, in eval mode."""
    network_def = load_checkpoint(path).get("network_def")
    if not network_def:
        raise ValueError(f"{path} records no network_def; build the network from a config and use load_network")
    return load_network(ConfigParser({"network_def": network_def}).get_parsed_content("network_def"), path)


__all__ = ["CheckpointHandler", "MetricsLog", "atomic_save", "load_checkpoint", "check_architecture", "load_network",
           "network_from_checkpoint", "stretch_schedule", "is_main_process", "LAST", "BEST", "RUN_FILES"]
