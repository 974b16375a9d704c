"""``GatedUNet``: MONAI's ``UNet`` with gated blocks, for images that carry their validity mask as a channel."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNet

from pconv3d.blocks.gated import GATE_BIAS, Gated, GatedConvolution, GatedResidualUnit
from pconv3d.networks.unet import unet_down_layer, unet_up_layer

__all__ = ["GatedUNet"]


class GatedUNet(UNet):
    """Drop-in for ``monai.networks.nets.UNet`` (same arguments) whose blocks learn a soft validity mask.

    Every encoder, bottom and decoder block is gated (:mod:`pconv3d.blocks.gated`): its output is multiplied
    by ``sigmoid`` of a convolution of its input, with the block's geometry. The top decoder block, which
    writes the logits, is MONAI's, ungated. Give the mask as the input's last channel (``in_channels`` =
    image channels + 1), with the holes filled: the input recipe ``gated``
    (:data:`pconv3d.transforms.RECIPES`). ``state_dict`` keys are ``UNet``'s plus the gates'
    (``<block>.gate.weight``, ``<block>.gate.bias``), so a trained ``UNet``'s weights load with ``strict=False``.

    Args:
        args, kwargs: ``monai.networks.nets.UNet``'s.
        gate_channels: ``None``: one gate per output channel of each block (Yu et al.); ``1``: one gate map per
            block, shared by its channels, at a fraction of the cost (:func:`pconv3d.blocks.gated.gate_for`).

    Example::

        >>> net = GatedUNet(3, 2, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
        >>> net(torch.randn(1, 2, 32, 32, 32)).shape
        torch.Size([1, 4, 32, 32, 32])
        >>> missing = net.load_state_dict(UNet(3, 2, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).state_dict(), strict=False)
        >>> all(k.endswith(("gate.weight", "gate.bias")) for k in missing.missing_keys), missing.unexpected_keys
        (True, [])
    """

    # parameters a ``UNet`` of the same arguments does not have: all a trained UNet's weights leave new
    added_parameters = ("gate.weight", "gate.bias")

    def __init__(self, *args: Any, gate_channels: int | None = None, gated_decoder: bool = True,
                 gate_from: str = "input", gate_up_conv: bool = True,
                 **kwargs: Any) -> None:
        self.gate_channels = gate_channels  # read while UNet's constructor builds the blocks
        self.gated_decoder, self.gate_from, self.gate_up_conv = gated_decoder, gate_from, gate_up_conv
        super().__init__(*args, **kwargs)

    def _get_down_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        if is_top and self.gate_from == "output_but_first":  # the gate that sees the mask reads the input
            return unet_down_layer(self, *self._input_gated_blocks(), in_channels, out_channels, strides)
        return unet_down_layer(self, *self._gated_blocks(), in_channels, out_channels, strides)

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        # the top block writes the logits: a gate there would only pull them towards 0
        if is_top or not self.gated_decoder:
            return unet_up_layer(self, Convolution, ResidualUnit, in_channels, out_channels, strides, is_top)
        conv, unit = self._gated_blocks()
        return unet_up_layer(self, conv if self.gate_up_conv else Convolution, unit, in_channels, out_channels,
                             strides, is_top)

    def _gated_blocks(self) -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
        if self.gate_from in ("output", "output_but_first"):
            return OutputGated.convolution, OutputGated.residual_unit
        if self.gate_from == "separable":
            return SeparableGated.convolution, SeparableGated.residual_unit
        return self._input_gated_blocks()

    def _input_gated_blocks(self) -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
        return (functools.partial(GatedConvolution, gate_channels=self.gate_channels),
                functools.partial(GatedResidualUnit, gate_channels=self.gate_channels))


class OutputGated(Gated):
    """PROTOTYPE: y = block(x); y * sigmoid(1x1 conv(y))."""

    def __init__(self, block: nn.Module, channels: int, dims: int) -> None:
        gate = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1](channels, channels, 1)
        nn.init.constant_(gate.bias, GATE_BIAS)
        super().__init__(block, gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y * torch.sigmoid(self.gate(y))

    @classmethod
    def convolution(cls, spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> "OutputGated":
        return cls(Convolution(spatial_dims, in_channels, out_channels, **kwargs), out_channels, spatial_dims)

    @classmethod
    def residual_unit(cls, spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> "OutputGated":
        return cls(ResidualUnit(spatial_dims, in_channels, out_channels, **kwargs), out_channels, spatial_dims)


def separable_gate(conv: nn.Module, channels: int) -> nn.Module:
    """PROTOTYPE: depthwise conv with conv's geometry, then 1x1 to channels."""
    from monai.networks.layers.factories import Conv
    kind = Conv.CONVTRANS if conv.transposed else Conv.CONV
    geometry = dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    groups=conv.in_channels, bias=False)
    if conv.transposed:
        geometry["output_padding"] = conv.output_padding
    dims = len(conv.kernel_size)
    depthwise = Conv[kind, dims](conv.in_channels, conv.in_channels, **geometry)
    pointwise = Conv[Conv.CONV, dims](conv.in_channels, channels, 1)
    nn.init.constant_(pointwise.bias, GATE_BIAS)
    return nn.Sequential(depthwise, pointwise)


class SeparableGated(Gated):
    @classmethod
    def convolution(cls, *args: Any, **kwargs: Any) -> "SeparableGated":
        block = Convolution(*args, **kwargs)
        return cls(block, separable_gate(block.conv, block.conv.out_channels))

    @classmethod
    def residual_unit(cls, *args: Any, **kwargs: Any) -> "SeparableGated":
        block = ResidualUnit(*args, **kwargs)
        return cls(block, separable_gate(block.conv.unit0.conv, block.conv.unit0.conv.out_channels))
