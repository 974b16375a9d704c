"""Losses for partially annotated segmentation, and consistency between holed and complete views."""

from pconv3d.losses.consistency import ConsistencyLoss
from pconv3d.losses.masked_dice_ce import MaskedDiceCELoss

__all__ = ["ConsistencyLoss", "MaskedDiceCELoss"]
