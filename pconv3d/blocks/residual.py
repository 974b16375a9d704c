"""Partial counterpart of MONAI's ``ResidualUnit``, with a mask-aware residual path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Tuple

import numpy as np
import torch.nn as nn
from monai.networks.layers.convutils import same_padding
from monai.networks.layers.factories import Conv
from torch import Tensor

from pconv3d.blocks.convolution import PartialConvolution
from pconv3d.blocks.factories import PARTIAL_CONV
from pconv3d.blocks.skip import PartialSequential
from pconv3d.masks.apply import apply_mask, mark_clean
from pconv3d.masks.carrier import MaskLike, any_channel, as_carrier, as_given, first_channel, mask_union, tensor_of

__all__ = ["PartialIdentity", "PartialResidualUnit"]


class PartialIdentity(nn.Module):
    """Identity on ``(x, mask)`` pairs that clears the holes of ``x`` (they may hold anything) and returns
    the mask single-channel (:func:`~pconv3d.masks.carrier.any_channel`)."""

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, Optional[MaskLike]]:
        if mask is None:
            return x, mask
        if tensor_of(mask) is None:  # a carrier without a tensor: all valid
            return x, mask
        return apply_mask(x, mask), any_channel(mask)


class PartialResidualUnit(nn.Module):
    """MONAI ``ResidualUnit`` on ``(x, mask)`` pairs: ``subunits`` partial convolutions plus a residual.

    Same arguments, defaults and submodule names (``conv.unit0``, ..., ``residual``) as
    ``monai.networks.blocks.ResidualUnit``, so weights load strictly either way.

    The residual path is mask-aware too: where MONAI uses a strided or 1x1 convolution it is a partial
    convolution under the input mask, and the identity clears the holes, so hole contents never reach the
    sum. The output mask is the union of the two paths' masks (see :mod:`pconv3d.blocks.skip`); since the
    convolution path grows the valid region at least as much as the residual one, it is the convolution
    path's mask.

    ``forward(x, mask=None) -> (y, mask_out)``, masks as in :class:`PartialConvolution`.

    Example::

        >>> unit = PartialResidualUnit(3, 1, 8, strides=2, subunits=2)
        >>> y, m = unit(torch.randn(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16) > 0.3)
    """

    __constants__ = ["identity_residual"]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: Sequence[int] | int = 1,
        kernel_size: Sequence[int] | int = 3,
        subunits: int = 2,
        adn_ordering: str = "NDA",
        act: tuple | str | None = "PRELU",
        norm: tuple | str | None = "INSTANCE",
        dropout: tuple | str | float | None = None,
        dropout_dim: int | None = 1,
        dilation: Sequence[int] | int = 1,
        bias: bool = True,
        last_conv_only: bool = False,
        padding: Sequence[int] | int | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = PartialSequential()
        self.residual: nn.Module = PartialIdentity()
        if not padding:
            padding = same_padding(kernel_size, dilation)
        schannels = in_channels
        sstrides = strides
        subunits = max(1, subunits)
        for su in range(subunits):
            unit = PartialConvolution(
                spatial_dims,
                schannels,
                out_channels,
                strides=sstrides,
                kernel_size=kernel_size,
                adn_ordering=adn_ordering,
                act=act,
                norm=norm,
                dropout=dropout,
                dropout_dim=dropout_dim,
                dilation=dilation,
                bias=bias,
                conv_only=last_conv_only and su == subunits - 1,
                padding=padding,
            )
            self.conv.add_module(f"unit{su:d}", unit)
            schannels = out_channels
            sstrides = 1
        # as MONAI: a convolution matches channels and size when the identity cannot (1x1 if only channels)
        if np.prod(strides) != 1 or in_channels != out_channels:
            rkernel_size, rpadding = (kernel_size, padding) if np.prod(strides) != 1 else (1, 0)
            self.residual = Conv[PARTIAL_CONV, spatial_dims](
                in_channels, out_channels, rkernel_size, strides, rpadding, bias=bias, multi_channel=True
            )
        self.identity_residual = isinstance(self.residual, PartialIdentity)

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        m = as_carrier(mask)
        res, res_mask = self._residual(x, m)
        cx, cx_mask = self.conv(x, m)
        merged = mask_union(cx_mask, res_mask)
        return mark_clean(cx + res, merged), as_given(merged, mask)

    def _residual(self, x: Tensor, mask: Optional[MaskLike]) -> Tuple[Tensor, Optional[MaskLike]]:
        # a constant: scripting compiles only the branch that matches the residual's type
        if self.identity_residual:
            return self.residual(x, mask)
        res = self.residual(x, mask)
        # single channel already, or a non-grouped convolution's shared mask
        return res, first_channel(self.residual.updated_mask(x, mask))
