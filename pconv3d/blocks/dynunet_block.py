"""Partial counterparts of MONAI's DynUNet blocks (``monai.networks.blocks.dynunet_block``).

Same arguments and submodule names as MONAI's ``UnetBasicBlock``, ``UnetResBlock``, ``UnetUpBlock`` and
``UnetOutBlock``, so weights load strictly either way; every block takes and returns ``(x, mask)``.
Norms are mask-aware (``"instance"`` becomes ``"maskedinstance"``, ...), residual and skip masks are
unions (see :mod:`pconv3d.blocks.skip`), and holes are 0 in every output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from monai.networks.blocks.dynunet_block import get_output_padding, get_padding
from monai.networks.layers.factories import Act, Norm
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import Tensor

from pconv3d.blocks.convolution import PartialConvolution
from pconv3d.blocks.factories import masked_norm
from pconv3d.masks.apply import apply_mask
from pconv3d.masks.carrier import MaskLike, as_carrier, as_given, mask_union

__all__ = [
    "PartialUnetBasicBlock",
    "PartialUnetResBlock",
    "PartialUnetUpBlock",
    "PartialUnetOutBlock",
    "get_partial_conv_layer",
]

_LEAKY_RELU = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


def get_partial_conv_layer(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int] | int = 3,
    stride: Sequence[int] | int = 1,
    act: tuple | str | None = Act.PRELU,
    norm: tuple | str | None = Norm.INSTANCE,
    dropout: tuple | str | float | None = None,
    bias: bool = False,
    conv_only: bool = True,
    is_transposed: bool = False,
) -> PartialConvolution:
    """MONAI's ``get_conv_layer`` (DynUNet padding rules) building a :class:`PartialConvolution`."""
    padding = get_padding(kernel_size, stride)
    output_padding = get_output_padding(kernel_size, stride, padding) if is_transposed else None
    return PartialConvolution(
        spatial_dims,
        in_channels,
        out_channels,
        strides=stride,
        kernel_size=kernel_size,
        act=act,
        norm=norm,
        dropout=dropout,
        bias=bias,
        conv_only=conv_only,
        is_transposed=is_transposed,
        padding=padding,
        output_padding=output_padding,
    )


def _masked_norm_layer(norm_name: tuple | str, spatial_dims: int, channels: int) -> nn.Module:
    norm = masked_norm(norm_name)
    if norm is None:
        raise ValueError("DynUNet blocks need a norm: 'instance', 'batch', 'group' or a masked one")
    return get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)


