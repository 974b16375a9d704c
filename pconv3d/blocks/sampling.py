"""Down- and up-sampling that carry the mask: masked max pooling and MONAI ``UpSample`` counterparts.

Mask rules (the strided partial convolution, the other way down, is :class:`pconv3d.PartialConv3d`):

* max pooling: the maximum over the valid voxels of each window; a pooled voxel is valid if any voxel
  of its window is (its mask is the max-pooled mask).
* transposed convolution (``"deconv"``, ``"deconvgroup"``): :mod:`pconv3d.blocks.conv_transpose`; an
  output voxel is valid if any input voxel reaching it is, missing contributions rescaled.
* fixed filters (:class:`NormalizedFilter`): normalized filtering ``filter(X * M) / filter(M)``, valid where
  ``filter(M) > 0``, i.e. where an input voxel with nonzero weight is valid: the partial convolution
  with fixed weights. For interpolation (``"nontrainable"``) an all-valid mask gives the plain
  interpolation (exactly for ``"nearest"``, to rounding for linear modes).
* pixel shuffle (``"pixelshuffle"``, :class:`PartialSubpixelUpsample`): a partial convolution to
  ``out_channels * scale_factor ** spatial_dims`` channels, then the shuffle, in which every sub-pixel voxel
  inherits the validity of its source voxel (:func:`~pconv3d.masks.carrier.shuffle_mask`), then MONAI's pad-pool
  (zero padding, average pool) as a :class:`NormalizedFilter`: an average over the valid voxels of each
  window, the zero padding missing like the partial convolutions' (so, unlike MONAI's, border voxels are
  not darkened by the padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Tuple

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Pad, Pool
from monai.networks.utils import icnr_init, pixelshuffle
from monai.utils import InterpolateMode, UpsampleMode, ensure_tuple_rep, look_up_option
from torch import Tensor

from pconv3d.blocks.factories import PARTIAL_CONV, PARTIAL_CONVTRANS
from pconv3d.blocks.residual import PartialIdentity
from pconv3d.masks.apply import apply_mask, mark_clean
from pconv3d.masks.carrier import MaskLike, all_valid, as_carrier, as_given, first_channel, shuffle_mask, tensor_of

__all__ = ["PartialMaxPool", "NormalizedFilter", "PartialSubpixelUpsample", "PartialUpSample"]


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

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
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


class NormalizedFilter(nn.Module):
    """A fixed linear filter with nonnegative weights (an interpolation, an average pool) on ``(x, mask)``
    pairs, over valid voxels only: ``filter(X * M) / filter(M)``, 0 where ``filter(M) == 0``, and the mask
    ``[filter(M) > 0]`` (normalized convolution: the partial convolution with fixed weights). Zero padding
    inside ``filter`` pads the mask with zeros too: padded voxels are missing.

    Args:
        filter: the filter, a module without parameters that treats each channel alone and whose weights
            are nonnegative (``nn.Upsample``; ``nn.Sequential`` of a constant pad and an average pool).

    ``forward(x, mask=None) -> (y, mask_out)``: ``mask`` ``(1 or N, 1 or C, *spatial)``, ``None`` = all
    valid; ``mask_out`` ``(N, 1 or C, *out)``, in ``x``'s dtype; ``y`` is 0 where it is 0.

    Example::

        >>> up = NormalizedFilter(nn.Upsample(scale_factor=2, mode="linear", align_corners=True))
        >>> y, m = up(torch.tensor([[[1.0, float("nan"), 3.0]]]), torch.tensor([[[1.0, 0.0, 1.0]]]))
        >>> y.round(decimals=4), m   # the hole filled from its valid neighbours
        (tensor([[[1., 1., 1., 3., 3., 3.]]]), tensor([[[1., 1., 1., 1., 1., 1.]]]))
    """

    def __init__(self, filter: nn.Module) -> None:
        super().__init__()
        self.filter = filter

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        weights = tensor_of(mask)
        if weights is None:
            weights = torch.ones([1, 1] + list(x.shape[2:]), dtype=x.dtype, device=x.device)
        else:
            x = apply_mask(x, mask)
            weights = weights.detach().to(x.dtype)
        y = self.filter(x)
        y_weights = self.filter(weights)
        valid = y_weights > 0
        # the weights carry no gradient, so this ratio (0 where nothing is valid) is safe to differentiate through
        ratio = torch.where(valid, 1.0 / y_weights, torch.zeros((), dtype=x.dtype, device=x.device))
        mask_out = valid.to(x.dtype)
        mask_out = _handed_on(mask_out.expand([y.shape[0], mask_out.shape[1]] + list(y.shape[2:])), mask, True, None)
        return mark_clean(y * ratio, mask_out), mask_out


class PartialSubpixelUpsample(nn.Module):
    """MONAI ``SubpixelUpsample`` on ``(x, mask)`` pairs (mask rules in the module doc).

    Same arguments, submodule names (``conv_block``; ``pad_pool`` with ``apply_pad_pool``) and ICNR
    initialization as ``monai.networks.blocks.SubpixelUpsample``; the convolution is partial, the shuffle
    carries the mask, the pad-pool averages valid voxels only.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: number of input channels.
        out_channels: number of output channels (default ``in_channels``).
        scale_factor: the integer upsampling factor, the same along every axis.
        conv_block: ``"default"`` (a partial 3x3 convolution to ``out_channels * scale_factor **
            spatial_dims`` channels) or ``None`` (none: ``in_channels`` must be divisible by that power). A
            custom module is refused (``ValueError``): its mask rule is unknown.
        apply_pad_pool: after the shuffle, average each voxel with its ``scale_factor - 1`` predecessors
            along every axis (Aitken et al., 2017), over valid voxels only.
        bias: a bias in the default convolution.

    ``forward(x, mask=None) -> (y, mask_out)``: ``mask`` ``(1 or N, 1 or in_channels, *spatial)``, ``None`` =
    all valid with zero padding missing; ``mask_out`` ``(N, 1, *spatial * scale_factor)``.

    Example::

        >>> up = PartialSubpixelUpsample(3, 8, 4, scale_factor=2)
        >>> y, m = up(torch.randn(1, 8, 8, 8, 8), torch.rand(1, 1, 8, 8, 8) > 0.5)   # y: (1, 4, 16, 16, 16)
    """

    __constants__ = ["dimensions", "scale_factor", "has_conv"]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int | None,
        out_channels: int | None = None,
        scale_factor: int = 2,
        conv_block: nn.Module | str | None = "default",
        apply_pad_pool: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _refuse_custom_modules(self, conv_block=conv_block)
        if scale_factor <= 0:
            raise ValueError(f"The `scale_factor` multiplier must be an integer greater than 0, got {scale_factor}.")
        self.dimensions = spatial_dims
        self.scale_factor = scale_factor
        self.has_conv = conv_block == "default"
        if self.has_conv:
            out_channels = out_channels or in_channels
            if not out_channels:
                raise ValueError("in_channels need to be specified.")
            # mask channels as in PartialUpSample's pre-convolution: one per input channel, or one for all
            self.conv_block = Conv[PARTIAL_CONV, spatial_dims](
                in_channels=in_channels, out_channels=out_channels * scale_factor**spatial_dims, kernel_size=3,
                stride=1, padding=1, bias=bias, multi_channel=True,
            )
            icnr_init(self.conv_block, scale_factor)
        else:
            self.conv_block = PartialIdentity()
        if apply_pad_pool:
            self.pad_pool = NormalizedFilter(nn.Sequential(
                Pad[Pad.CONSTANTPAD, spatial_dims](padding=(scale_factor - 1, 0) * spatial_dims, value=0.0),
                Pool[Pool.AVG, spatial_dims](kernel_size=scale_factor, stride=1),
            ))

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        carrier = as_carrier(mask)
        if self.has_conv:
            y = self.conv_block(x, carrier)
            m = first_channel(self.conv_block.updated_mask(x, carrier))
        else:
            y, kept = self.conv_block(x, carrier)
            m = _mask_or_ones(y, kept)
        y = pixelshuffle(y, self.dimensions, self.scale_factor)
        m = shuffle_mask(m, self.scale_factor)
        y = mark_clean(y, m)  # the shuffle moves the zeros of the holes with the mask
        if hasattr(self, "pad_pool"):
            y, m = self.pad_pool(y, m)
        return y, as_given(m, mask)


class PartialUpSample(nn.Module):
    """MONAI ``UpSample`` on ``(x, mask)`` pairs (mask rules in the module doc).

    Same arguments and submodule names (``deconv``, ``deconvgroup``, ``preconv``,
    ``upsample_non_trainable``, ``pixelshuffle``) as ``monai.networks.blocks.UpSample``, every mode; the
    convolutions are partial. Not supported (``ValueError``, before any layer is built): custom
    ``pre_conv``/``post_conv`` modules, whose mask rule is unknown.

    ``forward(x, mask=None) -> (y, mask_out)``; ``mask`` ``(1 or N, 1, *spatial)`` (1 or C channels for
    ``"nontrainable"`` and ``"pixelshuffle"``), ``None`` = all valid.

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
        _refuse_custom_modules(self, pre_conv=pre_conv, post_conv=post_conv)
        scale_factor_ = ensure_tuple_rep(scale_factor, spatial_dims)
        up_mode = look_up_option(mode, UpsampleMode)
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
        if up_mode == UpsampleMode.PIXELSHUFFLE:
            self.pixelshuffle = PartialSubpixelUpsample(
                spatial_dims, in_channels, out_channels, scale_factor=scale_factor_[0],  # isotropic, as MONAI's
                conv_block=pre_conv, apply_pad_pool=apply_pad_pool, bias=bias,
            )
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
        self.upsample_non_trainable = NormalizedFilter(nn.Upsample(
            size=size, scale_factor=None if size else scale_factor_, mode=interp.value, align_corners=align_corners
        ))

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        if hasattr(self, "deconv"):
            m = as_carrier(mask)
            y = self.deconv(x, m)
            return y, as_given(self.deconv.updated_mask(x, m), mask)
        if hasattr(self, "deconvgroup"):
            m = as_carrier(mask)
            y = self.deconvgroup(x, m)
            return y, as_given(self.deconvgroup.updated_mask(x, m), mask)
        if hasattr(self, "pixelshuffle"):
            return self.pixelshuffle(x, mask)
        m = as_carrier(mask)
        if hasattr(self, "preconv"):
            y = self.preconv(x, m)
            m = first_channel(self.preconv.updated_mask(x, m))
            x = y
        y, m = self.upsample_non_trainable(x, m)
        return y, as_given(m, mask)


def _refuse_custom_modules(block: nn.Module, **modules: object) -> None:
    """Refuse a block's custom submodule arguments (anything but ``"default"`` and ``None``): there is no
    telling what a module does with a mask."""
    for name, module in modules.items():
        if not (module is None or module == "default"):
            raise ValueError(f"{type(block).__name__}: custom {name} modules are not supported (no mask rule is "
                             f"known for them); use 'default' or None")


def _mask_or_ones(x: Tensor, mask: Optional[MaskLike]) -> MaskLike:
    """``mask``, or where there is none (all valid) a mask of ones for ``x``."""
    if mask is not None and tensor_of(mask) is not None:
        return mask
    ones = torch.ones([x.shape[0], 1] + list(x.shape[2:]), dtype=x.dtype, device=x.device)
    return _handed_on(ones, mask, True, True)


def _handed_on(mask_out: Tensor, given: Optional[MaskLike], binary: Optional[bool], all_valid: Optional[bool]) -> MaskLike:
    """``mask_out`` as a block returns it: a carrier with these facts if it was given one, else the tensor."""
    if given is None:
        return mask_out
    if isinstance(given, Tensor):
        return mask_out
    return given.new_mask(mask_out, binary=binary, all_valid=all_valid)
