"""``PartialBasicUNet``: MONAI's ``BasicUNet`` built from partial blocks."""

from collections.abc import Sequence
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.utils import ensure_tuple_rep
from torch import Tensor

from pconv3d.blocks import (
    PARTIAL_CONV,
    PartialConvolution,
    PartialMaxPool,
    PartialSequential,
    PartialUpSample,
    masked_norm,
)
from pconv3d.masks.carrier import MaskLike, as_carrier, as_given, mask_union, pad_mask
from pconv3d.networks.utils import resolve_mask

__all__ = ["PartialBasicUNet", "PartialTwoConv", "PartialDown", "PartialUpCat"]


class PartialTwoConv(PartialSequential):
    """MONAI ``TwoConv`` (two convolution blocks) on ``(x, mask)`` pairs; same arguments."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        dropout: float | tuple = 0.0,
    ):
        super().__init__()
        for i, chns in enumerate((in_chns, out_chns)):
            conv = PartialConvolution(
                spatial_dims, chns, out_chns, act=act, norm=norm, dropout=dropout, bias=bias, padding=1
            )
            self.add_module(f"conv_{i}", conv)


class PartialDown(PartialSequential):
    """MONAI ``Down`` (2x max pooling, then :class:`PartialTwoConv`): pooling over valid voxels."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        dropout: float | tuple = 0.0,
    ):
        super().__init__()
        self.add_module("max_pooling", PartialMaxPool(spatial_dims, kernel_size=2))
        self.add_module("convs", PartialTwoConv(spatial_dims, in_chns, out_chns, act, norm, bias, dropout))


class PartialUpCat(nn.Module):
    """MONAI ``UpCat`` (upsampling, concatenation with the encoder features, :class:`PartialTwoConv`).

    Same arguments as MONAI's (every ``upsample`` mode; see :class:`~pconv3d.blocks.PartialUpSample`).
    ``forward(x, x_e, mask=None, mask_e=None)``: the concatenation's mask is the union of the up-sampled and
    encoder masks; the replicate padding for odd sizes pads the mask the same way.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        cat_chns: int,
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
        pre_conv: nn.Module | str | None = "default",
        interp_mode: str = "linear",
        align_corners: bool | None = True,
        halves: bool = True,
        is_pad: bool = True,
    ):
        super().__init__()
        if upsample == "nontrainable" and pre_conv is None:
            up_chns = in_chns
        else:
            up_chns = in_chns // 2 if halves else in_chns
        self.upsample = PartialUpSample(
            spatial_dims, in_chns, up_chns, 2, mode=upsample, pre_conv=pre_conv, interp_mode=interp_mode,
            align_corners=align_corners,
        )
        self.convs = PartialTwoConv(spatial_dims, cat_chns + up_chns, out_chns, act, norm, bias, dropout)
        self.is_pad = is_pad

    def forward(
        self, x: Tensor, x_e: Optional[Tensor], mask: Optional[MaskLike] = None, mask_e: Optional[MaskLike] = None
    ) -> Tuple[Tensor, MaskLike]:
        x_0, m_0 = self.upsample(x, as_carrier(mask))
        if x_e is None:
            x_0, m_0 = self.convs(x_0, m_0)
            return x_0, as_given(m_0, mask)
        if self.is_pad:
            # handling spatial shapes due to the 2x maxpooling with odd edge lengths
            dimensions = len(x.shape) - 2
            sp = [0] * (dimensions * 2)
            for i in range(dimensions):
                if x_e.shape[-i - 1] != x_0.shape[-i - 1]:
                    sp[i * 2 + 1] = 1
            x_0 = F.pad(x_0, sp, "replicate")
            m_0 = pad_mask(m_0, sp, "replicate")
        y, m = self.convs(torch.cat([x_e, x_0], dim=1), mask_union(m_0, as_carrier(mask_e)))
        return y, as_given(m, mask)


class PartialBasicUNet(nn.Module):
    """Drop-in for ``monai.networks.nets.BasicUNet`` (same arguments and ``state_dict`` keys) taking a mask.

    Two-convolution blocks, max pooling over valid voxels, up-sampling that carries the mask (every
    ``upsample`` mode of MONAI's ``UpSample``, ``"pixelshuffle"`` included), skip masks united, a final
    partial 1x1 convolution. A norm without a mask-aware version is refused before any layer is built (see
    :mod:`pconv3d.networks`). Calling conventions as
    :class:`~pconv3d.networks.PartialUNet`: ``forward(x, mask=None, condition=None) -> Tensor``.

    Example::

        >>> net = PartialBasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4))
        >>> y = net(torch.randn(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32) > 0.2)
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsample: str = "deconv",
    ):
        masked_norm(norm)  # refuses a norm that has no mask-aware version, before any layer is built
        super().__init__()
        fea = ensure_tuple_rep(features, 6)
        self.conv_0 = PartialTwoConv(spatial_dims, in_channels, features[0], act, norm, bias, dropout)
        self.down_1 = PartialDown(spatial_dims, fea[0], fea[1], act, norm, bias, dropout)
        self.down_2 = PartialDown(spatial_dims, fea[1], fea[2], act, norm, bias, dropout)
        self.down_3 = PartialDown(spatial_dims, fea[2], fea[3], act, norm, bias, dropout)
        self.down_4 = PartialDown(spatial_dims, fea[3], fea[4], act, norm, bias, dropout)
        self.upcat_4 = PartialUpCat(spatial_dims, fea[4], fea[3], fea[3], act, norm, bias, dropout, upsample)
        self.upcat_3 = PartialUpCat(spatial_dims, fea[3], fea[2], fea[2], act, norm, bias, dropout, upsample)
        self.upcat_2 = PartialUpCat(spatial_dims, fea[2], fea[1], fea[1], act, norm, bias, dropout, upsample)
        self.upcat_1 = PartialUpCat(
            spatial_dims, fea[1], fea[0], fea[5], act, norm, bias, dropout, upsample, halves=False
        )
        self.final_conv = Conv[PARTIAL_CONV, spatial_dims](fea[5], out_channels, kernel_size=1)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, condition: Optional[Tensor] = None) -> Tensor:
        mask = resolve_mask(mask, condition)
        x0, m0 = self.conv_0(x, as_carrier(mask))
        x1, m1 = self.down_1(x0, m0)
        x2, m2 = self.down_2(x1, m1)
        x3, m3 = self.down_3(x2, m2)
        x4, m4 = self.down_4(x3, m3)
        u4, n4 = self.upcat_4(x4, x3, m4, m3)
        u3, n3 = self.upcat_3(u4, x2, n4, m2)
        u2, n2 = self.upcat_2(u3, x1, n3, m1)
        u1, n1 = self.upcat_1(u2, x0, n2, m0)
        return self.final_conv(u1, n1)
