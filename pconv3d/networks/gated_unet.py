"""``GatedUNet``: MONAI's ``UNet`` with gated blocks, for images that carry their validity mask as a channel."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch.nn as nn
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNet

from pconv3d.blocks.gated import GatedConvolution, GatedResidualUnit
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

    def __init__(self, *args: Any, gate_channels: int | None = None, **kwargs: Any) -> None:
        self.gate_channels = gate_channels  # read while UNet's constructor builds the blocks
        super().__init__(*args, **kwargs)

    def _get_down_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        return unet_down_layer(self, *self._gated_blocks(), in_channels, out_channels, strides)

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        # the top block writes the logits: a gate there would only pull them towards 0
        if is_top:
            return unet_up_layer(self, Convolution, ResidualUnit, in_channels, out_channels, strides, is_top)
        return unet_up_layer(self, *self._gated_blocks(), in_channels, out_channels, strides, is_top)

    def _gated_blocks(self) -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
        return (functools.partial(GatedConvolution, gate_channels=self.gate_channels),
                functools.partial(GatedResidualUnit, gate_channels=self.gate_channels))
