"""Partial convolution (Liu et al., 2018), exact and stateless, written once for 1, 2 and 3 dimensions.

For each window with mask sum ``S > 0`` over ``winsize`` mask elements::

    out = conv(X * M, W) * winsize / S + b          and 0 where S == 0;      mask_out = [S > 0]

``PartialConv1d/2d/3d`` subclass ``nn.Conv1d/2d/3d``: same constructor, parameters and ``state_dict``
keys, plus ``multi_channel`` and ``return_mask`` (the names of NVIDIA's reference implementation).
:class:`PartialConvBase` is what they share with the partial transposed convolutions
(:mod:`pconv3d.blocks.conv_transpose`), as torch's ``_ConvTransposeNd`` shares ``_ConvNd``; :func:`renormalize`
turns a bias-free convolution's output into the partial one.

A layer reads its window geometry from its attributes when it runs, as torch's ``forward`` does: setting
``padding``, ``stride``, ``dilation`` or the weight after construction behaves as it does for ``nn.ConvNd``.
"""


import weakref
from contextlib import nullcontext
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from pconv3d.masks.apply import apply_mask, mark_clean
from pconv3d.masks.carrier import Mask, MaskLike, as_carrier, as_given, tensor_of
from pconv3d.masks.counting import Windows, WindowStats, stat_dtype, window_stats
from pconv3d.masks.mode import execution_mode

__all__ = ["PartialConvBase", "PartialConv1d", "PartialConv2d", "PartialConv3d", "renormalize"]


