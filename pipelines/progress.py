"""Progress a user can read: one bar for a whole run on a terminal, periodic plain log lines elsewhere.

ignite's ``ProgressBar`` attached with its defaults starts a new bar every epoch (a 250-epoch training on the
default data prints 250 three-step bars and says nothing about the loss); attached over epochs it is one
bar for the run. :class:`RunProgress` attaches it that way, with a running average of the loss and the latest
validation metric, and when the output is not a terminal (a log file, CI) uses MONAI's ``StatsHandler`` for a
plain line every few epochs instead of bar redraws.
"""

from __future__ import annotations

import sys
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from ignite.metrics import RunningAverage
from monai.apps import get_logger
from monai.handlers import StatsHandler

__all__ = ["RunProgress", "LOGGER"]

LOGGER = "pconv3d.progress"  # the log lines' logger: MONAI's get_logger makes it print INFO to stdout


class RunProgress:
    """One display for a whole training (over epochs) or inference (over volumes) run.

    Args:
        desc: the bar's label (``"train"``, ``"infer"``).
        over: ``"epochs"`` (training: loss and ``metric_name`` shown) or ``"iterations"`` (one step per volume).
        evaluator: the validation engine whose ``metric_name`` is shown after each validation.
        metric_name: key of ``evaluator.state.metrics``.
        log_every: with no terminal, a log line every this many epochs or iterations (and at the last).
        terminal: force the bar (``True``) or the log lines (``False``); ``None`` asks whether stderr is a
            terminal.

    Example::

        >>> RunProgress("train", evaluator=evaluator, log_every=10).attach(trainer)  # doctest: +SKIP
    """

    def __init__(self, desc: str, over: str = "epochs", evaluator: Engine | None = None,
                 metric_name: str = "val_mean_dice", log_every: int = 10, terminal: bool | None = None) -> None:
        if over not in ("epochs", "iterations"):
            raise ValueError(f"over: expected 'epochs' or 'iterations', got {over!r}")
        self.desc, self.over, self.evaluator, self.metric_name = desc, over, evaluator, metric_name
        self.log_every = max(1, int(log_every))
        self.terminal = sys.stderr.isatty() if terminal is None else terminal

    def attach(self, engine: Engine) -> None:
        shown: list[str] = []
        metrics: list[str] = []
        if self.over == "epochs":
            RunningAverage(output_transform=_loss).attach(engine, "loss")
            metrics = ["loss"]
            if self.evaluator is not None:
                setattr(engine.state, self.metric_name, float("nan"))
                self.evaluator.add_event_handler(Events.COMPLETED, self._copy_metric, engine)
                shown = [self.metric_name]
        if self.terminal:
            per, closing = ((Events.EPOCH_COMPLETED, Events.COMPLETED) if self.over == "epochs"
                            else (Events.ITERATION_COMPLETED, Events.EPOCH_COMPLETED))
            ProgressBar(persist=True, desc=self.desc).attach(engine, metrics or None, event_name=per,
                                                              closing_event_name=closing, state_attributes=shown or None)
            return
        if self.over == "epochs":
            _EpochLog(iteration_log=False, epoch_log=self._due, state_attributes=shown or None,
                      name=LOGGER, tag_name="loss").attach(engine)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._log_iteration)

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.log_every == 0 or epoch == engine.state.max_epochs

    def _copy_metric(self, evaluator: Engine, engine: Engine) -> None:
        setattr(engine.state, self.metric_name, float(evaluator.state.metrics.get(self.metric_name, float("nan"))))

    def _log_iteration(self, engine: Engine) -> None:
        done, total = engine.state.iteration, engine.state.epoch_length
        if done % self.log_every == 0 or done == total:
            get_logger(LOGGER).info(f"{self.desc}: {done}/{total}")


class _EpochLog(StatsHandler):
    """MONAI's ``StatsHandler`` without its log of a failure's traceback: a failure (Ctrl-C included) is reported
    once, as one line, by :mod:`pipelines.errors`, and a bug keeps the traceback Python prints."""

    def exception_raised(self, _engine: Engine, e: Exception) -> None:
        raise e


def _loss(output: Any) -> float:
    """The loss of a trainer's output: a dict, or one dict per item of the batch (MONAI decollates)."""
    first = output[0] if isinstance(output, (list, tuple)) else output
    return float(first["loss"])
