"""Partial counterparts of MONAI's ``ADN`` and ``Convolution`` blocks, on ``(x, mask)`` pairs."""


from collections.abc import Sequence
from typing import List, Optional, Tuple

import torch.nn as nn
from monai.networks.layers.convutils import same_padding, stride_minus_kernel_padding
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_dropout_layer, get_norm_layer
from torch import Tensor

from pconv3d.blocks.factories import PARTIAL_CONV, PARTIAL_CONVTRANS, masked_norm
from pconv3d.masks.apply import apply_mask, mark_clean
from pconv3d.masks.carrier import MaskLike, as_carrier, as_given, first_channel, tensor_of

__all__ = ["PartialADN", "PartialConvolution", "ZERO_PRESERVING_ACTS"]

# activations with f(0) = 0 whatever their parameters: after them a hole that held 0 still holds 0
ZERO_PRESERVING_ACTS = (
    nn.ReLU, nn.ReLU6, nn.PReLU, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Softsign, nn.Tanhshrink, nn.Identity,
)
# dropouts that zero and rescale (alpha dropouts move 0 to a negative value, so holes must be cleared after them)
_ZERO_PRESERVING_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


class PartialADN(nn.Module):
    """MONAI ``ADN`` (activation, dropout, normalization in any order) that keeps holes at zero.

    Same arguments and submodule names (``A``, ``D``, ``N``) as ``monai.networks.blocks.ADN``; the norm is
    made mask-aware with :func:`~pconv3d.blocks.factories.masked_norm` (``"instance"`` becomes
    ``"maskedinstance"``, ...). ``forward(x, mask) -> x``: the norm's statistics use valid voxels only, and
    the holes are cleared at the end, unless the norm is there and every step after it maps 0 to 0 (plain
    dropout does, alpha dropout does not, and the usual activations do, see ``ZERO_PRESERVING_ACTS``): the
    masked norm writes exact zeros into the holes whatever they held.

    Example::

        >>> adn = PartialADN("NDA", in_channels=8, act="prelu", norm="instance", norm_dim=3)
        >>> y = adn(torch.randn(1, 8, 8, 8, 8), torch.ones(1, 1, 8, 8, 8))
    """

    ordering: List[str]
    clear_holes: bool

    def __init__(
        self,
        ordering: str = "NDA",
        in_channels: int | None = None,
        act: tuple | str | None = "RELU",
        norm: tuple | str | None = None,
        norm_dim: int | None = None,
        dropout: tuple | str | float | None = None,
        dropout_dim: int | None = None,
    ) -> None:
        super().__init__()
        ops: dict[str, nn.Module | None] = {"A": None, "D": None, "N": None}
        norm = masked_norm(norm)
        if norm is not None:
            if norm_dim is None and dropout_dim is None:
                raise ValueError("norm_dim or dropout_dim needs to be specified.")
            ops["N"] = get_norm_layer(name=norm, spatial_dims=norm_dim or dropout_dim, channels=in_channels)
        if act is not None:
            ops["A"] = get_act_layer(act)
        if dropout is not None:
            if norm_dim is None and dropout_dim is None:
                raise ValueError("norm_dim or dropout_dim needs to be specified.")
            ops["D"] = get_dropout_layer(name=dropout, dropout_dim=dropout_dim or norm_dim)
        self.ordering = []
        for item in ordering.upper():
            if item not in ops:
                raise ValueError(f"ordering must be a string of {set(ops)}, got {item} in it.")
            op = ops[item]
            if op is not None:
                self.add_module(item, op)
                self.ordering.append(item)
        # the masked norm writes exact zeros into holes whatever they held; only steps after it can undo that
        after_norm = self.ordering[self.ordering.index("N") + 1 :] if "N" in self.ordering else None
        keeps_zeros = (*ZERO_PRESERVING_ACTS, *_ZERO_PRESERVING_DROPOUTS)
        self.clear_holes = after_norm is None or not all(isinstance(ops[item], keeps_zeros) for item in after_norm)

    def forward(self, x: Tensor, mask: MaskLike) -> Tensor:
        for item in self.ordering:
            # hasattr is resolved when scripting, so each branch compiles only where its module exists
            if item == "N":
                if hasattr(self, "N"):
                    x = self.N(x, mask)
            elif item == "A":
                if hasattr(self, "A"):
                    x = self.A(x)
            elif hasattr(self, "D"):
                x = self.D(x)
        return apply_mask(x, mask) if self.clear_holes else mark_clean(x, mask)


