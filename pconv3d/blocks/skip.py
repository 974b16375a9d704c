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

from pconv3d.masks.apply import apply_mask, mark_clean
from pconv3d.masks.carrier import MaskLike, as_carrier, as_given, mask_intersection, mask_union, tensor_of

__all__ = ["PartialSequential", "PartialSkipConnection"]


class PartialSequential(nn.Sequential):
    """``nn.Sequential`` of partial blocks: ``forward(x, mask=None) -> (x, mask)`` threads the pair through.

    Example::

        >>> seq = PartialSequential(PartialConvolution(3, 1, 4), PartialConvolution(3, 4, 4))
        >>> y, m = seq(torch.randn(1, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 8))
    """

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        m = as_carrier(mask)
        for module in self:
            x, m = module(x, m)
        if tensor_of(m) is None:
            raise ValueError("PartialSequential needs at least one module")
        return x, as_given(m, mask)


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

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        m = as_carrier(mask)
        y, y_mask = self.submodule(x, m)
        x = apply_mask(x, m)  # the merged mask may mark x's holes valid: they must hold zeros
        if self.mode == "mul":
            return torch.mul(x, y), as_given(mask_intersection(y_mask, m), mask)
        merged = mask_union(y_mask, m)
        if self.mode == "cat":
            return mark_clean(torch.cat([x, y], dim=self.dim), merged), as_given(merged, mask)
        return mark_clean(torch.add(x, y), merged), as_given(merged, mask)
