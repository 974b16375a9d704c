"""Calling conventions shared by the partial networks."""

from typing import Optional

from torch import Tensor

__all__ = ["resolve_mask"]


def resolve_mask(mask: Optional[Tensor], condition: Optional[Tensor]) -> Optional[Tensor]:
    """The mask a partial network runs on, from whichever way it came in.

    Args:
        mask: ``net(x, mask)``.
        condition: ``net(x, condition=mask)``, the keyword MONAI's sliding-window inference windows
            alongside the image (shaped like ``x``, so one mask channel per image channel, or 1).

    Returns ``None`` when no mask was given: every voxel valid, zero padding missing.

    Raises:
        ValueError: if the mask came in both ways.
    """
    if mask is not None and condition is not None:
        raise ValueError("pass the mask as `mask` or as `condition`, not both")
    return condition if condition is not None else mask
