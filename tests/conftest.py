"""Fixtures shared by the command-line tests: a tiny phantom dataset and a 2-epoch training run on it, made once
per test session (tests copy them before changing anything)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pconv3d.data import make_dataset
from pipelines.cli import main
from tests.cli_helpers import TINY


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    make_dataset("phantom", out, n_train=3, n_test=2, size=24, seed=1)
    return out


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    assert main(["train", "--data", str(dataset), "--output", str(out), "--epochs", "2", *TINY]) == 0
    return out


@pytest.fixture(scope="session")
def trained_partial(dataset, tmp_path_factory) -> Path:
    """A PartialUNet given the mask (the default before the study chose GatedUNet)."""
    out = tmp_path_factory.mktemp("train_partial")
    assert main(["train", "--data", str(dataset), "--output", str(out), "--epochs", "2", *TINY,
                 "--recipe", "partial"]) == 0
    return out


@pytest.fixture(scope="session")
def trained_plain(dataset, tmp_path_factory) -> Path:
    """A MONAI UNet on interpolated input trained on complete volumes (configs/unet_interpolated.yaml)."""
    out = tmp_path_factory.mktemp("train_plain")
    assert main(["train", "--config", "train.yaml", "unet_interpolated.yaml", "--data", str(dataset), "--output",
                 str(out), "--epochs", "1", *TINY]) == 0
    return out
