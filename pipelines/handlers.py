"""Ignite handlers for a training run folder: MONAI's checkpoint and metric handlers, with what they lack here.

* :class:`RunCheckpointSaver` is MONAI's ``CheckpointSaver`` writing ``last.pt`` after every epoch and
  ``best.pt`` on a better validation metric under fixed names, atomically: MONAI's saver deletes the old
  file before writing the new one, so a full disk or a kill in between loses both. Both files also record
  the network's config (so ``pconv3d infer`` can rebuild it) and the best metric so far (so ``--resume``
  keeps the best of the run). The final weights become ``best.pt`` if no validation ever ran.
* :class:`RunCheckpointLoader` is MONAI's ``CheckpointLoader`` for ``--resume``: it restores the trainer itself
  (a config cannot name the trainer inside the trainer's own handlers) and stretches the learning-rate
  schedule when the run was resumed with more epochs.
* :class:`MetricsLog` is MONAI's ``MetricLogger`` that also writes the per-epoch history to ``metrics.csv``
  and ``metrics.json`` after every epoch: MONAI keeps that history in memory only, and its ``MetricsSaver``
  writes the last evaluation alone. It records the trainer's loss and the evaluator's metrics, not the
  trainer's own metrics (the progress bar's running average of the loss is one). Its state travels in the
  checkpoints, so a resumed run continues it.

Checkpoints are plain dicts loadable with ``torch.load(weights_only=True)``. Every file is written to a
temporary file in the same folder and renamed over the target, so a run killed at any moment leaves either
the previous or the new file, never a partial one. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.bundle import ConfigParser
from monai.handlers import CheckpointLoader, CheckpointSaver, MetricLogger, from_engine
from monai.handlers.metric_logger import MetricLoggerKeys

from pconv3d.io.sitk import atomic_write
from pipelines import records

LAST, BEST = "last.pt", "best.pt"
METRICS_JSON, METRICS_CSV = "metrics.json", "metrics.csv"
# everything a training run writes into its folder: one run's files, never mixed with another's
RUN_FILES = (LAST, BEST, METRICS_JSON, METRICS_CSV, "tensorboard")
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
    for name in RUN_FILES:
        for stale in folder.glob(f".{name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


class _AtomicFile(BaseSaveHandler):
    """Ignite save handler for one fixed file: replaced atomically by each save, never removed before it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if is_main_process():
            atomic_save(checkpoint, self.path)

    def remove(self, filename: str) -> None:
        pass  # the next save replaces the file; removing it first would lose it if that save fails


class _Record:
    """A plain dict saved under its own key of a checkpoint (ignite saves objects with a ``state_dict``)."""

    def __init__(self, value: Mapping[str, Any]) -> None:
        self.value = dict(value)

    def state_dict(self) -> dict[str, Any]:
        return self.value

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value = dict(state)


