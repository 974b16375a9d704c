"""Mask helpers shared by the block and network tests."""

from __future__ import annotations

import torch
import torch.nn as nn

MIXED = "mixed"  # NaN, inf, -inf, 1e6 and noise side by side in one input: every kind in one forward
FILLS = [float("nan"), float("inf"), 1e6, "random", MIXED]


def holes(shape, frac=0.35, seed=0, block=True) -> torch.Tensor:
    """Binary float mask: random holes plus, optionally, one large missing block (a real gap)."""
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(shape, generator=g) > frac).float()
    if block:
        m[(slice(None), slice(None)) + tuple(slice(s // 4, s // 2 + 1) for s in shape[2:])] = 0
    return m


def fill_holes(x: torch.Tensor, mask: torch.Tensor, fill, seed: int = 1) -> torch.Tensor:
    """``x`` with every hole (mask == 0, broadcast over channels) replaced by ``fill`` ("random": noise)."""
    if fill in ("random", MIXED):
        g = torch.Generator().manual_seed(seed)
        values = torch.randn(x.shape, generator=g) * 100
        if fill == MIXED:
            kinds = torch.arange(x.numel()).view(x.shape) % 5
            for k, v in enumerate((float("nan"), float("inf"), float("-inf"), 1e6)):
                values[kinds == k] = v
    else:
        values = torch.full_like(x, fill)
    return torch.where(mask.expand_as(x) != 0, x, values)


def run(module: nn.Module, *args, seed: int = 0, **kwargs):
    """Call ``module`` with the RNG reset first, so dropout draws the same masks on every call."""
    torch.manual_seed(seed)
    return module(*args, **kwargs)


def stray_tensors(model: nn.Module) -> list[str]:
    """Attributes holding tensors that are neither parameters nor buffers (state kept between calls)."""
    found = []
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if attr not in ("_parameters", "_buffers") and any(isinstance(v, torch.Tensor) for v in values):
                found.append(f"{name}.{attr}")
    return found