class PartialConvBase:
    """The partial-convolution operator on top of a torch convolution (mixed in before ``nn.ConvNd`` or
    ``nn.ConvTransposeNd``): masking, statistics, renormalization and the returned mask.

    Subclasses define ``_windows`` (the window geometry, :class:`~pconv3d.masks.counting.Windows`, from the
    attributes as they are now), ``_geometry`` (those attributes as one hashable key), ``_plain_output``
    and ``_conv`` (the bias-free convolution).

    ``forward(input, mask_in=None)``: ``mask_in`` is a tensor, a :class:`~pconv3d.masks.carrier.Mask` or
    ``None`` (see the subclasses); returns ``output``, or ``(output, mask_out)`` with ``return_mask``, where
    ``mask_out`` is a carrier if ``mask_in`` was one, else a tensor; it may be a broadcast view, as
    ``expand`` gives (clone it before writing into it). Blocks call the layer as a module
    (so that hooks see it) and then take its mask from :meth:`updated_mask`; with a carrier the
    statistics are computed once for both.
    """

    __constants__ = nn.Conv3d.__constants__ + ["multi_channel", "return_mask"]
    multi_channel: bool
    return_mask: bool

    def forward(self, input: Tensor, mask_in: Optional[MaskLike] = None):
        out, mask = self._partial_forward(input, mask_in)
        if self.return_mask:
            return out, mask
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", return_mask={self.return_mask}"

    def _conv(self, x: Tensor) -> Tensor:
        """The bias-free convolution."""
        raise NotImplementedError

    def _windows(self) -> Windows:
        """The window geometry of the convolution ``forward`` runs now."""
        raise NotImplementedError

    def _geometry(self) -> tuple:
        """The attribute values :meth:`_windows` reads, as one hashable key: equal keys, equal windows."""
        raise NotImplementedError

    def _plain_output(self, input: Tensor) -> Optional[Tensor]:
        """For a call without a mask: the plain torch layer's output where no window reaches past the input
        (the partial layer is that layer then), else ``None``."""
        raise NotImplementedError

    def _check_mask(self, input: Tensor, mask: Tensor) -> None:
        n, c = input.shape[0], input.shape[1]
        ok_channels = mask.shape[1] == 1 or (self.multi_channel and mask.shape[1] == c)
        if mask.dim() != input.dim() or mask.shape[0] not in (1, n) or not ok_channels or mask.shape[2:] != input.shape[2:]:
            channels = f"1 or {c}" if self.multi_channel else "1"
            kind = "partial transposed convolution" if self.transposed else "partial convolution"
            raise ValueError(
                f"{kind}: mask_in must have shape (1 or {n}, {channels}, *{list(input.shape[2:])}) "
                f"for input of shape {list(input.shape)}; got mask of shape {list(mask.shape)}"
            )

    def _groups(self, mask: Optional[Tensor]) -> int:
        """Mask channel groups counted apart: the convolution's groups for a per-channel mask, else 1."""
        return self.groups if mask is not None and mask.shape[1] > 1 else 1

    def _per_output_channel(self, input: Tensor, stats: WindowStats, groups: int) -> Tuple[WindowStats, Tensor]:
        """The statistics per output channel where groups differ, and the returned mask tensor."""
        ratio, valid, known_valid = stats
        if groups > 1 and self.out_channels > groups:
            # each output channel takes the statistics of its group
            ratio = ratio.repeat_interleave(self.out_channels // groups, 1)
            valid = valid.repeat_interleave(self.out_channels // groups, 1)
        out_spatial = list(valid.shape[2:])
        mask_channels = self.out_channels if self.multi_channel else 1
        mask_out = valid.to(input.dtype).expand([input.shape[0], mask_channels] + out_spatial)
        return WindowStats(ratio, valid, known_valid), mask_out

    def _layer_stats(self, input: Tensor, mask_in: Optional[MaskLike], release: bool = False) -> Tuple[WindowStats, MaskLike]:
        """The layer's statistics for this input and mask, and the mask it returns: a tensor under TorchScript,
        else a carrier (``release``: handed to the caller of :meth:`updated_mask`, see :class:`_LayerResult`)."""
        if execution_mode() == "script":
            if mask_in is not None:
                self._check_mask(input, mask_in)
            groups = self._groups(mask_in)
            stats = window_stats(self._windows(), mask_in, list(input.shape[2:]), groups, stat_dtype(input.dtype),
                                 input.device)
            return self._per_output_channel(input, stats, groups)
        return self._layer_stats_of_carrier(input, mask_in, release)

    @torch.jit.unused
    def _layer_stats_of_carrier(self, input: Tensor, mask_in: Optional[MaskLike], release: bool) -> Tuple[WindowStats, MaskLike]:
        """:meth:`_layer_stats` outside TorchScript, where ``mask_in`` is a carrier: counted once per key."""
        geometry = self._geometry()
        mask_channels = self.out_channels if self.multi_channel else 1
        # what the result depends on besides the carrier: layers with equal keys share it
        key = geometry, tuple(input.shape[2:]), self._groups(mask_in.tensor), input.dtype, input.shape[0], mask_channels
        result = mask_in.cached_for_mask(key, self._count, input, mask_in, geometry)
        return result.stats, result.release_output_mask() if release else result.output_mask()

    def _count(self, input: Tensor, mask_in: Mask, geometry: tuple) -> "_LayerResult":
        """The statistics and output mask for the carrier ``mask_in``, which it keeps (:class:`_LayerResult`)."""
        mask = mask_in.tensor
        if mask is not None:
            self._check_mask(input, mask)
        groups = self._groups(mask)
        spatial = list(input.shape[2:])
        windows = _windows_for(self, geometry)
        device = input.device
        dtype = stat_dtype(input.dtype)
        # statistics in their own dtype, never autocast's (no gradient either: the mask is detached)
        autocast = torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)
        with torch.autocast(device.type, enabled=False) if autocast else nullcontext():
            if groups == 1 and mask_in.all_valid:
                # an all-valid mask has the statistics of no mask: they depend on the geometry only (known
                # from it, never read from the data), and are shared by every carrier of the call
                call_key = geometry, tuple(spatial), dtype, device
                stats = mask_in.cached_for_call(call_key, window_stats, windows, None, spatial, 1, dtype, device)
            else:
                counted = mask_in.cached_for_mask("counted", _counted_mask, mask_in)  # once for every geometry
                stats = window_stats(windows, counted, spatial, groups, dtype, device)
        stats, mask_out = self._per_output_channel(input, stats, groups)
        return _LayerResult(stats, mask_out, mask_in)

    def _partial_forward(self, input: Tensor, mask_in: Optional[MaskLike]) -> Tuple[Tensor, MaskLike]:
        """Partial convolution of ``input`` under ``mask_in``; returns ``(output, mask_out)``."""
        unbatched = input.dim() == len(self.kernel_size) + 1
        given = mask_in
        if unbatched:
            input = input.unsqueeze(0)
            mask_t = tensor_of(mask_in)
            mask_in = None if mask_t is None else mask_t.unsqueeze(0)
        mask_in = as_carrier(mask_in)
        stats, mask_out = self._layer_stats(input, mask_in)
        out = self._plain_output(input) if tensor_of(mask_in) is None else None
        if out is None:
            # in place: the conv output is ours, and the conv's backward does not need it
            out = renormalize(self._conv(apply_mask(input, mask_in)), stats, self.bias)
        out = mark_clean(out, mask_out)  # exactly 0 where the returned mask is
        if unbatched:
            mask_t = tensor_of(mask_out)
            assert mask_t is not None
            return out.squeeze(0), mask_t.squeeze(0)
        return out, as_given(mask_out, given)

    def updated_mask(self, input: Tensor, mask_in: Optional[MaskLike] = None) -> MaskLike:
        """The mask ``forward(input, mask_in)`` returns, without convolving; a carrier for a carrier. How
        blocks read a layer's mask whatever its ``return_mask``: after ``forward`` with the same
        :class:`~pconv3d.masks.carrier.Mask` it costs nothing, and it is the carrier that knows the output
        holds zeros in its holes."""
        return as_given(self._layer_stats(input, as_carrier(mask_in), True)[1], mask_in)


class _LayerResult:
    """What a layer computes for one carrier, kept by that carrier (:meth:`Mask.cached_for_mask`): the
    statistics and the carrier of the mask the layer returns. That carrier is held until
    :meth:`release_output_mask` gives it to the caller of ``updated_mask`` (a block), and only referred to
    weakly after that, so that a call's carriers do not keep the masks and statistics of every later layer
    alive."""

    __slots__ = ("stats", "mask_out", "_source", "_kept", "_released")

    def __init__(self, stats: WindowStats, mask_out: Tensor, source: Mask) -> None:
        self.stats, self.mask_out = stats, mask_out
        self._source = weakref.ref(source)  # the carrier that keeps this result
        self._kept: Optional[Mask] = None
        self._released: Optional[weakref.ref] = None

    def output_mask(self) -> Mask:
        carrier = self._kept or (None if self._released is None else self._released())
        if carrier is None:
            source = self._source()
            make = Mask if source is None else source.new_mask
            carrier = self._kept = make(self.mask_out, binary=True, all_valid=self.stats.all_valid)
        return carrier

    def release_output_mask(self) -> Mask:
        carrier = self.output_mask()
        self._kept, self._released = None, weakref.ref(carrier)
        return carrier


def _hashable(value):
    """An attribute as part of a key (torch's forward takes lists too)."""
    return tuple(value) if isinstance(value, list) else value


def _counted_mask(mask: Mask) -> Optional[Tensor]:
    """The mask as its windows are counted: a floating one known to hold only 0 and 1 as bool, which
    :func:`~pconv3d.masks.counting.window_stats` counts in bytes."""
    t = mask.tensor
    return t != 0 if t is not None and t.is_floating_point() and mask.binary else t


# The window geometries of the layers that ran eagerly, keyed on the attribute values each was read from
# (``PartialConvBase._geometry``: the kernel size from the weight's shape, stride, padding, dilation, padding
# mode and output padding, as torch's forward reads them). A geometry is a pure function of its key, so an
# entry can never describe other attributes: setting one changes the key. It holds no tensors.
_WINDOWS: Dict[tuple, Windows] = {}


def _windows_for(layer: PartialConvBase, geometry: tuple) -> Windows:
    """``layer._windows()``, made once per geometry (``geometry`` is ``layer._geometry()``) in eager mode;
    a traced or compiled graph makes it once when it is traced (a cache there would be guarded on)."""
    if execution_mode() != "eager":
        return layer._windows()
    windows = _WINDOWS.get(geometry)
    if windows is None:
        if len(_WINDOWS) >= 1024:
            _WINDOWS.clear()
        windows = _WINDOWS[geometry] = layer._windows()
    return windows


# ---------------------------------------------------------------------------------------------------
# applying the statistics to a convolution's output


def renormalize(out: Tensor, stats: WindowStats, bias: Optional[Tensor]) -> Tensor:
    """``out * ratio + valid * bias``, in place: a partial convolution's output from its bias-free
    convolution ``out`` (which the caller owns and autograd does not need).

    Args:
        out: ``(N, C_out, *out)`` convolution of the masked input, without bias.
        stats: the layer's :class:`~pconv3d.masks.counting.WindowStats`, broadcastable to ``out`` (where
            ``stats.all_valid``, one pass instead of two).
        bias: (C_out,) or ``None``.
    """
    ratio, valid, known_valid = stats
    if bias is None:
        return out.mul_(ratio)
    if execution_mode() != "eager":
        # the eager arithmetic, out of place (graph compilers fuse it), rounded once to the output's dtype
        return (torch.addcmul(bias.view([1, -1] + [1] * (out.dim() - 2)), out, ratio) * valid).to(out.dtype)
    return _renormalize_eager(out, ratio, valid, bias, known_valid)


@torch.jit.unused
def _renormalize_eager(out: Tensor, ratio: Tensor, valid: Tensor, bias: Tensor, all_valid: bool) -> Tensor:
    if torch.is_grad_enabled() and (out.requires_grad or bias.requires_grad):
        return _Renormalize.apply(out, ratio, valid, bias, all_valid)
    # nothing for autograd to record (no_grad, inference mode, frozen layer): skip its bookkeeping
    return _renormalize_in_place(out, ratio, valid, bias, all_valid)


def _renormalize_in_place(out: Tensor, ratio: Tensor, valid: Tensor, bias: Tensor, all_valid: bool) -> Tensor:
    """``out * ratio + valid * bias`` written over ``out``: one pass where every window is valid, a second
    (``* valid``) otherwise; ``ratio`` is already 0 where ``valid`` is, so only the bias needs it."""
    torch.addcmul(bias.view([1, -1] + [1] * (out.dim() - 2)), out, ratio, out=out)
    if not all_valid:
        out.mul_(valid)
    return out


class _Renormalize(torch.autograd.Function):
    """:func:`_renormalize_in_place` for autograd."""

    @staticmethod
    def forward(ctx, out: Tensor, ratio: Tensor, valid: Tensor, bias: Tensor, all_valid: bool) -> Tensor:
        _renormalize_in_place(out, ratio, valid, bias, all_valid)
        ctx.mark_dirty(out)
        ctx.save_for_backward(ratio, valid)
        ctx.all_valid = all_valid
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        ratio, valid = ctx.saved_tensors
        grad_bias = None
        if ctx.needs_input_grad[3]:
            dims = [0] + list(range(2, grad.dim()))
            grad_bias = (grad if ctx.all_valid else grad * valid).sum(dims)
        return grad * ratio, None, None, grad_bias, None


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
    nonzero = valid) or floating (weights in [0, 1]), as a tensor or a :class:`~pconv3d.masks.carrier.Mask`.
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

    def _input_padding(self, kernel_size: List[int]) -> List[int]:
        """How ``forward`` pads the input, in ``F.pad`` order, read as torch reads it: zero padding from
        ``padding`` (``"same"``: from the kernel and the dilation, the odd voxel after), other padding modes
        from the padding ``nn.ConvNd`` stored for them when it was built (what its ``forward`` pads by)."""
        if self.padding_mode != "zeros":
            return list(self._reversed_padding_repeated_twice)
        n = len(kernel_size)
        pad: List[int] = []
        if isinstance(self.padding, str):
            dilation = [self.dilation] * n if isinstance(self.dilation, int) else list(self.dilation)
            for i in range(n - 1, -1, -1):
                total = dilation[i] * (kernel_size[i] - 1) if self.padding == "same" else 0  # else "valid"
                pad += [total // 2, total - total // 2]
        else:
            padding = [self.padding] * n if isinstance(self.padding, int) else list(self.padding)
            for i in range(n - 1, -1, -1):
                pad += [padding[i], padding[i]]
        return pad

    def _windows(self) -> Windows:
        kernel_size = list(self.weight.shape[2:])
        n = len(kernel_size)
        stride = [self.stride] * n if isinstance(self.stride, int) else list(self.stride)
        dilation = [self.dilation] * n if isinstance(self.dilation, int) else list(self.dilation)
        pad = self._input_padding(kernel_size)
        symmetric = True
        for i in range(0, len(pad), 2):
            symmetric = symmetric and pad[i] == pad[i + 1]
        if self.padding_mode == "zeros" and symmetric:
            return Windows(kernel_size, stride, pad[::-2], dilation, [], "constant", [0] * n, False)
        pad_mode = "constant" if self.padding_mode == "zeros" else self.padding_mode  # F.pad's names
        return Windows(kernel_size, stride, [0] * n, dilation, pad, pad_mode, [0] * n, False)

    def _geometry(self) -> tuple:
        return ("conv", self.weight.shape[2:], _hashable(self.stride), _hashable(self.padding),
                _hashable(self.dilation), self.padding_mode, tuple(self._reversed_padding_repeated_twice))

    def _plain_output(self, input: Tensor) -> Optional[Tensor]:
        if max(self._input_padding(list(self.weight.shape[2:]))) > 0:
            return None
        return self._conv_forward(input, self.weight, self.bias)

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
