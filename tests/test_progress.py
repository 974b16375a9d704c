"""RunProgress: one bar for a run on a terminal, periodic log lines elsewhere, with loss and validation Dice."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine, Events

from pipelines.progress import LOGGER, RunProgress


@pytest.fixture
def logged():
    """The progress logger's messages (it prints to stdout and does not propagate)."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger(LOGGER).addHandler(handler)
    yield records
    logging.getLogger(LOGGER).removeHandler(handler)


def _engines(epochs_seen: list[int]) -> tuple[Engine, Engine]:
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(float(batch))})
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.COMPLETED)
    def _metric(engine):
        engine.state.metrics["val_mean_dice"] = 0.5 + 0.1 * len(epochs_seen)

    @trainer.on(Events.EPOCH_COMPLETED(every=2))
    def _validate(engine):
        epochs_seen.append(engine.state.epoch)
        evaluator.run([0])

    return trainer, evaluator


def test_one_bar_over_the_epochs_with_loss_and_the_latest_dice(capfd):
    trainer, evaluator = _engines([])
    RunProgress("train", evaluator=evaluator, terminal=True).attach(trainer)
    trainer.run([1.0, 3.0, 2.0], max_epochs=6)
    err = capfd.readouterr().err
    assert err.count("train[") and "6/6" in err and "3/3" not in err  # over epochs, never over an epoch's steps
    assert "loss=" in err and "val_mean_dice=0.8" in err


def test_log_lines_every_few_epochs_and_at_the_end_without_a_terminal(logged):
    trainer, evaluator = _engines([])
    RunProgress("train", evaluator=evaluator, log_every=4, terminal=False).attach(trainer)
    trainer.run([1.0, 3.0], max_epochs=6)
    lines = logged
    epochs = [line.split("Epoch[")[1].split("]")[0] for line in lines if "Metrics -- loss" in line]
    assert epochs == ["4", "6"]
    assert any("val_mean_dice: 0.8" in line for line in lines)


def test_inference_shows_volumes_done(logged):
    engine = Engine(lambda engine, batch: None)
    RunProgress("infer", over="iterations", log_every=2, terminal=False).attach(engine)
    engine.run(range(5))
    assert logged == ["infer: 2/5", "infer: 4/5", "infer: 5/5"]


def test_a_wrong_unit_is_refused():
    with pytest.raises(ValueError, match="over: expected 'epochs' or 'iterations', got 'steps'"):
        RunProgress("x", over="steps")
