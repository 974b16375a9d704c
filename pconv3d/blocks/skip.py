"""Containers and merges that carry ``(x, mask)`` pairs: sequences, skip connections, residual sums.

Every partial block takes and returns ``(x, mask)`` with the holes of ``x`` exactly 0. Where two branches
meet, the merged mask is single-channel:

* concatenation and sum: the **union** ``max(m_a, m_b)``. A voxel is valid if either branch has data
  there; the branch that is missing contributes exact zeros (its holes), which the next partial
  convolution reads as zero-valued features. In the U-Nets here the decoder mask covers the encoder
  mask (every partial layer only grows the valid region, and up-sampling inverts the down-sampling's
  window relation), so the union is the decoder's mask and no valid encoder voxel is dropped.
  An exact alternative, a multi-channel mask per concatenated channel, would renormalize skip and
  decoder features against each other and cost a full-channel mask per merge.
* product: the **intersection** ``min(m_a, m_b)``: a product needs both factors.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from pconv3d.masking import all_valid, apply_mask, mark_clean

__all__ = ["any_channel", "mask_union", "PartialSequential", "PartialSkipConnection"]


def any_channel(mask: Tensor) -> Tensor:
    """Single-channel version of a mask: a voxel is valid if any channel is (weights: the largest)."""
    return mask.amax(1, keepdim=True) if mask.shape[1] > 1 else mask


def mask_union(a: Tensor, b: Optional[Tensor]) -> Tensor:
    """Single-channel union of two masks (``None`` = all valid, so ``b=None`` gives ones like ``a``).

    Example::

        >>> mask_union(torch.tensor([[[0.0, 1.0, 0.0]]]), torch.tensor([[[1.0, 0.0, 0.0]]]))
        tensor([[[1., 1., 0.]]])
    """
    a = any_channel(a)
    if b is None:
        return torch.ones_like(a)
    b = any_channel(b).to(a.dtype)
    if not torch.jit.is_scripting():
        known = _known_union(a, b)
        if known is not None:
            return known
    return torch.maximum(a, b)


@torch.jit.unused
def _known_union(a: Tensor, b: Tensor) -> Optional[Tensor]:
    """An all-valid operand is the union itself: handing it on keeps its cached statistics and marks."""
    if all_valid(a):
        return a
    if all_valid(b):
        return b
    return None


class PartialSequential(nn.Sequential):
    """``nn.Sequential`` of partial blocks: ``forward(x, mask=None) -> (x, mask)`` threads the pair through.

    Example::

        >>> seq = PartialSequential(PartialConvolution(3, 1, 4), PartialConvolution(3, 4, 4))
        >>> y, m = seq(torch.randn(1, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 8))
    """

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        for module in self:
            x, mask = module(x, mask)
        if mask is None:
            raise ValueError("PartialSequential needs at least one module")
        return x, mask


class PartialSkipConnection(nn.Module):
    """MONAI ``SkipConnection`` on ``(x, mask)`` pairs: ``submodule`` runs on the pair, then the input and
    its result are merged (see the module doc for the merged mask).

    Args:
        submodule: a partial block, ``forward(x, mask) -> (x, mask)``.
        dim: the concatenation dim (``"cat"`` mode).
        mode: ``"cat"``, ``"add"`` (masks united) or ``"mul"`` (masks intersected).

    Example::

        >>> skip = PartialSkipConnection(PartialConvolution(3, 4, 4))
        >>> y, m = skip(torch.randn(1, 4, 8, 8, 8), torch.ones(1, 1, 8, 8, 8))   # y has 8 channels
    """

    def __init__(self, submodule: nn.Module, dim: int = 1, mode: str = "cat") -> None:
        super().__init__()
        if mode not in ("cat", "add", "mul"):
            raise ValueError(f"mode must be 'cat', 'add' or 'mul', got {mode!r}")
        self.submodule = submodule
        self.dim = dim
        self.mode = mode

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        y, y_mask = self.submodule(x, mask)
        x = apply_mask(x, mask)  # the merged mask may mark x's holes valid: they must hold zeros
        if self.mode == "mul":
            x_mask = torch.ones_like(y_mask) if mask is None else any_channel(mask).to(y_mask.dtype)
            return torch.mul(x, y), torch.minimum(any_channel(y_mask), x_mask)
        merged = mask_union(y_mask, mask)
        if self.mode == "cat":
            return mark_clean(torch.cat([x, y], dim=self.dim), merged), merged
        return mark_clean(torch.add(x, y), merged), merged
