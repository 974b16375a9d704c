"""Down- and up-sampling that carry the mask: masked max pooling and MONAI ``UpSample`` counterparts.

Mask rules (the strided partial convolution, the other way down, is :class:`pconv3d.PartialConv3d`):

* max pooling: the maximum over the valid voxels of each window; a pooled voxel is valid if any voxel
  of its window is (its mask is the max-pooled mask).
* transposed convolution (``"deconv"``): :mod:`pconv3d.blocks.conv_transpose`; an output voxel is valid
  if any input voxel reaching it is, missing contributions rescaled.
* interpolation (``"nontrainable"``): normalized interpolation ``up(X * M) / up(M)``; an output voxel is
  valid if ``up(M) > 0``, i.e. an input voxel with nonzero interpolation weight is valid. With an
  all-valid mask this is the plain interpolation (exactly for ``"nearest"``, to rounding for linear modes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Tuple

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Pool
from monai.utils import InterpolateMode, UpsampleMode, ensure_tuple_rep, look_up_option
from torch import Tensor

from pconv3d.blocks.factories import PARTIAL_CONV, PARTIAL_CONVTRANS
from pconv3d.mask import Mask, as_carrier, as_given, first_channel, tensor_of
from pconv3d.masking import all_valid, apply_mask, mark_clean

__all__ = ["PartialMaxPool", "PartialUpSample"]


class PartialMaxPool(nn.Module):
    """Max pooling over valid voxels, on ``(x, mask)`` pairs.

    Args:
        spatial_dims: number of spatial dimensions.
        kernel_size, stride, padding, dilation, ceil_mode: as ``nn.MaxPoolNd`` (``stride`` defaults to
            ``kernel_size``).

    ``forward(x, mask=None) -> (y, mask_out)``: ``mask`` ``(1 or N, 1 or C, *spatial)``, nonzero = valid,
    ``None`` = all valid. ``mask_out`` is the max-pooled mask; ``y`` is 0 where it is 0.

    Example::

        >>> pool = PartialMaxPool(3, kernel_size=2)
        >>> y, m = pool(torch.randn(1, 4, 8, 8, 8), torch.rand(1, 1, 8, 8, 8) > 0.5)
    """

    def __init__(
        self,
        spatial_dims: int,
        kernel_size: Sequence[int] | int,
        stride: Sequence[int] | int | None = None,
        padding: Sequence[int] | int = 0,
        dilation: Sequence[int] | int = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.pool = Pool[Pool.MAX, spatial_dims](
            kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode
        )

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        m = tensor_of(mask)
        if m is None or all_valid(mask):  # nothing missing: the plain pooling
            y = self.pool(x)
            ones = torch.ones([y.shape[0], 1] + list(y.shape[2:]), dtype=x.dtype, device=x.device)
            return y, _handed_on(ones, mask, True, True)
        # holes become -inf so that they never win a window (and never receive a gradient)
        filled = torch.where(m != 0, x, torch.full((), float("-inf"), dtype=x.dtype, device=x.device))
        y = self.pool(filled)
        pooled = self.pool(m.detach().to(x.dtype))
        y = apply_mask(y, pooled != 0)
        mask_out = _handed_on(pooled.expand([y.shape[0], pooled.shape[1]] + list(y.shape[2:])), mask, None, None)
        return mark_clean(y, mask_out), mask_out


class PartialUpSample(nn.Module):
    """MONAI ``UpSample`` on ``(x, mask)`` pairs (mask rules in the module doc).

    Same arguments and submodule names (``deconv``, ``deconvgroup``, ``preconv``,
    ``upsample_non_trainable``) as ``monai.networks.blocks.UpSample`` for the modes ``"deconv"``,
    ``"deconvgroup"`` and ``"nontrainable"``; the convolutions are partial. Not supported (``ValueError``):
    ``"pixelshuffle"`` and custom ``pre_conv``/``post_conv`` modules.

    ``forward(x, mask=None) -> (y, mask_out)``; ``mask`` ``(1 or N, 1, *spatial)`` (1 or C channels for
    ``"nontrainable"`` without a pre-convolution), ``None`` = all valid.

    Example::

        >>> up = PartialUpSample(3, 8, 4, scale_factor=2, mode="deconv")
        >>> y, m = up(torch.randn(1, 8, 8, 8, 8), torch.rand(1, 1, 8, 8, 8) > 0.5)   # y: (1, 4, 16, 16, 16)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int | None = None,
        out_channels: int | None = None,
        scale_factor: Sequence[float] | float = 2,
        kernel_size: Sequence[float] | float | None = None,
        size: tuple[int] | int | None = None,
        mode: UpsampleMode | str = UpsampleMode.DECONV,
        pre_conv: nn.Module | str | None = "default",
        post_conv: nn.Module | None = None,
        interp_mode: str = InterpolateMode.LINEAR,
        align_corners: bool | None = True,
        bias: bool = True,
        apply_pad_pool: bool = True,
    ) -> None:
        super().__init__()
        scale_factor_ = ensure_tuple_rep(scale_factor, spatial_dims)
        up_mode = look_up_option(mode, UpsampleMode)
        if up_mode == UpsampleMode.PIXELSHUFFLE:
            raise ValueError("PartialUpSample: mode 'pixelshuffle' is not supported; use 'deconv' or 'nontrainable'")
        if not (pre_conv is None or pre_conv == "default") or post_conv is not None:
            raise ValueError("PartialUpSample: custom pre_conv/post_conv modules are not supported")
        if not kernel_size:
            kernel_size_ = scale_factor_
            output_padding = padding = 0
        else:
            kernel_size_ = ensure_tuple_rep(kernel_size, spatial_dims)
            padding = tuple((k - 1) // 2 for k in kernel_size_)
            output_padding = tuple(s - 1 - (k - 1) % 2 for k, s in zip(kernel_size_, scale_factor_))

        if up_mode in (UpsampleMode.DECONV, UpsampleMode.DECONVGROUP):
            if not in_channels:
                raise ValueError(f"in_channels needs to be specified in the '{mode}' mode.")
            out_channels = out_channels or in_channels
            groups = 1
            if up_mode == UpsampleMode.DECONVGROUP and in_channels % out_channels == 0:
                groups = out_channels
            conv = Conv[PARTIAL_CONVTRANS, spatial_dims](
                in_channels=in_channels,
                out_channels=out_channels,
                kernel_size=kernel_size_,
                stride=scale_factor_,
                padding=padding,
                output_padding=output_padding,
                groups=groups,
                bias=bias,
            )
            self.add_module("deconv" if up_mode == UpsampleMode.DECONV else "deconvgroup", conv)
            return
        # nontrainable: optional 1x1 partial convolution, then normalized interpolation
        if pre_conv == "default" and out_channels != in_channels:
            if not in_channels:
                raise ValueError(f"in_channels needs to be specified in the '{mode}' mode.")
            self.preconv = Conv[PARTIAL_CONV, spatial_dims](
                in_channels=in_channels,
                out_channels=out_channels or in_channels,
                kernel_size=1,
                bias=bias,
                multi_channel=True,
            )
        elif pre_conv is None and out_channels != in_channels:
            raise ValueError(
                "in the nontrainable mode, if not setting pre_conv, out_channels should equal to in_channels."
            )
        interp = InterpolateMode(interp_mode)
        linear_modes = [InterpolateMode.LINEAR, InterpolateMode.BILINEAR, InterpolateMode.TRILINEAR]
        if interp in linear_modes:
            interp = linear_modes[spatial_dims - 1]
        self.upsample_non_trainable = nn.Upsample(
            size=size, scale_factor=None if size else scale_factor_, mode=interp.value, align_corners=align_corners
        )

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if hasattr(self, "deconv"):
            m = as_carrier(mask)
            y = self.deconv(x, m)
            return y, as_given(self.deconv.updated_mask(x, m), mask)
        if hasattr(self, "deconvgroup"):
            m = as_carrier(mask)
            y = self.deconvgroup(x, m)
            return y, as_given(self.deconvgroup.updated_mask(x, m), mask)
        m = mask
        if hasattr(self, "preconv"):
            m = as_carrier(mask)
            y = self.preconv(x, m)
            m = first_channel(self.preconv.updated_mask(x, m))
            x = y
        weights = tensor_of(m)
        if weights is None:
            weights = torch.ones([1, 1] + list(x.shape[2:]), dtype=x.dtype, device=x.device)
        else:
            x = apply_mask(x, m)
            weights = weights.detach().to(x.dtype)
        up = self.upsample_non_trainable(x)
        up_weights = self.upsample_non_trainable(weights)
        valid = up_weights > 0
        # the weights carry no gradient, so this ratio (0 where nothing is valid) is safe to differentiate through
        ratio = torch.where(valid, 1.0 / up_weights, torch.zeros((), dtype=x.dtype, device=x.device))
        mask_out = valid.to(x.dtype)
        mask_out = _handed_on(mask_out.expand([up.shape[0], mask_out.shape[1]] + list(up.shape[2:])), mask, True, None)
        return up * ratio, mask_out


def _handed_on(mask_out: Tensor, given: Optional[Tensor], binary: Optional[bool], all_valid: Optional[bool]) -> Tensor:
    """``mask_out`` as a block returns it: a carrier with these facts if it was given one, else the tensor."""
    if torch.jit.is_scripting():
        return mask_out
    return given.then(mask_out, binary=binary, all_valid=all_valid) if isinstance(given, Mask) else mask_out
