"""``PartialUNet``: MONAI's ``UNet`` built from partial blocks, whose predictions ignore missing voxels."""

from collections.abc import Sequence
from typing import Optional

import torch.nn as nn
from monai.networks.layers.factories import Act, Norm
from monai.networks.nets import UNet
from torch import Tensor

from pconv3d.blocks import (
    PartialConvolution,
    PartialResidualUnit,
    PartialSequential,
    PartialSkipConnection,
    masked_norm,
)
from pconv3d.mask import as_carrier
from pconv3d.networks.utils import resolve_mask

__all__ = ["PartialUNet"]


class PartialUNet(UNet):
    """Drop-in for ``monai.networks.nets.UNet`` (same arguments, same ``state_dict`` keys) that takes a mask.

    Built by MONAI's own ``UNet`` constructor, with :class:`~pconv3d.blocks.PartialConvolution`,
    :class:`~pconv3d.blocks.PartialResidualUnit` and :class:`~pconv3d.blocks.PartialSkipConnection` in
    place of MONAI's blocks: partial (and partial transposed) convolutions, norms over valid voxels
    (``"instance"``, ``"batch"``, ``"group"`` become their masked versions), holes cleared after every
    activation. Weights load strictly from a ``UNet`` with the same arguments and back.

    Masks through the network: each convolution returns its updated mask (a voxel is valid if its window
    holds a valid voxel), the strided convolutions carry it down, the transposed convolutions carry it up
    (valid if a contributing voxel is valid), and the skip concatenation takes the union of the encoder
    and decoder masks (see :mod:`pconv3d.blocks.skip`). Outputs are 0 where no valid voxel is in reach.

    The arguments from ``spatial_dims`` to ``adn_ordering`` are those of ``monai.networks.nets.UNet``; a norm
    without a mask-aware version is refused before any layer is built (see :mod:`pconv3d.networks`).

    Args:
        mask_channel: the input carries the mask as its last channel (``in_channels + 1`` channels in
            all), so single-tensor tools (bundle checks, ONNX, trainers with default ``prepare_batch``,
            sliding-window inference) pass it along unchanged.

    Calling conventions, ``forward(x, mask=None, condition=None) -> Tensor``:

    * ``net(x)``: every voxel valid, zero padding treated as missing;
    * ``net(x, mask)`` or ``net(x, condition=mask)``: ``mask`` is ``(1 or N, 1 or in_channels, *spatial)``,
      bool/integer (nonzero = valid) or floating (weights in [0, 1]); ``condition`` is the keyword
      ``monai.inferers.sliding_window_inference`` windows with the image (padding it adds is 0: missing);
    * ``net(packed)`` with ``mask_channel=True``.

    Whatever the holes hold (NaN and inf too) never changes the output.

    Example::

        >>> net = PartialUNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
        >>> y = net(torch.randn(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32) > 0.2)
        >>> net.load_state_dict(UNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).state_dict())
        <All keys matched successfully>
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        kernel_size: Sequence[int] | int = 3,
        up_kernel_size: Sequence[int] | int = 3,
        num_res_units: int = 0,
        act: tuple | str = Act.PRELU,
        norm: tuple | str = Norm.INSTANCE,
        dropout: float = 0.0,
        bias: bool = True,
        adn_ordering: str = "NDA",
        mask_channel: bool = False,
    ) -> None:
        masked_norm(norm)  # refuses a norm that has no mask-aware version, before any layer is built
        super().__init__(
            spatial_dims, in_channels, out_channels, channels, strides, kernel_size, up_kernel_size,
            num_res_units, act, norm, dropout, bias, adn_ordering,
        )
        self.mask_channel = mask_channel

    def _get_connection_block(self, down_path: nn.Module, up_path: nn.Module, subblock: nn.Module) -> nn.Module:
        return PartialSequential(down_path, PartialSkipConnection(subblock), up_path)

    def _get_down_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        common = dict(
            strides=strides, kernel_size=self.kernel_size, act=self.act, norm=self.norm, dropout=self.dropout,
            bias=self.bias, adn_ordering=self.adn_ordering,
        )
        if self.num_res_units > 0:
            return PartialResidualUnit(
                self.dimensions, in_channels, out_channels, subunits=self.num_res_units, **common
            )
        return PartialConvolution(self.dimensions, in_channels, out_channels, **common)

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        conv = PartialConvolution(
            self.dimensions, in_channels, out_channels, strides=strides, kernel_size=self.up_kernel_size,
            act=self.act, norm=self.norm, dropout=self.dropout, bias=self.bias,
            conv_only=is_top and self.num_res_units == 0, is_transposed=True, adn_ordering=self.adn_ordering,
        )
        if self.num_res_units == 0:
            return conv
        ru = PartialResidualUnit(
            self.dimensions, out_channels, out_channels, strides=1, kernel_size=self.kernel_size, subunits=1,
            act=self.act, norm=self.norm, dropout=self.dropout, bias=self.bias, last_conv_only=is_top,
            adn_ordering=self.adn_ordering,
        )
        return PartialSequential(conv, ru)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, condition: Optional[Tensor] = None) -> Tensor:
        x, mask = resolve_mask(x, mask, condition, self.mask_channel)
        return self.model(x, as_carrier(mask))[0]
