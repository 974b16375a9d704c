"""Dice + cross-entropy that ignore voxels without annotation, the way nnU-Net handles an ignore label.

MONAI's ``DiceCELoss`` has no ``ignore_index``: here cross-entropy uses ``ignore_index`` and Dice a loss
mask (MONAI's ``MaskedDiceLoss``), and cross-entropy is skipped when a batch has no annotated voxel
(its mean over zero voxels would be NaN).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss
from torch import Tensor

_CE_IGNORE = -100  # torch's default ignore value, used for voxels excluded by a loss mask


class MaskedDiceCELoss(nn.Module):
    """``lambda_dice * Dice + lambda_ce * CE`` over annotated voxels only.

    Args:
        ignore_index: label value that marks unannotated voxels (``None``: every label is real).
        include_background: whether Dice includes channel 0 (as in MONAI's ``DiceLoss``).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        smooth_nr: Dice numerator smoothing.
        smooth_dr: Dice denominator smoothing.
        batch: Dice over the whole batch instead of per sample.

    ``forward(input, target, loss_mask=None)``: ``input`` logits ``(N, C, *spatial)``, ``target`` labels
    ``(N, 1, *spatial)`` or ``(N, *spatial)``, ``loss_mask`` optional ``(N, 1, *spatial)``, nonzero = counted.

    Example::

        >>> loss = MaskedDiceCELoss(ignore_index=255)
        >>> logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8, 8)); labels[:, :, :4] = 255
        >>> loss(logits, labels).backward()
    """

    def __init__(
        self,
        ignore_index: int | None = None,
        include_background: bool = True,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.dice = MaskedDiceLoss(include_background=include_background, softmax=True, smooth_nr=smooth_nr,
                                   smooth_dr=smooth_dr, batch=batch)

    def forward(self, input: Tensor, target: Tensor, loss_mask: Tensor | None = None) -> Tensor:
        if target.dim() == input.dim() - 1:
            target = target.unsqueeze(1)
        if target.shape[1] != 1 or target.shape[2:] != input.shape[2:]:
            raise ValueError(f"target must have shape ({input.shape[0]}, 1, *{list(input.shape[2:])}) "
                             f"for logits {list(input.shape)}; got {list(target.shape)}")
        target = target.long()
        annotated = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            annotated &= target != self.ignore_index
        if loss_mask is not None:
            annotated &= loss_mask.bool()
        labels = torch.where(annotated, target, 0)
        onehot = F.one_hot(labels[:, 0], input.shape[1]).movedim(-1, 1).to(input.dtype)
        loss = self.lambda_dice * self.dice(input, onehot, mask=annotated.to(input.dtype))
        if annotated.any():
            ce_target = torch.where(annotated, target, _CE_IGNORE)[:, 0]
            loss = loss + self.lambda_ce * F.cross_entropy(input, ce_target, ignore_index=_CE_IGNORE)
        return loss
