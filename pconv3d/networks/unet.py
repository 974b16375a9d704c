"""``PartialUNet``: MONAI's ``UNet`` built from partial blocks, whose predictions ignore missing voxels."""

from collections.abc import Callable, Sequence
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
from pconv3d.masks.carrier import as_carrier
from pconv3d.networks.utils import resolve_mask

__all__ = ["PartialUNet", "unet_down_layer", "unet_up_layer"]


def _block_args(net: UNet) -> dict:
    """The block arguments MONAI's ``UNet`` gives every layer."""
    return dict(act=net.act, norm=net.norm, dropout=net.dropout, bias=net.bias, adn_ordering=net.adn_ordering)


def unet_down_layer(
    net: UNet,
    conv_type: Callable[..., nn.Module],
    unit_type: Callable[..., nn.Module],
    in_channels: int,
    out_channels: int,
    strides: int,
) -> nn.Module:
    """An encoder (or bottom) layer of ``net`` built as MONAI's ``UNet._get_down_layer`` builds it, from other
    blocks: a ``unit_type`` of ``num_res_units`` subunits if ``num_res_units > 0``, else a ``conv_type``.

    Args:
        net: the ``UNet`` (or subclass) the layer is for: its ``kernel_size``, ``num_res_units``, ``act``,
            ``norm``, ``dropout``, ``bias`` and ``adn_ordering``.
        conv_type: MONAI's ``Convolution`` or a block with its arguments.
        unit_type: MONAI's ``ResidualUnit`` or a block with its arguments.
        in_channels: number of input channels.
        out_channels: number of output channels.
        strides: convolution stride.

    Example::

        >>> net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=2)
        >>> blocks = monai.networks.blocks
        >>> layer = unet_down_layer(net, blocks.Convolution, blocks.ResidualUnit, 1, 4, 2)
        >>> list(layer.state_dict()) == list(net.model[0].state_dict())
        True
    """
    if net.num_res_units > 0:
        return unit_type(net.dimensions, in_channels, out_channels, strides=strides, kernel_size=net.kernel_size,
                         subunits=net.num_res_units, **_block_args(net))
    return conv_type(net.dimensions, in_channels, out_channels, strides=strides, kernel_size=net.kernel_size,
                     **_block_args(net))


def unet_up_layer(
    net: UNet,
    conv_type: Callable[..., nn.Module],
    unit_type: Callable[..., nn.Module],
    in_channels: int,
    out_channels: int,
    strides: int,
    is_top: bool,
    sequential_type: Callable[..., nn.Module] = nn.Sequential,
) -> nn.Module:
    """A decoder layer of ``net`` built as MONAI's ``UNet._get_up_layer`` builds it, from other blocks: a
    transposed ``conv_type`` (without norm and activation at the top if ``num_res_units == 0``), followed, if
    ``num_res_units > 0``, by a one-subunit ``unit_type`` (its last convolution alone at the top), the two in a
    ``sequential_type``.

    Args:
        net: the ``UNet`` (or subclass) the layer is for: its ``up_kernel_size``, ``kernel_size``,
            ``num_res_units``, ``act``, ``norm``, ``dropout``, ``bias`` and ``adn_ordering``.
        conv_type: MONAI's ``Convolution`` or a block with its arguments.
        unit_type: MONAI's ``ResidualUnit`` or a block with its arguments.
        in_channels: number of input channels.
        out_channels: number of output channels.
        strides: convolution stride.
        is_top: the layer writes the network's output.
        sequential_type: ``torch.nn.Sequential`` or a container called the same way.

    Example::

        >>> net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1)
        >>> blocks = monai.networks.blocks
        >>> layer = unet_up_layer(net, blocks.Convolution, blocks.ResidualUnit, 4 + 8, 2, 2, is_top=True)
        >>> [type(block).__name__ for block in layer], list(layer.state_dict()) == list(net.model[2].state_dict())
        (['Convolution', 'ResidualUnit'], True)
    """
    conv = conv_type(net.dimensions, in_channels, out_channels, strides=strides, kernel_size=net.up_kernel_size,
                     conv_only=is_top and net.num_res_units == 0, is_transposed=True, **_block_args(net))
    if net.num_res_units == 0:
        return conv
    unit = unit_type(net.dimensions, out_channels, out_channels, strides=1, kernel_size=net.kernel_size,
                     subunits=1, last_conv_only=is_top, **_block_args(net))
    return sequential_type(conv, unit)


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

    Calling conventions, ``forward(x, mask=None, condition=None) -> Tensor``:

    * ``net(x)``: every voxel valid, zero padding treated as missing;
    * ``net(x, mask)`` or ``net(x, condition=mask)``: ``mask`` is ``(1 or N, 1 or in_channels, *spatial)``,
      bool/integer (nonzero = valid) or floating (weights in [0, 1]); ``condition`` is the keyword
      ``monai.inferers.sliding_window_inference`` windows with the image (padding it adds is 0: missing).

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
    ) -> None:
        masked_norm(norm)  # refuses a norm that has no mask-aware version, before any layer is built
        super().__init__(
            spatial_dims, in_channels, out_channels, channels, strides, kernel_size, up_kernel_size,
            num_res_units, act, norm, dropout, bias, adn_ordering,
        )

    def _get_connection_block(self, down_path: nn.Module, up_path: nn.Module, subblock: nn.Module) -> nn.Module:
        return PartialSequential(down_path, PartialSkipConnection(subblock), up_path)

    def _get_down_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        return unet_down_layer(self, PartialConvolution, PartialResidualUnit, in_channels, out_channels, strides)

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        return unet_up_layer(self, PartialConvolution, PartialResidualUnit, in_channels, out_channels, strides, is_top,
                             PartialSequential)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, condition: Optional[Tensor] = None) -> Tensor:
        mask = resolve_mask(mask, condition)
        return self.model(x, as_carrier(mask))[0]
