"""Argument types of the command line: each checks its value when the command line is read, before any work,
and says what it expected and what it got."""

from __future__ import annotations

import argparse

import torch


def positive_int(text: str) -> int:
    """An integer >= 1 (epochs, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A fraction in [0, 1) (of slices removed: all of them would leave nothing to segment)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def distance(text: str) -> float:
    """A distance >= 0 (voxels)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a distance >= 0 (voxels), got {text!r}")
    return value


def device(text: str) -> torch.device:
    """A torch device that exists on this machine: ``cpu``, ``cuda``, ``cuda:1``, ``mps``.

    Parsed by ``torch.device`` itself and handed on as that object, never pasted into a config expression.
    """
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but this machine has no CUDA GPU (use cpu)")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but this machine has {count} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but MPS is not available here (use cpu)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: device type {dev.type!r} is not supported (cpu, cuda or mps)")
    return dev
