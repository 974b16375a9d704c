"""Partial convolution (Liu et al., 2018), exact and stateless, written once for 1, 2 and 3 dimensions.

For each window with mask sum ``S > 0`` over ``winsize`` mask elements::

    out = conv(X * M, W) * winsize / S + b          and 0 where S == 0;      mask_out = [S > 0]

``PartialConv1d/2d/3d`` subclass ``nn.Conv1d/2d/3d``: same constructor, parameters and ``state_dict``
keys, plus ``multi_channel`` and ``return_mask`` (the names of NVIDIA's reference implementation).
"""


from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from pconv3d.mask_stats import MaskStats, cached_stats, compute_stats, renormalize, stat_dtype
from pconv3d.masking import apply_mask

__all__ = ["PartialConv1d", "PartialConv2d", "PartialConv3d"]

_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


class _PartialConvNd:
    """Partial-convolution behaviour shared by the 1d/2d/3d classes (mixed in before ``nn.ConvNd``).

    Args:
        *args, **kwargs: exactly those of ``nn.ConvNd`` (in_channels, out_channels, kernel_size, stride,
            padding, dilation, groups, bias, padding_mode, device, dtype).
        multi_channel: masks may have one channel per input channel; windows then count every
            (channel, voxel) element, per group when ``groups > 1``, and the returned mask has
            ``out_channels`` channels. Single-channel masks are accepted too.
        return_mask: ``forward`` returns ``(output, updated_mask)`` instead of ``output``.

    ``forward(input, mask_in=None)``: ``mask_in`` is (1 or N, 1 or C_in, *spatial), bool/integer (binary,
    nonzero = valid) or floating (weights in [0, 1]). ``None`` treats zero padding as missing
    (partial-convolution-based padding): interior outputs equal ``nn.ConvNd``, borders are renormalized.
    Other padding modes pad the mask like the input: padded voxels are valid where their source is.
    Whatever holes contain (NaN and inf included) never reaches the output. The returned mask has the
    input's dtype and shape (N, 1, *out), or (N, out_channels, *out) with ``multi_channel``.
    """

    __constants__ = nn.Conv3d.__constants__ + ["multi_channel", "return_mask"]
    _stat_padding: List[int]
    _stat_pre_pad: List[int]
    _stat_pad_mode: str
    _no_padding: bool

    def __init__(self, *args, multi_channel: bool = False, return_mask: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.multi_channel = multi_channel
        self.return_mask = return_mask
        # window geometry of the mask statistics, fixed at construction like nn.ConvNd's own padding
        pad = list(self._reversed_padding_repeated_twice)
        symmetric = all(pad[i] == pad[i + 1] for i in range(0, len(pad), 2))
        if self.padding_mode == "zeros" and symmetric:
            self._stat_padding = pad[::-2]
            self._stat_pre_pad = []
        else:
            self._stat_padding = [0] * len(self.kernel_size)
            self._stat_pre_pad = pad
        self._stat_pad_mode = _PAD_MODES[self.padding_mode]
        self._no_padding = not any(pad)

    def forward(self, input: Tensor, mask_in: Optional[Tensor] = None):
        out, mask = self.partial_forward(input, mask_in)
        if self.return_mask:
            return out, mask
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", multi_channel={self.multi_channel}, return_mask={self.return_mask}"

    def _check_mask(self, input: Tensor, mask: Tensor) -> None:
        n, c = input.shape[0], input.shape[1]
        ok_channels = mask.shape[1] == 1 or (self.multi_channel and mask.shape[1] == c)
        if mask.dim() != input.dim() or mask.shape[0] not in (1, n) or not ok_channels or mask.shape[2:] != input.shape[2:]:
            channels = f"1 or {c}" if self.multi_channel else "1"
            raise ValueError(
                f"partial convolution: mask_in must have shape (1 or {n}, {channels}, *{list(input.shape[2:])}) "
                f"for input of shape {list(input.shape)}; got mask of shape {list(mask.shape)}"
            )

    @torch.jit.unused
    def _cached_stats(self, mask: Optional[Tensor], spatial: List[int], groups: int, dtype: torch.dtype, device: torch.device) -> MaskStats:
        return cached_stats(mask, spatial, list(self.kernel_size), list(self.stride), self._stat_padding,
                            list(self.dilation), self._stat_pre_pad, self._stat_pad_mode, groups, dtype, device)

    def _stats(self, mask: Optional[Tensor], input: Tensor, groups: int) -> MaskStats:
        spatial = list(input.shape[2:])
        dtype = stat_dtype(input.dtype)
        if torch.jit.is_scripting():
            return compute_stats(mask, spatial, list(self.kernel_size), list(self.stride), self._stat_padding,
                                 list(self.dilation), self._stat_pre_pad, self._stat_pad_mode, groups, dtype, input.device)
        return self._cached_stats(mask, spatial, groups, dtype, input.device)

    def partial_forward(self, input: Tensor, mask_in: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Partial convolution of ``input`` under ``mask_in``; always returns ``(output, updated_mask)``."""
        unbatched = input.dim() == len(self.kernel_size) + 1
        if unbatched:
            input = input.unsqueeze(0)
            if mask_in is not None:
                mask_in = mask_in.unsqueeze(0)
        if mask_in is not None:
            self._check_mask(input, mask_in)
        groups = self.groups if mask_in is not None and mask_in.shape[1] > 1 else 1
        ratio, valid = self._stats(mask_in, input, groups)
        if groups > 1 and self.out_channels > groups:
            # each output channel takes the statistics of its group
            ratio = ratio.repeat_interleave(self.out_channels // groups, 1)
            valid = valid.repeat_interleave(self.out_channels // groups, 1)
        if mask_in is None and self._no_padding:
            out = self._conv_forward(input, self.weight, self.bias)
        else:
            # in place: the conv output is ours, and the conv's backward does not need it
            out = renormalize(self._conv_forward(apply_mask(input, mask_in), self.weight, None), MaskStats(ratio, valid), self.bias)
        mask_channels = self.out_channels if self.multi_channel else 1
        mask_out = valid.to(input.dtype).expand([out.shape[0], mask_channels] + list(out.shape[2:]))
        if unbatched:
            return out.squeeze(0), mask_out.squeeze(0)
        return out, mask_out


class PartialConv1d(_PartialConvNd, nn.Conv1d):
    """1D partial convolution; see :class:`_PartialConvNd` for the extra arguments.

    Example::

        >>> conv = PartialConv1d(2, 4, 3, padding=1, return_mask=True)
        >>> out, mask = conv(torch.randn(1, 2, 10), torch.ones(1, 1, 10))
    """


class PartialConv2d(_PartialConvNd, nn.Conv2d):
    """2D partial convolution; see :class:`_PartialConvNd` for the extra arguments.

    Example::

        >>> conv = PartialConv2d(3, 8, 3, padding=1)
        >>> out = conv(torch.randn(1, 3, 16, 16), (torch.rand(1, 1, 16, 16) > 0.3))
    """


class PartialConv3d(_PartialConvNd, nn.Conv3d):
    """3D partial convolution; see :class:`_PartialConvNd` for the extra arguments.

    Example::

        >>> conv = PartialConv3d(1, 8, 3, padding=1, return_mask=True)
        >>> out, mask = conv(torch.randn(2, 1, 16, 16, 16), torch.ones(2, 1, 16, 16, 16))
    """
