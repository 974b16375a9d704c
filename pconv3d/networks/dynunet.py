"""``PartialDynUNet``: MONAI's ``DynUNet`` built from partial blocks."""

from collections.abc import Sequence
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.functional import interpolate

from pconv3d.blocks import (
    PartialUnetBasicBlock,
    PartialUnetOutBlock,
    PartialUnetResBlock,
    PartialUnetUpBlock,
    masked_norm,
)
from pconv3d.masks.carrier import MaskLike, as_carrier
from pconv3d.networks.utils import resolve_mask

__all__ = ["PartialDynUNet", "PartialDynUNetSkipLayer"]


class PartialDynUNetSkipLayer(nn.Module):
    """One level of the DynUNet topology on ``(x, mask)`` pairs (MONAI ``DynUNetSkipLayer``'s structure).

    Unlike MONAI's, it keeps no tensors between calls: a supervision head's output is appended to the
    ``heads`` list the caller passes in (only in training mode, the only mode that returns them).
    ``next_layer`` is another skip layer or, at the bottom, the bottleneck block.
    """

    __constants__ = ["next_is_bottleneck"]

    def __init__(
        self,
        index: int,
        downsample: nn.Module,
        upsample: nn.Module,
        next_layer: nn.Module,
        super_head: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.downsample = downsample
        self.next_layer = next_layer
        self.upsample = upsample
        self.super_head = super_head
        self.index = index
        self.next_is_bottleneck = not isinstance(next_layer, PartialDynUNetSkipLayer)

    def forward(self, x: Tensor, mask: Optional[MaskLike], heads: List[Tensor]) -> Tuple[Tensor, MaskLike]:
        downout, downmask = self.downsample(x, mask)
        # a constant: scripting compiles only the call that matches next_layer's signature
        if self.next_is_bottleneck:
            nextout, nextmask = self.next_layer(downout, downmask)
        else:
            nextout, nextmask = self.next_layer(downout, downmask, heads)
        upout, upmask = self.upsample(nextout, downout, nextmask, downmask)
        if self.super_head is not None and self.training:
            heads.insert(0, self.super_head(upout, upmask)[0])  # deeper levels appended first: keep shallow first
        return upout, upmask


class PartialDynUNet(nn.Module):
    """Drop-in for ``monai.networks.nets.DynUNet`` (same arguments and ``state_dict`` keys) taking a mask.

    Partial blocks throughout (:mod:`pconv3d.blocks.dynunet_block`); with ``deep_supervision`` training
    mode returns MONAI's stacked tensor ``(N, 1 + deep_supr_num, C, *spatial)``, the heads interpolated
    (nearest) to the output size. A norm without a mask-aware version is refused before any layer is built
    (see :mod:`pconv3d.networks`). Calling conventions as
    :class:`~pconv3d.networks.PartialUNet`: ``forward(x, mask=None, condition=None) -> Tensor``.

    Example::

        >>> net = PartialDynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
        ...                      filters=[8, 16, 32], deep_supervision=True)
        >>> y = net(torch.randn(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32, 32) > 0.2)   # (2, 2, 2, 32, 32, 32)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[Sequence[int] | int],
        strides: Sequence[Sequence[int] | int],
        upsample_kernel_size: Sequence[Sequence[int] | int],
        filters: Sequence[int] | None = None,
        dropout: tuple | str | float | None = None,
        norm_name: tuple | str = ("INSTANCE", {"affine": True}),
        act_name: tuple | str = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        res_block: bool = False,
        trans_bias: bool = False,
    ):
        masked_norm(norm_name)  # refuses a norm that has no mask-aware version, before any layer is built
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.strides = strides
        self.upsample_kernel_size = upsample_kernel_size
        self.norm_name = norm_name
        self.act_name = act_name
        self.dropout = dropout
        self.trans_bias = trans_bias
        self._check_kernel_stride()
        if filters is not None:
            if len(filters) < len(strides):
                raise ValueError("length of filters should be no less than the length of strides.")
            self.filters = list(filters[: len(strides)])
        else:
            self.filters = [min(2 ** (5 + i), 320 if spatial_dims == 3 else 512) for i in range(len(strides))]
        block = PartialUnetResBlock if res_block else PartialUnetBasicBlock
        common = dict(spatial_dims=spatial_dims, norm_name=norm_name, act_name=act_name, dropout=dropout)
        f, k, s = self.filters, kernel_size, strides
        self.input_block = block(in_channels=in_channels, out_channels=f[0], kernel_size=k[0], stride=s[0], **common)
        self.downsamples = nn.ModuleList(
            [
                block(in_channels=f[i - 1], out_channels=f[i], kernel_size=k[i], stride=s[i], **common)
                for i in range(1, len(s) - 1)
            ]
        )
        self.bottleneck = block(in_channels=f[-2], out_channels=f[-1], kernel_size=k[-1], stride=s[-1], **common)
        # MONAI lists the up blocks deepest first
        self.upsamples = nn.ModuleList(
            [
                PartialUnetUpBlock(
                    in_channels=f[i], out_channels=f[i - 1], kernel_size=k[i], stride=s[i],
                    upsample_kernel_size=upsample_kernel_size[i - 1], trans_bias=trans_bias, **common,
                )
                for i in range(len(s) - 1, 0, -1)
            ]
        )
        self.output_block = PartialUnetOutBlock(spatial_dims, f[0], out_channels, dropout=dropout)
        self.deep_supervision = deep_supervision
        self.deep_supr_num = deep_supr_num
        heads: List[Optional[nn.Module]] = [None] * (len(s) - 1)
        if deep_supervision:
            if not 1 <= deep_supr_num < len(s) - 1:
                raise ValueError("deep_supr_num should be larger than 0 and less than the number of up sample layers.")
            self.deep_supervision_heads = nn.ModuleList(
                [
                    PartialUnetOutBlock(spatial_dims, f[i + 1], out_channels, dropout=dropout)
                    for i in range(deep_supr_num)
                ]
            )
            heads[1 : 1 + deep_supr_num] = list(self.deep_supervision_heads)
        self.apply(self.initialize_weights)

        # the recursive skip layers share the blocks above (MONAI's state_dict lists them under both names)
        layer: nn.Module = self.bottleneck
        downs = [self.input_block] + list(self.downsamples)
        ups = list(self.upsamples)[::-1]
        for i in range(len(downs) - 1, -1, -1):
            layer = PartialDynUNetSkipLayer(i, downs[i], ups[i], layer, super_head=heads[i])
        self.skip_layers = layer

    def _check_kernel_stride(self) -> None:
        kernels, strides = self.kernel_size, self.strides
        if len(kernels) != len(strides) or len(kernels) < 3:
            raise ValueError("length of kernel_size and strides should be the same, and no less than 3.")
        for idx, (kernel, stride) in enumerate(zip(kernels, strides)):
            if not isinstance(kernel, int) and len(kernel) != self.spatial_dims:
                raise ValueError(f"length of kernel_size in block {idx} should be the same as spatial_dims.")
            if not isinstance(stride, int) and len(stride) != self.spatial_dims:
                raise ValueError(f"length of stride in block {idx} should be the same as spatial_dims.")

    @staticmethod
    def initialize_weights(module: nn.Module) -> None:
        """MONAI's DynUNet initialization (partial layers subclass the torch convolutions)."""
        if isinstance(module, (nn.Conv3d, nn.Conv2d, nn.ConvTranspose3d, nn.ConvTranspose2d)):
            module.weight = nn.init.kaiming_normal_(module.weight, a=0.01)
            if module.bias is not None:
                module.bias = nn.init.constant_(module.bias, 0)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, condition: Optional[Tensor] = None) -> Tensor:
        mask = resolve_mask(mask, condition)
        heads: List[Tensor] = []
        out, out_mask = self.skip_layers(x, as_carrier(mask), heads)
        out = self.output_block(out, out_mask)[0]
        if self.training and self.deep_supervision:
            out_all = [out]
            for feature_map in heads:
                out_all.append(interpolate(feature_map, out.shape[2:]))
            return torch.stack(out_all, dim=1)
        return out
