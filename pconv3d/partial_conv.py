"""Partial convolution (Liu et al., 2018), exact and stateless, written once for 1, 2 and 3 dimensions.

For each window with mask sum ``S > 0`` over ``winsize`` mask elements::

    out = conv(X * M, W) * winsize / S + b          and 0 where S == 0;      mask_out = [S > 0]

``PartialConv1d/2d/3d`` subclass ``nn.Conv1d/2d/3d``: same constructor, parameters and ``state_dict``
keys, plus ``multi_channel`` and ``return_mask`` (the names of NVIDIA's reference implementation).
:class:`PartialConvBase` is what they share with the partial transposed convolutions
(:mod:`pconv3d.blocks.conv_transpose`), as torch's ``_ConvTransposeNd`` shares ``_ConvNd``.
"""


import weakref
from contextlib import nullcontext
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from pconv3d.mask import Mask, as_given, tensor_of
from pconv3d.mask_stats import MaskStats, Windows, full_stats, renormalize, stat_dtype, window_stats
from pconv3d.masking import apply_mask

__all__ = ["PartialConvBase", "PartialConv1d", "PartialConv2d", "PartialConv3d"]

_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


class PartialConvBase:
    """The partial-convolution operator on top of a torch convolution (mixed in before ``nn.ConvNd`` or
    ``nn.ConvTransposeNd``): masking, statistics, renormalization and the returned mask.

    Subclasses build ``self.windows`` (:class:`~pconv3d.mask_stats.Windows`) and define ``_conv`` (the
    bias-free convolution) and ``_plain_when_unmasked`` (no mask and no padding: the plain layer).

    ``forward(input, mask_in=None)``: ``mask_in`` is a tensor, a :class:`~pconv3d.mask.Mask` or ``None``
    (see the subclasses); returns ``output``, or ``(output, mask_out)`` with ``return_mask``, where
    ``mask_out`` is a carrier if ``mask_in`` was one, else a tensor; it may be a broadcast view, as
    ``expand`` gives (clone it before writing into it). Blocks call the layer as a module
    (so that hooks see it) and then take its mask from :meth:`updated_mask`; with a carrier the
    statistics are computed once for both.
    """

    __constants__ = nn.Conv3d.__constants__ + ["multi_channel", "return_mask", "_plain_when_unmasked"]
    windows: Windows
    multi_channel: bool
    return_mask: bool
    _plain_when_unmasked: bool

    def forward(self, input: Tensor, mask_in: Optional[Tensor] = None):
        out, mask = self._partial_forward(input, mask_in)
        if self.return_mask:
            return out, mask
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", return_mask={self.return_mask}"

    def _conv(self, x: Tensor) -> Tensor:
        """The bias-free convolution."""
        raise NotImplementedError

    def _check_mask(self, input: Tensor, mask: Tensor) -> None:
        n, c = input.shape[0], input.shape[1]
        ok_channels = mask.shape[1] == 1 or (self.multi_channel and mask.shape[1] == c)
        if mask.dim() != input.dim() or mask.shape[0] not in (1, n) or not ok_channels or mask.shape[2:] != input.shape[2:]:
            channels = f"1 or {c}" if self.multi_channel else "1"
            kind = "partial transposed convolution" if self.windows.transposed else "partial convolution"
            raise ValueError(
                f"{kind}: mask_in must have shape (1 or {n}, {channels}, *{list(input.shape[2:])}) "
                f"for input of shape {list(input.shape)}; got mask of shape {list(mask.shape)}"
            )

    def _groups(self, mask: Optional[Tensor]) -> int:
        """Mask channel groups counted apart: the convolution's groups for a per-channel mask, else 1."""
        return self.groups if mask is not None and mask.shape[1] > 1 else 1

    def _mask_out(self, input: Tensor, stats: MaskStats, groups: int) -> Tuple[MaskStats, Tensor]:
        """The statistics per output channel where groups differ, and the returned mask tensor."""
        ratio, valid = stats
        if groups > 1 and self.out_channels > groups:
            # each output channel takes the statistics of its group
            ratio = ratio.repeat_interleave(self.out_channels // groups, 1)
            valid = valid.repeat_interleave(self.out_channels // groups, 1)
        out_spatial = list(valid.shape[2:])
        mask_channels = self.out_channels if self.multi_channel else 1
        mask_out = valid.to(input.dtype).expand([input.shape[0], mask_channels] + out_spatial)
        return MaskStats(ratio, valid), mask_out

    def _step(self, input: Tensor, mask_in: Optional[Tensor], hand_over: bool = False) -> Tuple[MaskStats, bool, Tensor]:
        """Statistics, whether they are valid everywhere, and the mask to return (a carrier in eager mode;
        ``hand_over``: to the caller of :meth:`updated_mask`, see :class:`_Step`)."""
        if torch.jit.is_scripting():
            if mask_in is not None:
                self._check_mask(input, mask_in)
            groups = self._groups(mask_in)
            stats = self.windows.stats(mask_in, list(input.shape[2:]), groups, stat_dtype(input.dtype), input.device)
            stats, mask_out = self._mask_out(input, stats, groups)
            return stats, False, mask_out
        step = mask_in.memo(self._step_key(input, mask_in), self._step_eager, input, mask_in)
        return step.stats, step.everywhere, step.hand_over() if hand_over else step.carrier()

    def _step_key(self, input: Tensor, mask_in: Mask) -> tuple:
        """What :meth:`_step` depends on besides the carrier: layers with equal keys share its result."""
        mask_channels = self.out_channels if self.multi_channel else 1
        return self.windows.key, tuple(input.shape[2:]), self._groups(mask_in.tensor), input.dtype, input.shape[0], mask_channels

    def _step_eager(self, input: Tensor, mask_in: Mask) -> "_Step":
        mask = mask_in.tensor
        if mask is not None:
            self._check_mask(input, mask)
        groups = self._groups(mask)
        spatial = list(input.shape[2:])
        # an all-valid mask has the statistics of no mask, and a valid output where every window reaches
        # the image: known from the geometry (full_stats), never read from the data
        full = groups == 1 and mask_in.all_valid
        device = input.device
        dtype = stat_dtype(input.dtype)
        # statistics in their own dtype, never autocast's (no gradient either: the mask is detached)
        autocast = torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)
        with torch.autocast(device.type, enabled=False) if autocast else nullcontext():
            stats = None
            if full and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
                key = (self.windows.key, tuple(spatial), dtype, device)
                stats = mask_in.call_memo(key, full_stats, self.windows, spatial, dtype, device)
            everywhere = stats is not None
            if stats is None:
                counted = None if full else mask_in.memo("counted", _counted, mask_in)  # once for every geometry
                stats = window_stats(self.windows, counted, spatial, groups, dtype, device)
                everywhere = Mask(stats.valid, binary=True).all_valid  # read on the CPU only, else unknown
        stats, mask_out = self._mask_out(input, stats, groups)
        return _Step(stats, everywhere, mask_out, mask_in)

    def _partial_forward(self, input: Tensor, mask_in: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Partial convolution of ``input`` under ``mask_in``; returns ``(output, mask_out)``."""
        unbatched = input.dim() == len(self.kernel_size) + 1
        given = mask_in
        if unbatched:
            input = input.unsqueeze(0)
            mask_t = tensor_of(mask_in)
            mask_in = None if mask_t is None else mask_t.unsqueeze(0)
        if not torch.jit.is_scripting():
            mask_in = Mask.of(mask_in)
        stats, everywhere, mask_out = self._step(input, mask_in)
        if self._plain_when_unmasked and tensor_of(mask_in) is None:
            out = self._conv_forward(input, self.weight, self.bias)
        else:
            # in place: the conv output is ours, and the conv's backward does not need it
            out = renormalize(self._conv(apply_mask(input, mask_in)), stats, self.bias, everywhere)
        out = _vouch(out, mask_out)
        if unbatched:
            mask_t = tensor_of(mask_out)
            assert mask_t is not None
            return out.squeeze(0), mask_t.squeeze(0)
        return out, as_given(mask_out, given)

    def updated_mask(self, input: Tensor, mask_in: Optional[Tensor] = None) -> Tensor:
        """The mask ``forward(input, mask_in)`` returns, without convolving; a carrier for a carrier. How
        blocks read a layer's mask whatever its ``return_mask``: after ``forward`` with the same
        :class:`~pconv3d.mask.Mask` it costs nothing, and it is the carrier that vouches for the output."""
        given = mask_in
        if not torch.jit.is_scripting():
            mask_in = Mask.of(mask_in)
        return as_given(self._step(input, mask_in, True)[2], given)


class _Step:
    """What a layer computes for one carrier, kept by that carrier (:meth:`Mask.memo`). The carrier of the
    mask it returns is held until :meth:`hand_over` gives it to the caller of ``updated_mask`` (a block),
    and only referred to weakly after that, so that a call's carriers do not keep the masks and
    statistics of every later layer alive."""

    __slots__ = ("stats", "everywhere", "mask_out", "_source", "_held", "_handed")

    def __init__(self, stats: MaskStats, everywhere: bool, mask_out: Tensor, source: Mask) -> None:
        self.stats, self.everywhere, self.mask_out = stats, everywhere, mask_out
        self._source = weakref.ref(source)  # the carrier that keeps this step
        self._held: Optional[Mask] = None
        self._handed: Optional[weakref.ref] = None

    def carrier(self) -> Mask:
        carrier = self._held or (None if self._handed is None else self._handed())
        if carrier is None:
            source = self._source()
            following = Mask if source is None else source.then
            carrier = self._held = following(self.mask_out, binary=True, all_valid=self.everywhere)
        return carrier

    def hand_over(self) -> Mask:
        carrier = self.carrier()
        self._held, self._handed = None, weakref.ref(carrier)
        return carrier


def _counted(mask: Mask) -> Optional[Tensor]:
    """The mask as its windows are counted: a floating one known to hold only 0 and 1 as bool, which
    :meth:`~pconv3d.mask_stats.Windows.stats` counts in bytes."""
    t = mask.tensor
    return t != 0 if t is not None and t.is_floating_point() and mask.binary else t


def _vouch(out: Tensor, mask_out: Tensor) -> Tensor:
    """A layer's output is exactly 0 where its mask is: the carrier may vouch for it."""
    if torch.jit.is_scripting():
        return out
    return mask_out.vouch(out)


class _PartialConvNd(PartialConvBase):
    """Partial-convolution behaviour shared by the 1d/2d/3d classes (mixed in before ``nn.ConvNd``).

    Args:
        *args: exactly the arguments of ``nn.ConvNd`` (in_channels, out_channels, kernel_size, stride,
            padding, dilation, groups, bias, padding_mode, device, dtype), given by position.
        **kwargs: the same, given by keyword.
        multi_channel: masks may have one channel per input channel; windows then count every
            (channel, voxel) element, per group when ``groups > 1``, and the returned mask has
            ``out_channels`` channels. Single-channel masks are accepted too.
        return_mask: ``forward`` returns ``(output, updated_mask)`` instead of ``output``.

    ``forward(input, mask_in=None)``: ``mask_in`` is ``(1 or N, 1 or C_in, *spatial)``, bool/integer (binary,
    nonzero = valid) or floating (weights in [0, 1]), as a tensor or a :class:`~pconv3d.mask.Mask`.
    ``None`` treats zero padding as missing (partial-convolution-based padding): interior outputs equal
    ``nn.ConvNd``, borders are renormalized. Other padding modes pad the mask like the input: padded
    voxels are valid where their source is. Whatever holes contain (NaN and inf included) never reaches
    the output. The returned mask has the input's dtype and shape ``(N, 1, *out)``, or
    ``(N, out_channels, *out)`` with ``multi_channel``.
    """

    def __init__(self, *args, multi_channel: bool = False, return_mask: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.multi_channel = multi_channel
        self.return_mask = return_mask
        # window geometry of the mask statistics, fixed at construction like nn.ConvNd's own padding
        pad = list(self._reversed_padding_repeated_twice)
        n = len(self.kernel_size)
        symmetric = all(pad[i] == pad[i + 1] for i in range(0, len(pad), 2))
        if self.padding_mode == "zeros" and symmetric:
            padding, pre_pad = pad[::-2], []
        else:
            padding, pre_pad = [0] * n, pad
        self.windows = Windows(list(self.kernel_size), list(self.stride), padding, list(self.dilation), pre_pad,
                               _PAD_MODES[self.padding_mode], [0] * n, False)
        self._plain_when_unmasked = not any(pad)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", multi_channel={self.multi_channel}"

    def _conv(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight, None)


class PartialConv1d(_PartialConvNd, nn.Conv1d):
    """1D partial convolution; see :class:`~pconv3d.partial_conv._PartialConvNd` for the extra arguments.

    Example::

        >>> conv = PartialConv1d(2, 4, 3, padding=1, return_mask=True)
        >>> out, mask = conv(torch.randn(1, 2, 10), torch.ones(1, 1, 10))
    """


class PartialConv2d(_PartialConvNd, nn.Conv2d):
    """2D partial convolution; see :class:`~pconv3d.partial_conv._PartialConvNd` for the extra arguments.

    Example::

        >>> conv = PartialConv2d(3, 8, 3, padding=1)
        >>> out = conv(torch.randn(1, 3, 16, 16), (torch.rand(1, 1, 16, 16) > 0.3))
    """


class PartialConv3d(_PartialConvNd, nn.Conv3d):
    """3D partial convolution; see :class:`~pconv3d.partial_conv._PartialConvNd` for the extra arguments.

    Example::

        >>> conv = PartialConv3d(1, 8, 3, padding=1, return_mask=True)
        >>> out, mask = conv(torch.randn(2, 1, 16, 16, 16), torch.ones(2, 1, 16, 16, 16))
    """
