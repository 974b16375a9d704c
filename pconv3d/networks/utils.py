"""Calling conventions shared by the partial networks."""

from typing import Optional, Tuple

from torch import Tensor

__all__ = ["resolve_mask"]


def resolve_mask(
    x: Tensor, mask: Optional[Tensor], condition: Optional[Tensor], mask_channel: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """The ``(image, mask)`` pair a partial network runs on, from whichever way the mask came in.

    Args:
        x: the network input; with ``mask_channel`` its last channel is the mask.
        mask: ``net(x, mask)``.
        condition: ``net(x, condition=mask)``, the keyword MONAI's sliding-window inference windows
            alongside the image (shaped like ``x``, so one mask channel per image channel, or 1).
        mask_channel: the network was built with ``mask_channel=True``.

    Returns ``(x, None)`` when no mask was given: every voxel valid, zero padding missing.

    Raises:
        ValueError: if the mask came in more than one way.
    """
    if mask is not None and condition is not None:
        raise ValueError("pass the mask as `mask` or as `condition`, not both")
    if condition is not None:
        mask = condition
    if mask_channel:
        if mask is not None:
            raise ValueError(
                "this network reads its mask from the last input channel (mask_channel=True); pass no other mask"
            )
        return x[:, :-1], x[:, -1:]
    return x, mask
