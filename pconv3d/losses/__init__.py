"""Losses for partially annotated segmentation."""

from pconv3d.losses.masked_dice_ce import MaskedDiceCELoss

__all__ = ["MaskedDiceCELoss"]
