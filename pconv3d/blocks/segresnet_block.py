"""Partial counterparts of MONAI's SegResNet blocks (``monai.networks.blocks.segresnet_block``)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch.nn as nn
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import Tensor

from pconv3d.blocks.convolution import ZERO_PRESERVING_ACTS, PartialConvolution
from pconv3d.blocks.factories import masked_norm
from pconv3d.masks.apply import apply_mask, mark_clean
from pconv3d.masks.carrier import MaskLike, as_carrier, as_given, mask_union

__all__ = ["PartialResBlock", "PartialNormActConv", "partial_conv_layer"]


def partial_conv_layer(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                       bias: bool = False) -> PartialConvolution:
    """MONAI's SegResNet ``get_conv_layer`` (a bare convolution, no bias by default), partial."""
    return PartialConvolution(spatial_dims, in_channels, out_channels, strides=stride, kernel_size=kernel_size,
                              bias=bias, conv_only=True)


class PartialResBlock(nn.Module):
    """MONAI SegResNet ``ResBlock`` (norm, act, conv, norm, act, conv, plus the input) on ``(x, mask)`` pairs.

    Same arguments and submodule names (``norm1``, ``norm2``, ``act``, ``conv1``, ``conv2``) as
    ``monai.networks.blocks.segresnet_block.ResBlock``; norms are masked, convolutions partial, and the
    identity path clears the input's holes, so whatever they held never reaches the sum. The output mask is
    the union of the two paths' (the convolutions' mask, which covers the input's).

    Example::

        >>> block = PartialResBlock(3, 8, norm=("group", {"num_groups": 4}))
        >>> y, m = block(torch.randn(1, 8, 8, 8, 8), torch.rand(1, 1, 8, 8, 8) > 0.3)
    """

    def __init__(self, spatial_dims: int, in_channels: int, norm: tuple | str, kernel_size: int = 3,
                 act: tuple | str = ("RELU", {"inplace": True})) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise AssertionError("kernel_size should be an odd number.")
        self.norm1 = get_norm_layer(name=masked_norm(norm), spatial_dims=spatial_dims, channels=in_channels)
        self.norm2 = get_norm_layer(name=masked_norm(norm), spatial_dims=spatial_dims, channels=in_channels)
        self.act = get_act_layer(act)
        self.conv1 = partial_conv_layer(spatial_dims, in_channels, in_channels, kernel_size=kernel_size)
        self.conv2 = partial_conv_layer(spatial_dims, in_channels, in_channels, kernel_size=kernel_size)
        # the masked norm leaves holes at 0; an activation that maps 0 elsewhere needs them cleared again
        self.clear_holes = not isinstance(self.act, ZERO_PRESERVING_ACTS)

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        m = as_carrier(mask)
        identity = apply_mask(x, m)
        y = self.act(self.norm1(x, m))
        y, m1 = self.conv1(apply_mask(y, m) if self.clear_holes else y, m)
        y = self.act(self.norm2(y, m1))
        y, m2 = self.conv2(apply_mask(y, m1) if self.clear_holes else y, m1)
        merged = mask_union(m2, m)
        return mark_clean(y + identity, merged), as_given(merged, mask)


class PartialNormActConv(nn.Module):
    """SegResNet's final block (norm, act, 1x1 convolution with bias) on ``(x, mask)`` pairs, with MONAI's
    submodule names (``0``, ``1``, ``2``)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: tuple | str,
                 act: tuple | str) -> None:
        super().__init__()
        self.add_module("0", get_norm_layer(name=masked_norm(norm), spatial_dims=spatial_dims, channels=in_channels))
        self.add_module("1", get_act_layer(act))
        self.add_module("2", partial_conv_layer(spatial_dims, in_channels, out_channels, kernel_size=1, bias=True))
        self.clear_holes = not isinstance(getattr(self, "1"), ZERO_PRESERVING_ACTS)

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        m = as_carrier(mask)
        y = getattr(self, "1")(getattr(self, "0")(x, m))
        y, m_out = getattr(self, "2")(apply_mask(y, m) if self.clear_holes else y, m)
        return y, as_given(m_out, mask)