class PartialUnetBasicBlock(nn.Module):
    """MONAI ``UnetBasicBlock`` (conv, norm, act, twice) on ``(x, mask)`` pairs.

    Args: those of ``monai.networks.blocks.dynunet_block.UnetBasicBlock``.

    Example::

        >>> block = PartialUnetBasicBlock(3, 1, 8, kernel_size=3, stride=1, norm_name="instance")
        >>> y, m = block(torch.randn(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16) > 0.3)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        stride: Sequence[int] | int,
        norm_name: tuple | str,
        act_name: tuple | str = _LEAKY_RELU,
        dropout: tuple | str | float | None = None,
    ):
        super().__init__()
        self.conv1 = get_partial_conv_layer(
            spatial_dims, in_channels, out_channels, kernel_size=kernel_size, stride=stride, dropout=dropout,
            act=None, norm=None, conv_only=False,
        )
        self.conv2 = get_partial_conv_layer(
            spatial_dims, out_channels, out_channels, kernel_size=kernel_size, stride=1, dropout=dropout,
            act=None, norm=None, conv_only=False,
        )
        self.lrelu = get_act_layer(name=act_name)
        self.norm1 = _masked_norm_layer(norm_name, spatial_dims, out_channels)
        self.norm2 = _masked_norm_layer(norm_name, spatial_dims, out_channels)

    def forward(self, inp: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        out, m = self.conv1(inp, as_carrier(mask))
        out = self.lrelu(self.norm1(out, m))  # conv2 reads valid voxels only: no clearing needed here
        out, m = self.conv2(out, m)
        out = self.lrelu(self.norm2(out, m))
        return apply_mask(out, m), as_given(m, mask)


class PartialUnetResBlock(PartialUnetBasicBlock):
    """MONAI ``UnetResBlock`` on ``(x, mask)`` pairs, with a mask-aware residual path.

    The layers of :class:`PartialUnetBasicBlock`, plus a residual: a partial 1x1 convolution and masked norm
    (``conv3``/``norm3``) where MONAI has one, else the input with its holes cleared; the output mask is the
    union of both paths'.

    Args: those of ``monai.networks.blocks.dynunet_block.UnetResBlock``.

    Example::

        >>> block = PartialUnetResBlock(3, 1, 8, kernel_size=3, stride=2, norm_name="instance")
        >>> y, m = block(torch.randn(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16) > 0.3)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        stride: Sequence[int] | int,
        norm_name: tuple | str,
        act_name: tuple | str = _LEAKY_RELU,
        dropout: tuple | str | float | None = None,
    ):
        super().__init__(spatial_dims, in_channels, out_channels, kernel_size, stride, norm_name, act_name, dropout)
        self.downsample = in_channels != out_channels or not np.all(np.atleast_1d(stride) == 1)
        if self.downsample:
            self.conv3 = get_partial_conv_layer(
                spatial_dims, in_channels, out_channels, kernel_size=1, stride=stride, dropout=dropout,
                act=None, norm=None, conv_only=False,
            )
            self.norm3 = _masked_norm_layer(norm_name, spatial_dims, out_channels)

    def forward(self, inp: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        m_in = as_carrier(mask)
        out, m = self.conv1(inp, m_in)
        out = self.lrelu(self.norm1(out, m))
        out, m = self.conv2(out, m)
        out = self.norm2(out, m)
        if hasattr(self, "conv3"):
            residual, res_mask = self.conv3(inp, m_in)
            residual = self.norm3(residual, res_mask)
            m = mask_union(m, res_mask)
        else:
            residual = apply_mask(inp, m_in)
            m = mask_union(m, m_in)
        out = self.lrelu(out + residual)
        return apply_mask(out, m), as_given(m, mask)


class PartialUnetUpBlock(nn.Module):
    """MONAI ``UnetUpBlock`` (transposed conv, concatenation with the skip, basic block) on masks.

    ``forward(inp, skip, mask=None, skip_mask=None) -> (y, mask_out)``: ``mask`` belongs to ``inp``,
    ``skip_mask`` to ``skip``; the concatenation's mask is their union (see :mod:`pconv3d.blocks.skip`).

    Args: those of ``monai.networks.blocks.dynunet_block.UnetUpBlock``.

    Example::

        >>> up = PartialUnetUpBlock(3, 16, 8, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name="instance")
        >>> y, m = up(torch.randn(1, 16, 8, 8, 8), torch.randn(1, 8, 16, 16, 16),
        ...           torch.ones(1, 1, 8, 8, 8), torch.ones(1, 1, 16, 16, 16))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        stride: Sequence[int] | int,
        upsample_kernel_size: Sequence[int] | int,
        norm_name: tuple | str,
        act_name: tuple | str = _LEAKY_RELU,
        dropout: tuple | str | float | None = None,
        trans_bias: bool = False,
    ):
        super().__init__()
        self.transp_conv = get_partial_conv_layer(
            spatial_dims, in_channels, out_channels, kernel_size=upsample_kernel_size, stride=upsample_kernel_size,
            dropout=dropout, bias=trans_bias, act=None, norm=None, conv_only=False, is_transposed=True,
        )
        self.conv_block = PartialUnetBasicBlock(
            spatial_dims, out_channels + out_channels, out_channels, kernel_size=kernel_size, stride=1,
            dropout=dropout, norm_name=norm_name, act_name=act_name,
        )

    def forward(
        self, inp: Tensor, skip: Tensor, mask: Optional[MaskLike] = None, skip_mask: Optional[MaskLike] = None
    ) -> Tuple[Tensor, MaskLike]:
        skip_m = as_carrier(skip_mask)
        out, m = self.transp_conv(inp, as_carrier(mask))
        out, m = self.conv_block(torch.cat((out, apply_mask(skip, skip_m)), dim=1), mask_union(m, skip_m))
        return out, as_given(m, mask)


class PartialUnetOutBlock(nn.Module):
    """MONAI ``UnetOutBlock`` (1x1 convolution) on ``(x, mask)`` pairs.

    Example::

        >>> head = PartialUnetOutBlock(3, 8, 2)
        >>> y, m = head(torch.randn(1, 8, 16, 16, 16), torch.ones(1, 1, 16, 16, 16))
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, dropout: tuple | str | float | None = None
    ):
        super().__init__()
        self.conv = get_partial_conv_layer(
            spatial_dims, in_channels, out_channels, kernel_size=1, stride=1, dropout=dropout, bias=True,
            act=None, norm=None, conv_only=False,
        )

    def forward(self, inp: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        return self.conv(inp, mask)