class PartialConvolution(nn.Module):
    """MONAI ``Convolution`` (conv, then norm/dropout/activation) on ``(x, mask)`` pairs.

    Same arguments, defaults and submodule names (``conv``, ``adn``) as
    ``monai.networks.blocks.Convolution``, so weights load strictly either way. The convolution is the
    factory's ``"partialconv"`` (:class:`pconv3d.PartialConv3d` ...) or, with ``is_transposed``,
    ``"partialconvtrans"`` (:class:`~pconv3d.blocks.PartialConvTranspose3d` ...); the ADN is
    :class:`PartialADN` (mask-aware norm, holes cleared).

    ``forward(x, mask=None) -> (y, mask_out)``: ``mask`` is ``(1 or N, 1 or in_channels, *spatial)``, any dtype
    (nonzero = valid; floating = weights), ``None`` = all valid with zero padding treated as missing.
    ``mask_out`` is the convolution's updated mask, ``(N, 1, *out)`` (per channel group for a grouped
    convolution given a per-channel mask). ``y`` is exactly 0 where ``mask_out`` is 0 and never depends
    on what the holes of ``x`` hold.

    Example::

        >>> conv = PartialConvolution(3, 1, 8, strides=2, norm=("instance", {"affine": True}))
        >>> y, m = conv(torch.randn(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16) > 0.3)
        >>> y.shape, m.shape
        (torch.Size([2, 8, 8, 8, 8]), torch.Size([2, 1, 8, 8, 8]))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: Sequence[int] | int = 1,
        kernel_size: Sequence[int] | int = 3,
        adn_ordering: str = "NDA",
        act: tuple | str | None = "PRELU",
        norm: tuple | str | None = "INSTANCE",
        dropout: tuple | str | float | None = None,
        dropout_dim: int | None = 1,
        dilation: Sequence[int] | int = 1,
        groups: int = 1,
        bias: bool = True,
        conv_only: bool = False,
        is_transposed: bool = False,
        padding: Sequence[int] | int | None = None,
        output_padding: Sequence[int] | int | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.is_transposed = is_transposed
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        common = dict(
            kernel_size=kernel_size, stride=strides, padding=padding, dilation=dilation, groups=groups, bias=bias
        )
        if is_transposed:
            if output_padding is None:
                output_padding = stride_minus_kernel_padding(1, strides)
            conv_type = Conv[PARTIAL_CONVTRANS, spatial_dims]
            self.conv = conv_type(in_channels, out_channels, output_padding=output_padding, **common)
        else:
            # per-channel masks (e.g. a sliding-window condition shaped like the image) are counted exactly
            self.conv = Conv[PARTIAL_CONV, spatial_dims](in_channels, out_channels, multi_channel=True, **common)
        if conv_only or (act is None and norm is None and dropout is None):
            return
        self.adn = PartialADN(
            ordering=adn_ordering,
            in_channels=out_channels,
            act=act,
            norm=norm,
            norm_dim=spatial_dims,
            dropout=dropout,
            dropout_dim=dropout_dim,
        )

    def forward(self, x: Tensor, mask: Optional[MaskLike] = None) -> Tuple[Tensor, MaskLike]:
        m = as_carrier(mask)
        y = self.conv(x, m)
        mask_out = self.conv.updated_mask(x, m)
        given = tensor_of(mask)
        if given is None or given.shape[1] == 1 or self.conv.groups == 1:
            mask_out = first_channel(mask_out)  # every output channel shares one mask: keep a single channel
        y = mark_clean(y, mask_out)  # windows without a valid voxel are exactly 0
        if hasattr(self, "adn"):
            y = self.adn(y, mask_out)
        return y, as_given(mask_out, mask)
