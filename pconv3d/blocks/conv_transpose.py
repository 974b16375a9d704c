"""Partial transposed convolution: the up-sampling counterpart of :class:`pconv3d.PartialConv3d`.

For each output voxel, ``S`` is the (weighted) number of valid input voxels that reach it and ``F`` the
number that reach it when all are valid (fewer near borders and, for some geometries, between strides)::

    out = conv_transpose(X * M, W) * F / S + b          and 0 where S == 0;      mask_out = [S > 0]

So an output voxel is valid if any contributing input voxel is valid, missing contributions are made up
by rescaling as partial convolution does, and an all-valid mask gives exactly ``nn.ConvTransposeNd``
wherever ``F > 0``. Holes never reach the output, whatever they hold.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pconv3d.mask_stats import MaskStats, cached_transposed_stats, compute_transposed_stats, renormalize, stat_dtype
from pconv3d.masking import apply_mask

__all__ = ["PartialConvTranspose1d", "PartialConvTranspose2d", "PartialConvTranspose3d"]


class _PartialConvTransposeNd:
    """Partial behaviour shared by the 1d/2d/3d classes (mixed in before ``nn.ConvTransposeNd``).

    Args:
        *args, **kwargs: exactly those of ``nn.ConvTransposeNd``.
        return_mask: ``forward`` returns ``(output, updated_mask)`` instead of ``output``.

    ``forward(input, mask_in=None)``: ``mask_in`` is (1 or N, 1, *spatial), bool/integer (binary) or
    floating (weights in [0, 1]); ``None`` means all valid. The returned mask has the input's dtype and
    shape (N, 1, *out).
    """

    __constants__ = nn.ConvTranspose3d.__constants__ + ["return_mask"]

    def __init__(self, *args, return_mask: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"partial transposed convolution: padding_mode must be 'zeros', got {self.padding_mode!r}")
        self.return_mask = return_mask

    def forward(self, input: Tensor, mask_in: Optional[Tensor] = None):
        out, mask = self.partial_forward(input, mask_in)
        if self.return_mask:
            return out, mask
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", return_mask={self.return_mask}"

    def _conv_transpose(self, x: Tensor) -> Tensor:
        """The bias-free transposed convolution, through the functional that autocast knows."""
        args = (list(self.stride), list(self.padding), list(self.output_padding), self.groups, list(self.dilation))
        n = len(self.kernel_size)
        if n == 1:
            return F.conv_transpose1d(x, self.weight, None, *args)
        if n == 2:
            return F.conv_transpose2d(x, self.weight, None, *args)
        return F.conv_transpose3d(x, self.weight, None, *args)

    @torch.jit.unused
    def _cached_stats(self, mask: Optional[Tensor], stats_args: tuple) -> MaskStats:
        return cached_transposed_stats(mask, *stats_args)

    def partial_forward(self, input: Tensor, mask_in: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Partial transposed convolution of ``input`` under ``mask_in``; returns ``(output, updated_mask)``."""
        spatial = list(input.shape[2:])
        if mask_in is not None and (
            mask_in.dim() != input.dim() or mask_in.shape[1] != 1 or mask_in.shape[0] not in (1, input.shape[0])
            or list(mask_in.shape[2:]) != spatial
        ):
            raise ValueError(
                f"partial transposed convolution: mask_in must have shape (1 or {input.shape[0]}, 1, *{spatial}) "
                f"for input of shape {list(input.shape)}; got mask of shape {list(mask_in.shape)}"
            )
        stats_args = (
            spatial, list(self.kernel_size), list(self.stride), list(self.padding), list(self.output_padding),
            list(self.dilation), stat_dtype(input.dtype), input.device,
        )
        if torch.jit.is_scripting():
            stats = compute_transposed_stats(mask_in, *stats_args)
        else:
            stats = self._cached_stats(mask_in, stats_args)
        out = renormalize(self._conv_transpose(apply_mask(input, mask_in)), stats, self.bias)
        valid = stats.valid
        mask_out = valid.to(input.dtype).expand([out.shape[0], 1] + list(out.shape[2:]))
        return out, mask_out


class PartialConvTranspose1d(_PartialConvTransposeNd, nn.ConvTranspose1d):
    """1D partial transposed convolution; see :class:`_PartialConvTransposeNd`."""


class PartialConvTranspose2d(_PartialConvTransposeNd, nn.ConvTranspose2d):
    """2D partial transposed convolution; see :class:`_PartialConvTransposeNd`."""


class PartialConvTranspose3d(_PartialConvTransposeNd, nn.ConvTranspose3d):
    """3D partial transposed convolution; see :class:`_PartialConvTransposeNd`.

    Example::

        >>> up = PartialConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1, return_mask=True)
        >>> out, mask = up(torch.randn(1, 8, 8, 8, 8), torch.rand(1, 1, 8, 8, 8) > 0.5)
        >>> out.shape, mask.shape
        (torch.Size([1, 4, 16, 16, 16]), torch.Size([1, 1, 16, 16, 16]))
    """
