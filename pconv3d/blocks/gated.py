"""Gated versions of MONAI's ``Convolution`` and ``ResidualUnit``: a learned soft mask per output voxel.

Gated convolution (Yu et al., "Free-Form Image Inpainting with Gated Convolution", ICCV 2019) lets the
network learn where its input can be trusted instead of being told by a fixed mask rule: a block's output is
multiplied by ``sigmoid(gate(x))``, ``gate`` a convolution with the block's geometry (kernel, stride, and for
transposed blocks the same upsampling). The mask reaches the gates as an input channel
(``mask_as_channel``), so the first gates see it directly and later ones see what the features make of it.

The blocks subclass MONAI's, so their ``state_dict`` keys are MONAI's plus ``gate.weight`` and ``gate.bias``:
a trained MONAI network's weights load with ``strict=False`` (only the gates are new), and a gate whose
sigmoid is 1 gives MONAI's block exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.convutils import same_padding, stride_minus_kernel_padding
from monai.networks.layers.factories import Conv
from torch import Tensor

__all__ = ["GatedConvolution", "GatedResidualUnit", "gate_conv"]

# a new gate starts mostly open (sigmoid(2) = 0.88), so a gated network starts close to its plain twin
GATE_BIAS = 2.0


def gate_conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Sequence[int] | int,
              strides: Sequence[int] | int, is_transposed: bool = False) -> nn.Module:
    """The gating convolution of a block: same kernel, stride, padding (and output padding) as the block's."""
    padding = same_padding(kernel_size)
    if is_transposed:
        gate = Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size, strides, padding,
                                                  output_padding=stride_minus_kernel_padding(1, strides))
    else:
        gate = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, strides, padding)
    nn.init.constant_(gate.bias, GATE_BIAS)
    return gate


class GatedConvolution(Convolution):
    """MONAI ``Convolution`` whose output is gated: ``Convolution(x) * sigmoid(gate(x))``.

    Same arguments as ``monai.networks.blocks.Convolution`` (``padding``, ``dilation`` and ``groups`` left
    at their defaults), transposed too.

    Example::

        >>> block = GatedConvolution(3, 2, 8, strides=2)
        >>> block(torch.randn(1, 2, 16, 16, 16)).shape
        torch.Size([1, 8, 8, 8, 8])
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, strides: Sequence[int] | int = 1,
                 kernel_size: Sequence[int] | int = 3, is_transposed: bool = False, **kwargs) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, strides=strides, kernel_size=kernel_size,
                         is_transposed=is_transposed, **kwargs)
        self.gate = gate_conv(spatial_dims, in_channels, out_channels, kernel_size, strides, is_transposed)

    def forward(self, x: Tensor) -> Tensor:
        # MONAI's Convolution is a Sequential of its children, which now include the gate: run its own two
        y = self.conv(x)
        if hasattr(self, "adn"):
            y = self.adn(y)
        return y * torch.sigmoid(self.gate(x))


class GatedResidualUnit(ResidualUnit):
    """MONAI ``ResidualUnit`` whose output (convolutions plus residual) is gated by ``sigmoid(gate(x))``.

    Same arguments as ``monai.networks.blocks.ResidualUnit`` (``padding`` and ``dilation`` at their
    defaults).

    Example::

        >>> unit = GatedResidualUnit(3, 2, 8, strides=2, subunits=2)
        >>> unit(torch.randn(1, 2, 16, 16, 16)).shape
        torch.Size([1, 8, 8, 8, 8])
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, strides: Sequence[int] | int = 1,
                 kernel_size: Sequence[int] | int = 3, **kwargs) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, strides=strides, kernel_size=kernel_size, **kwargs)
        self.gate = gate_conv(spatial_dims, in_channels, out_channels, kernel_size, strides)

    def forward(self, x: Tensor) -> Tensor:
        # MONAI's ResidualUnit.forward, spelled out: TorchScript compiles no super() call
        return (self.conv(x) + self.residual(x)) * torch.sigmoid(self.gate(x))