class RunCheckpointSaver(CheckpointSaver):
    """``last.pt`` after every epoch and ``best.pt`` on a better validation metric (see the module doc).

    Args:
        save_dir: the run folder.
        save_dict: objects to save, as for MONAI's ``CheckpointSaver`` (``network``, ``optimizer``,
            ``lr_scheduler``, ...); a DDP-wrapped network is saved unwrapped. The trainer and this saver's
            best-metric record are added when it is attached.
        network_def: the network's config (a ``_target_`` dict of plain values, or that dict as JSON), stored
            under ``network_def``; ``None`` leaves the architecture to the inference config.
        input_recipe: what the network is given (:meth:`pconv3d.transforms.InputRecipe.as_dict`), stored under
            ``input_recipe`` so that inference gives it the same.
        evaluator: the engine whose ``key_metric_name`` decides ``best.pt``.
        key_metric_name: key of ``evaluator.state.metrics``.

    Example::

        >>> saver = RunCheckpointSaver("runs/a", {"network": net, "optimizer": opt}, evaluator=evaluator)  # doctest: +SKIP
        >>> saver.attach(trainer)  # doctest: +SKIP
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict[str, Any],
        network_def: Mapping[str, Any] | str | None = None,
        input_recipe: Mapping[str, Any] | None = None,
        evaluator: Engine | None = None,
        key_metric_name: str = "val_mean_dice",
    ) -> None:
        save_dict = {k: _unwrap(v) if isinstance(v, torch.nn.Module) else v for k, v in save_dict.items()}
        if network_def is not None:
            save_dict["network_def"] = _Record(json.loads(network_def) if isinstance(network_def, str) else network_def)
        if input_recipe is not None:
            save_dict["input_recipe"] = _Record(input_recipe)
        super().__init__(save_dir, save_dict, save_key_metric=evaluator is not None, key_metric_name=key_metric_name,
                         key_metric_filename=BEST, save_interval=1, n_saved=1, epoch_level=True)
        self._interval_checkpoint.save_handler = _AtomicFile(Path(save_dir) / LAST)
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.save_handler = _AtomicFile(Path(save_dir) / BEST)
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        """The best-metric record (MONAI restores it with ``load_state_dict``), saved in ``last.pt`` too."""
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}

    def attach(self, engine: Engine) -> None:
        self.save_dict["trainer"] = engine
        if self._key_metric_checkpoint is not None:
            self.save_dict["checkpointer"] = self
        if is_main_process():
            remove_stale_temporaries(Path(self.save_dir))
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.interval_completed)
        if self.evaluator is not None:  # best.pt when a validation run completes
            self.evaluator.add_event_handler(Events.COMPLETED, self.metrics_completed)
        engine.add_event_handler(Events.COMPLETED, self._final_weights_if_never_validated)

    def _final_weights_if_never_validated(self, engine: Engine) -> None:
        best = Path(self.save_dir) / BEST
        if is_main_process() and not best.exists():
            atomic_save({k: v.state_dict() for k, v in self.save_dict.items()}, best)


class RunCheckpointLoader(CheckpointLoader):
    """Restores a run from its ``last.pt`` when training starts (``--resume``); see the module doc.

    Args:
        load_path: the run's ``last.pt``.
        load_dict: objects to restore, as for MONAI's ``CheckpointLoader``; the trainer is added when attached.
    """

    def __init__(self, load_path: str, load_dict: dict[str, Any]) -> None:
        super().__init__(load_path, {k: _unwrap(v) if isinstance(v, torch.nn.Module) else v for k, v in load_dict.items()},
                         map_location="cpu")

    def attach(self, engine: Engine) -> None:
        self.load_dict["trainer"] = engine
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        scheduler = self.load_dict.get("lr_scheduler")
        planned = scheduler.state_dict() if scheduler is not None else {}
        super().__call__(engine)
        note = stretch_schedule(scheduler, planned) if scheduler is not None else ""
        print(f"resumed from {self.load_path} at epoch {engine.state.epoch} of {engine.state.max_epochs}{note}", flush=True)


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


class MetricsLog(MetricLogger):
    """MONAI's ``MetricLogger`` that writes one row per epoch (mean loss, learning rate, validation metrics) to
    ``metrics.csv`` and ``metrics.json`` after every epoch; put it in the checkpoints' ``save_dict`` and
    ``--resume`` continues its history.

    Args:
        save_dir: the run folder.
        optimizer: read for the learning rate.
        evaluator: its metrics are logged at the epochs it ran.
    """

    def __init__(self, save_dir: str, optimizer: torch.optim.Optimizer, evaluator: Engine | None = None) -> None:
        loss = from_engine(["loss"], first=True)
        super().__init__(loss_transform=lambda output: float(loss(output)), metric_transform=float, evaluator=evaluator)
        self.save_dir = Path(save_dir)
        self.optimizer = optimizer
        self.epoch_length = 1
        self.lrs: dict[int, float] = {}

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        # after the validation handler, which runs the evaluator on the same event
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def __call__(self, engine: Engine) -> None:
        """Record the loss of the trainer's iteration; unlike MONAI's, not the trainer's ``state.metrics``: the
        progress display keeps a running average of the loss there, which would stand in for the epoch's mean.

        Args:
            engine: the trainer.
        """
        with self.lock:
            self.iteration = engine.state.iteration
            self.loss.append((self.iteration, self.loss_transform(engine.state.output)))

    def state_dict(self) -> dict[str, Any]:
        # plain keys and containers (MONAI's are an Enum and a defaultdict): checkpoints load with weights_only
        return {"loss": list(self.loss), "metrics": {k: list(v) for k, v in self.metrics.items()},
                "lr": dict(self.lrs), "epoch_length": self.epoch_length}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # "loss" among the metrics: a run from before __call__ left out the trainer's metrics logged the progress
        # display's running average there, which would stand in for the epochs' mean loss
        metrics = {k: v for k, v in state["metrics"].items() if k != "loss"}
        super().load_state_dict({MetricLoggerKeys.LOSS: list(state["loss"]), MetricLoggerKeys.METRICS: metrics})
        self.lrs, self.epoch_length = dict(state["lr"]), state["epoch_length"]

    def rows(self) -> list[dict[str, Any]]:
        """The history, one dict per epoch."""
        def epoch_of(iteration: int) -> int:  # the epoch whose last iteration ends at or after ``iteration``
            return -(-iteration // self.epoch_length)

        rows = {e: {"epoch": e, "lr": lr} for e, lr in sorted(self.lrs.items())}
        for epoch, row in rows.items():
            losses = [float(v) for it, v in self.loss if epoch_of(it) == epoch]
            row["loss"] = sum(losses) / max(len(losses), 1)
        for name, values in self.metrics.items():
            for it, v in values:
                if epoch_of(it) in rows:
                    rows[epoch_of(it)][name] = float(v)
        return list(rows.values())

    def _write(self, engine: Engine) -> None:
        self.epoch_length = engine.state.epoch_length
        self.lrs[engine.state.epoch] = self.optimizer.param_groups[0]["lr"]
        if not is_main_process():
            return
        rows = self.rows()
        self.save_dir.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(self.save_dir / METRICS_JSON, json.dumps(rows, indent=1))
        fields = sorted({k for r in rows for k in r}, key=lambda k: (k != "epoch", k))
        text = io.StringIO()
        writer = csv.DictWriter(text, fields)
        writer.writeheader()
        writer.writerows(rows)
        _write_text_atomic(self.save_dir / METRICS_CSV, text.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: a pconv3d run's (``best.pt``, ``last.pt``), or a plain
    ``state_dict`` (returned as ``{"network": state_dict}``); a clear ``ValueError`` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean "not a checkpoint we can read"
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {(str(e).splitlines() or ['empty or cut short'])[0][:200]})") from None
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return {"network": ckpt}  # a plain state_dict, as the MONAI model zoo and a bundle's models/model.pt ship
    if not isinstance(ckpt, dict) or "network" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint of a network (expected a state_dict, or a dict with the "
                         "network's weights under 'network')")
    return ckpt


def check_architecture(network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                       may_miss: Sequence[str] = ()) -> None:
    """Raise a ``ValueError`` naming the keys or shapes that differ unless ``state`` (from ``path``) fits
    ``network`` exactly, but for missing keys ending in one of ``may_miss``."""
    own = network.state_dict()
    missing = {k for k in own.keys() - state.keys() if not k.endswith(tuple(may_miss))}
    unexpected = state.keys() - own.keys()
    shapes = [] if missing or unexpected else [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and own[k].shape != state[k].shape]
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
    return _load_weights(network, load_checkpoint(path), path)


def _load_weights(network: torch.nn.Module, checkpoint: dict, path: str | os.PathLike) -> torch.nn.Module:
    state = checkpoint["network"]
    check_architecture(network, state, path)
    network.load_state_dict(state)
    return network.eval()


def init_network(network: torch.nn.Module, path: str | os.PathLike, mask_channel: bool = False) -> torch.nn.Module:
    """``network`` with the weights of ``path`` to start training from (``--init-from``): a plain
    ``state_dict`` (a MONAI model-zoo ``models/model.pt``, a MONAI ``UNet``/``DynUNet``/``BasicUNet``'s) or a
    pconv3d checkpoint. The partial networks have their MONAI twin's keys, so its weights load strictly; only
    parameters a network adds to its twin (``added_parameters``, e.g. ``GatedUNet``'s gates) may be absent
    and keep their initial values. With ``mask_channel`` (the input recipe gives the mask as the last input
    channel, ``mask_as_channel``), a checkpoint of a network with one input channel fewer loads too: the mask
    channel's weights start at zero, so the network starts out computing what the checkpoint's network
    computed. A clear error names the keys or shapes that do not match."""
    state = load_checkpoint(path)["network"]
    if mask_channel:
        state = _widened_inputs(network, state)
    added = tuple(getattr(network, "added_parameters", ()))
    check_architecture(network, state, path, may_miss=added)
    network.load_state_dict(state, strict=not added)
    return network


def _widened_inputs(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each weight that reads ``network``'s input (second dimension ``network.in_channels``) and
    reads one channel fewer in ``state`` (the mask channel), its shape otherwise the same, padded with zeros for
    that last channel. Any other difference is left for :func:`check_architecture` to name."""
    width = getattr(network, "in_channels", None)
    own = network.state_dict()
    state = dict(state)
    for k, v in state.items():
        w = own.get(k)
        if (w is not None and w.dim() > 2 and v.dim() == w.dim() and w.shape[1] == width and v.shape[1] == width - 1
                and w.shape[0] == v.shape[0] and w.shape[2:] == v.shape[2:]):
            state[k] = torch.cat([v, v.new_zeros(v.shape[0], 1, *v.shape[2:])], dim=1)
    return state


def network_from_checkpoint(path: str | os.PathLike) -> torch.nn.Module:
    """The network a checkpoint records (its ``network_def``, checked by :func:`pipelines.records.network_def`),
    with the checkpoint's weights, in eval mode."""
    checkpoint = load_checkpoint(path)  # read once: checkpoints can be large
    config = records.network_def(checkpoint, path)
    if config is None:
        raise ValueError(f"{path} records no network_def; build the network from a config and use load_network")
    return _load_weights(ConfigParser({"network_def": config}).get_parsed_content("network_def"), checkpoint, path)


__all__ = ["RunCheckpointSaver", "RunCheckpointLoader", "MetricsLog", "atomic_save", "load_checkpoint", "check_architecture", "init_network", "load_network",
           "network_from_checkpoint", "stretch_schedule", "is_main_process", "LAST", "BEST", "RUN_FILES"]
