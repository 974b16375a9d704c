"""``PartialSegResNet``: MONAI's ``SegResNet`` built from partial blocks, with a mask per input modality."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch.nn as nn
from monai.networks.nets import SegResNet
from monai.utils import InterpolateMode, UpsampleMode
from torch import Tensor

from pconv3d.blocks import PartialIdentity, PartialSequential, PartialUpSample, masked_norm
from pconv3d.blocks.segresnet_block import PartialNormActConv, PartialResBlock, partial_conv_layer
from pconv3d.masks.apply import mark_clean
from pconv3d.masks.carrier import as_carrier, mask_union
from pconv3d.networks.utils import resolve_mask

__all__ = ["PartialSegResNet"]


class PartialSegResNet(SegResNet):
    """Drop-in for ``monai.networks.nets.SegResNet`` (same arguments, same ``state_dict`` keys) that takes a
    mask, one channel per input modality if need be: a missing MR sequence is a missing channel.

    The first convolution counts valid voxels per input channel (a multi-channel mask), every later layer
    works on the single-channel mask it returns (a voxel is valid if any modality had data in reach); norms
    are masked, residual sums and skip additions take the union of their masks, and upsampling carries the
    mask in every ``upsample_mode`` (``"nontrainable"``, ``"deconv"``, ``"deconvgroup"``, ``"pixelshuffle"``;
    see :class:`~pconv3d.blocks.PartialUpSample`). Weights load strictly from a ``SegResNet`` with the same
    arguments (e.g. the BraTS bundle's) and back. A norm without a mask-aware version is refused before any
    layer is built (see :mod:`pconv3d.networks`). The arguments are those of ``monai.networks.nets.SegResNet``.

    ``forward(x, mask=None, condition=None) -> Tensor``: ``mask`` ``(1 or N, 1 or in_channels, *spatial)``,
    bool/integer or floating weights; ``condition`` is the keyword MONAI's sliding-window inference
    windows with the image; ``None``: every voxel valid, zero padding missing.

    Example::

        >>> net = PartialSegResNet(3, init_filters=8, in_channels=4, out_channels=3, blocks_down=(1, 2), blocks_up=(1,))
        >>> mask = torch.ones(1, 4, 16, 16, 16); mask[:, 2] = 0   # the third sequence was not acquired
        >>> net(torch.randn(1, 4, 16, 16, 16), mask).shape
        torch.Size([1, 3, 16, 16, 16])
        >>> net.load_state_dict(SegResNet(3, 8, 4, 3, blocks_down=(1, 2), blocks_up=(1,)).state_dict())
        <All keys matched successfully>
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        init_filters: int = 8,
        in_channels: int = 1,
        out_channels: int = 2,
        dropout_prob: float | None = None,
        act: tuple | str = ("RELU", {"inplace": True}),
        norm: tuple | str = ("GROUP", {"num_groups": 8}),
        norm_name: str = "",
        num_groups: int = 8,
        use_conv_final: bool = True,
        blocks_down: tuple = (1, 2, 2, 4),
        blocks_up: tuple = (1, 1, 1),
        upsample_mode: UpsampleMode | str = UpsampleMode.NONTRAINABLE,
    ) -> None:
        if not norm_name:  # MONAI makes a (deprecated) norm_name a group norm
            masked_norm(norm)  # refuses a norm that has no mask-aware version, before any layer is built
        super().__init__(spatial_dims, init_filters, in_channels, out_channels, dropout_prob, act, norm, norm_name,
                         num_groups, use_conv_final, blocks_down, blocks_up, upsample_mode)
        self.convInit = partial_conv_layer(self.spatial_dims, self.in_channels, self.init_filters)

    def _make_down_layers(self) -> nn.ModuleList:
        layers = nn.ModuleList()
        for i, item in enumerate(self.blocks_down):
            channels = self.init_filters * 2**i
            pre = partial_conv_layer(self.spatial_dims, channels // 2, channels, stride=2) if i > 0 else PartialIdentity()
            layers.append(PartialSequential(
                pre, *[PartialResBlock(self.spatial_dims, channels, norm=self.norm, act=self.act) for _ in range(item)]))
        return layers

    def _make_up_layers(self) -> tuple[nn.ModuleList, nn.ModuleList]:
        up_layers, up_samples = nn.ModuleList(), nn.ModuleList()
        n_up = len(self.blocks_up)
        for i in range(n_up):
            channels = self.init_filters * 2 ** (n_up - i)
            blocks = [PartialResBlock(self.spatial_dims, channels // 2, norm=self.norm, act=self.act)
                      for _ in range(self.blocks_up[i])]
            up_layers.append(PartialSequential(*blocks) if blocks else PartialSequential(PartialIdentity()))
            up_samples.append(PartialSequential(
                partial_conv_layer(self.spatial_dims, channels, channels // 2, kernel_size=1),
                PartialUpSample(self.spatial_dims, channels // 2, channels // 2, scale_factor=2, mode=self.upsample_mode,
                                interp_mode=InterpolateMode.LINEAR, align_corners=False)))
        return up_layers, up_samples

    def _make_final_conv(self, out_channels: int) -> nn.Module:
        return PartialNormActConv(self.spatial_dims, self.init_filters, out_channels, self.norm, self.act)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, condition: Optional[Tensor] = None) -> Tensor:
        mask = resolve_mask(mask, condition)
        x, m = self.convInit(x, as_carrier(mask))
        if self.dropout_prob is not None:
            x = self.dropout(x)
        skips: List[Tuple[Tensor, Tensor]] = []
        for down in self.down_layers:
            x, m = down(x, m)
            skips.append((x, m))
        skips.reverse()
        i = 1
        for up, layer in zip(self.up_samples, self.up_layers):
            x, m = up(x, m)
            skip, skip_mask = skips[i]
            m = mask_union(m, skip_mask)
            x, m = layer(mark_clean(x + skip, m), m)
            i += 1
        if self.use_conv_final:
            x, m = self.conv_final(x, m)
        return x
