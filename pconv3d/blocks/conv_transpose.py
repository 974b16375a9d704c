"""Partial transposed convolution: the up-sampling counterpart of :class:`pconv3d.PartialConv3d`.

For each output voxel, ``S`` is the (weighted) number of valid input voxels that reach it and ``F`` the
number that reach it when all are valid (fewer near borders and, for some geometries, between strides)::

    out = conv_transpose(X * M, W) * F / S + b          and 0 where S == 0;      mask_out = [S > 0]

So an output voxel is valid if any contributing input voxel is valid, missing contributions are made up
by rescaling as partial convolution does, and an all-valid mask gives exactly ``nn.ConvTransposeNd``
wherever ``F > 0``. Holes never reach the output, whatever they hold.
"""

from typing import List, Optional

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pconv3d.masks.counting import Windows
from pconv3d.partial_conv import PartialConvBase

__all__ = ["PartialConvTranspose1d", "PartialConvTranspose2d", "PartialConvTranspose3d"]


class _PartialConvTransposeNd(PartialConvBase):
    """Partial behaviour shared by the 1d/2d/3d classes (mixed in before ``nn.ConvTransposeNd``); the
    operator itself is :class:`~pconv3d.partial_conv.PartialConvBase`.

    Args:
        *args: exactly the arguments of ``nn.ConvTransposeNd``, given by position.
        **kwargs: the same, given by keyword.
        return_mask: ``forward`` returns ``(output, updated_mask)`` instead of ``output``.

    ``forward(input, mask_in=None)``: ``mask_in`` is ``(1 or N, 1, *spatial)``, bool/integer (binary) or
    floating (weights in [0, 1]), a tensor or a :class:`~pconv3d.masks.carrier.Mask`; ``None`` means all valid.
    The returned mask has the input's dtype and shape ``(N, 1, *out)``.
    """

    def __init__(self, *args, return_mask: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"partial transposed convolution: padding_mode must be 'zeros', got {self.padding_mode!r}")
        self.multi_channel = False
        self.return_mask = return_mask

    def _windows(self) -> Windows:
        return Windows(list(self.weight.shape[2:]), list(self.stride), list(self.padding), list(self.dilation), [],
                       "constant", list(self.output_padding), True)

    def _geometry(self) -> tuple:
        return ("transposed", self.weight.shape[2:], tuple(self.stride), tuple(self.padding),
                tuple(self.output_padding), tuple(self.dilation))

    def _plain_output(self, input: Tensor) -> Optional[Tensor]:
        return None  # outputs no input reaches are 0 and invalid: always the partial arithmetic

    def _conv(self, x: Tensor) -> Tensor:
        """The bias-free transposed convolution, through the functional that autocast knows."""
        stride: List[int] = list(self.stride)
        padding: List[int] = list(self.padding)
        output_padding: List[int] = list(self.output_padding)
        dilation: List[int] = list(self.dilation)
        n = len(self.kernel_size)
        if n == 1:
            return F.conv_transpose1d(x, self.weight, None, stride, padding, output_padding, self.groups, dilation)
        if n == 2:
            return F.conv_transpose2d(x, self.weight, None, stride, padding, output_padding, self.groups, dilation)
        return F.conv_transpose3d(x, self.weight, None, stride, padding, output_padding, self.groups, dilation)


class PartialConvTranspose1d(_PartialConvTransposeNd, nn.ConvTranspose1d):
    """1D partial transposed convolution; see :class:`~pconv3d.blocks.conv_transpose._PartialConvTransposeNd`."""


class PartialConvTranspose2d(_PartialConvTransposeNd, nn.ConvTranspose2d):
    """2D partial transposed convolution; see :class:`~pconv3d.blocks.conv_transpose._PartialConvTransposeNd`."""


class PartialConvTranspose3d(_PartialConvTransposeNd, nn.ConvTranspose3d):
    """3D partial transposed convolution; see :class:`~pconv3d.blocks.conv_transpose._PartialConvTransposeNd`.

    Example::

        >>> up = PartialConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1, return_mask=True)
        >>> out, mask = up(torch.randn(1, 8, 8, 8, 8), torch.rand(1, 1, 8, 8, 8) > 0.5)
        >>> out.shape, mask.shape
        (torch.Size([1, 4, 16, 16, 16]), torch.Size([1, 1, 16, 16, 16]))
    """
