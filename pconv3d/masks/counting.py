"""Window counting: how much of each window of a (transposed) convolution a mask fills, and the statistics a
partial layer takes from that. The one place masks are counted; :func:`window_stats` is its entry point.

For a window of a convolution, ``S`` is the (weighted) sum of the mask over the window and ``winsize`` the
number of mask elements in it. Partial convolution rescales by ``ratio = winsize / S`` where ``S > 0`` and
zeroes the output where ``S == 0``; the updated mask is ``valid = [S > 0]``. A transposed convolution
rescales by ``F / S`` instead, ``F`` being ``S`` for an all-valid input.

Window sums of binary masks are counted in bytes, of weights in float32 (float64 for float64 inputs);
ratios are float32 (float64), never computed with an epsilon. Nothing is kept here but integer counts per
geometry: a :class:`~pconv3d.masks.carrier.Mask` keeps the statistics for the call it serves.
"""

import functools
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pconv3d.masks.carrier import Mask
from pconv3d.masks.mode import execution_mode

__all__ = ["WindowStats", "Windows", "window_stats", "window_sum", "transposed_window_sum", "stat_dtype"]


class WindowStats(NamedTuple):
    """A layer's window statistics, ``(N or 1, G, *out)``: ``ratio = winsize / S`` (0 where ``S == 0``) and
    ``valid = [S > 0]``; ``all_valid``: ``valid`` is known to be 1 everywhere (``False`` where unknown)."""

    ratio: Tensor
    valid: Tensor
    all_valid: bool


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are float64 for float64 data and float32 otherwise (fp16/bf16 would round window sums)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------------
# window sums (what Windows counts with)


def _weights(mask: Tensor, dtype: torch.dtype, count_bytes: bool) -> Tensor:
    """A mask as window weights: floating masks as they are; bool/integer ones as 1 wherever nonzero, as
    bytes if ``count_bytes`` (every window sum fits in one: a quarter of the memory traffic), else ``dtype``."""
    mask = mask.detach()
    if mask.is_floating_point():
        return mask.to(dtype)
    if count_bytes and execution_mode() not in ["trace", "export"]:  # exported graphs count in floating point
        return mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).view(torch.uint8)
    return (mask != 0).to(dtype)


def window_sum(
    mask: Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    pre_pad: List[int],
    pad_mode: str,
) -> Tensor:
    """Sum of ``mask`` ``(N, C, *spatial)`` over every convolution window, per channel: ``(N, C, *out)``.

    ``pre_pad`` (``F.pad`` order) is applied with ``pad_mode`` before zero ``padding`` (per dim, both
    sides); it carries asymmetric 'same' padding and non-zero padding modes, which pad the mask like the
    input. The ones-kernel is separable, so the sum runs one spatial dim at a time over strided windows:
    several times faster than a convolution with a ones kernel, whose 1-channel case is a slow path on CPU.
    Traced graphs (ONNX export) use the ones-kernel convolution, since exporters need static windows.
    """
    if len(pre_pad) > 0:
        mask = F.pad(mask, pre_pad, mode=pad_mode)
    zero_pad: List[int] = []
    for p in padding[::-1]:
        zero_pad += [p, p]
    if max(zero_pad) > 0:
        mask = F.pad(mask, zero_pad)
    if execution_mode() == "trace":
        return _ones_conv(mask, kernel_size, stride, [0] * len(kernel_size), dilation, False, [0])
    for i in range(len(kernel_size)):
        d, k = 2 + i, kernel_size[i]
        out = (mask.shape[d] - dilation[i] * (k - 1) - 1) // stride[i] + 1
        if out < 1:
            raise RuntimeError(f"window_sum: a window spans {dilation[i] * (k - 1) + 1} voxels along spatial dim {i}, "
                               f"more than the {mask.shape[d]} of the padded input")
        # each tap of the window is a strided view: k - 1 additions, no reduction over a tiny dim
        acc = _taps(mask, d, 0, out, stride[i])
        if k > 1:
            acc = acc + _taps(mask, d, dilation[i], out, stride[i])
        for j in range(2, k):
            acc += _taps(mask, d, j * dilation[i], out, stride[i])
        mask = acc
    return mask


def transposed_window_sum(
    mask: Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    output_padding: List[int],
    dilation: List[int],
) -> Tensor:
    """Sum of ``mask`` ``(N, C, *in)`` over the input voxels that reach each output voxel of a transposed
    convolution with this geometry: ``(N, C, *out)``, per channel.

    Input voxel ``i`` reaches output voxel ``o = i * stride + j * dilation - padding`` through kernel tap
    ``j``. One spatial dim at a time, each tap adds the input into a strided view of the output: ``k``
    additions at the input's size, never a pass over a zero-interleaved copy (traced and exported graphs:
    a ones-kernel transposed convolution, as they cannot write into strided views).
    """
    if execution_mode() in ["trace", "export"]:
        return _ones_conv(mask, kernel_size, stride, padding, dilation, True, output_padding)
    for i in range(len(kernel_size)):
        d, k, s = 2 + i, kernel_size[i], stride[i]
        length = mask.shape[d]
        out = (length - 1) * s - 2 * padding[i] + dilation[i] * (k - 1) + output_padding[i] + 1
        if out < 1:
            raise RuntimeError(f"transposed_window_sum: no output along spatial dim {i} (padding {padding[i]})")
        shape = list(mask.shape)
        shape[d] = out
        acc = torch.zeros(shape, dtype=mask.dtype, device=mask.device)
        for j in range(k):
            offset = j * dilation[i] - padding[i]
            first = (s - 1 - offset) // s if offset < 0 else 0  # the first input voxel that lands inside
            last = min(length - 1, (out - 1 - offset) // s)
            if last >= first:
                count = last - first + 1
                _taps(acc, d, first * s + offset, count, s).add_(mask.narrow(d, first, count))
        mask = acc
    return mask


def _ones_conv(mask: Tensor, kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int],
               transposed: bool, output_padding: List[int]) -> Tensor:
    """Window sums as a (transposed) convolution with a ones kernel: what exporters get, since they need
    static windows (slow on the CPU, where a 1-channel convolution takes a generic path)."""
    n, c = mask.shape[0], mask.shape[1]
    ones = torch.ones([1, 1] + kernel_size, dtype=mask.dtype, device=mask.device)
    flat = mask.reshape([n * c, 1] + list(mask.shape[2:]))  # channels into the batch: one 1->1 conv
    sums = torch.convolution(flat, ones, None, stride, padding, dilation, transposed, output_padding, 1)
    return sums.reshape([n, c] + list(sums.shape[2:]))


def _taps(x: Tensor, d: int, start: int, count: int, step: int) -> Tensor:
    """View of ``count`` slices of ``x`` along dim ``d``, from ``start``, ``step`` apart."""
    x = x.narrow(d, start, (count - 1) * step + 1)
    return x if step == 1 else x.unfold(d, 1, step).squeeze(-1)



@torch.jit.script
class Windows:
    """The window geometry of a partial convolution or partial transposed convolution: which input voxels
    reach each output voxel. A layer makes it from its attributes as they are when it runs.

    Args:
        kernel_size, stride, dilation: per spatial dim.
        padding: zero padding per spatial dim, both sides (a transposed convolution's ``padding``).
        pre_pad: padding in ``F.pad`` order applied with ``pad_mode`` first (asymmetric 'same' padding and
            non-zero padding modes, which pad the mask like the input); ``[]`` for none.
        pad_mode: ``F.pad`` mode of ``pre_pad``.
        output_padding: a transposed convolution's ``output_padding`` (zeros otherwise).
        transposed: the windows of a transposed convolution (:func:`transposed_window_sum`).
    """

    def __init__(
        self,
        kernel_size: List[int],
        stride: List[int],
        padding: List[int],
        dilation: List[int],
        pre_pad: List[int],
        pad_mode: str,
        output_padding: List[int],
        transposed: bool,
    ) -> None:
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.pre_pad = pre_pad
        self.pad_mode = pad_mode
        self.output_padding = output_padding
        self.transposed = transposed

    def sums(self, mask: Tensor) -> Tensor:
        """Sum of ``mask`` ``(N, C, *spatial)`` over each output voxel's window, per channel: ``(N, C, *out)``."""
        if self.transposed:
            return transposed_window_sum(mask, self.kernel_size, self.stride, self.padding, self.output_padding, self.dilation)
        return window_sum(mask, self.kernel_size, self.stride, self.padding, self.dilation, self.pre_pad, self.pad_mode)

    def line_sums(self, spatial: List[int], dtype: torch.dtype, device: torch.device) -> List[Tensor]:
        """The window sums of an all-valid mask, one 1D tensor per spatial dim: that mask is separable,
        so its sums are the outer product of these (a few tiny passes instead of several full ones)."""
        n = len(self.kernel_size)
        lines: List[Tensor] = []
        for i in range(n):
            ones = torch.ones([1, 1, spatial[i]], dtype=dtype, device=device)
            k, st, d = [self.kernel_size[i]], [self.stride[i]], [self.dilation[i]]
            if self.transposed:
                s = transposed_window_sum(ones, k, st, [self.padding[i]], [self.output_padding[i]], d)
            else:
                pre: List[int] = []
                if len(self.pre_pad) > 0:
                    pre = self.pre_pad[2 * (n - 1 - i) : 2 * (n - i)]
                s = window_sum(ones, k, st, [self.padding[i]], d, pre, self.pad_mode)
            lines.append(s.reshape(-1))
        return lines

    def padded_line(self, length: int, i: int) -> Tuple[int, int, int]:
        """Length and zero padding before and after along spatial dim ``i`` of a (non-transposed) convolution."""
        n = len(self.kernel_size)
        before = self.padding[i]
        after = self.padding[i]
        if len(self.pre_pad) > 0:
            before, after = self.pre_pad[2 * (n - 1 - i)], self.pre_pad[2 * (n - 1 - i) + 1]
            if self.pad_mode != "constant":  # padded like the input: those voxels are valid
                length, before, after = length + before + after, 0, 0
        return length, before, after

    def out_length(self, spatial: List[int], i: int) -> int:
        """Output length along spatial dim ``i`` (integer arithmetic only: symbolic sizes pass through)."""
        k, stride, dilation = self.kernel_size[i], self.stride[i], self.dilation[i]
        if self.transposed:
            return (spatial[i] - 1) * stride - 2 * self.padding[i] + dilation * (k - 1) + self.output_padding[i] + 1
        length, before, after = self.padded_line(spatial[i], i)
        return (length + before + after - dilation * (k - 1) - 1) // stride + 1


def window_stats(
    windows: Windows, mask: Optional[Tensor], spatial: List[int], groups: int, dtype: torch.dtype, device: torch.device
) -> WindowStats:
    """A layer's window statistics for ``mask``: the one entry point.

    Args:
        windows: the layer's geometry.
        mask: ``(N or 1, 1 or groups * k, *spatial)`` validity weights, any dtype; ``None`` means every
            voxel of ``spatial`` is valid and only padding is missing.
        spatial: spatial shape of the layer input.
        groups: number of mask channel groups counted separately (1 for a single-channel mask).
        dtype: statistics dtype (see :func:`stat_dtype`).
        device: where statistics for ``mask=None`` are made.

    In eager mode the statistics of ``None`` come from integer counts on the host where every window
    reaches the image (then ``all_valid`` is known), and ``all_valid`` of counted ones is read on the CPU.
    Inside ``torch.compile`` the statistics of a mask are one operator, ``pconv3d::window_stats``
    (:mod:`pconv3d.masks.compiled`), which the compiler calls rather than inlines: computed once per mask
    and geometry, then read by what follows. Exported graphs (``torch.export``, ONNX) keep standard operators.
    """
    mode = execution_mode()
    if mode == "eager":
        return _eager_window_stats(windows, mask, spatial, groups, dtype, device)
    if mode == "compile" and mask is not None:
        w = windows
        ratio, valid = torch.ops.pconv3d.window_stats(
            mask, w.kernel_size, w.stride, w.padding, w.dilation, w.pre_pad, w.pad_mode, w.output_padding,
            w.transposed, groups, dtype,
        )
        return WindowStats(ratio, valid, False)
    return _counted_stats(windows, mask, spatial, groups, dtype, device)


@torch.jit.unused
def _eager_window_stats(
    windows: Windows, mask: Optional[Tensor], spatial: List[int], groups: int, dtype: torch.dtype, device: torch.device
) -> WindowStats:
    if mask is None:
        stats = _all_valid_stats(windows, spatial, dtype, device)
        if stats is not None:
            return stats
    stats = _counted_stats(windows, mask, spatial, groups, dtype, device)
    return stats._replace(all_valid=Mask(stats.valid, binary=True).all_valid)  # read on the CPU only


def _counted_stats(
    windows: Windows, mask: Optional[Tensor], spatial: List[int], groups: int, dtype: torch.dtype, device: torch.device
) -> WindowStats:
    """The statistics from the window sums of ``mask`` (arguments of :func:`window_stats`)."""
    full = torch.zeros(0)
    if mask is None or windows.transposed:
        full = _outer(windows.line_sums(spatial, dtype, device))
    per_group = 1 if mask is None else mask.shape[1] // groups
    winsize = float(per_group)
    for k in windows.kernel_size:
        winsize *= k
    if mask is None:
        s = full
    else:
        m = _weights(mask, dtype, winsize <= 255)
        if m.shape[1] > 1:
            # a window of a group spans all of the group's input channels: sum them before sliding
            m = m.reshape([m.shape[0], groups, per_group] + list(m.shape[2:])).sum(2, dtype=m.dtype)
        s = windows.sums(m)
    numerator = full if windows.transposed else torch.full([], winsize, dtype=dtype, device=s.device)
    if not s.is_floating_point():
        # integer counts: ratio = F / max(S, 1) where S > 0, 0 elsewhere (exactly rounded)
        valid = s.clamp_max(1).to(dtype)
        return WindowStats(torch.div(numerator, s.clamp_min(1)).mul_(valid), valid, False)
    # valid = [S > 0] (S is never negative); ratio = valid * F / (S + 1 - valid): F / S exactly rounded
    # where S > 0 and 0 elsewhere, in cheap passes (torch.where is a slow one on the CPU)
    valid = s.sign()
    ratio = torch.mul(valid, numerator).div_(torch.rsub(valid, 1.0).add_(s))
    return WindowStats(ratio, valid, False)


def _all_valid_stats(windows: Windows, spatial: List[int], dtype: torch.dtype, device: torch.device) -> Optional[WindowStats]:
    """The statistics of an all-valid mask (or none) when every window reaches an input voxel, else ``None``
    (then :func:`_counted_stats` has them, with the holes such windows make).

    The all-valid mask is separable, so its window sums are the outer product of per-dim counts, which are
    integer arithmetic on the host. ``valid`` is 1 everywhere, so is a transposed convolution's ratio
    ``F / S``, and a convolution's ratio is ``winsize`` over the product (1 where every window is full).
    On the CPU it is built from the counts directly; elsewhere the counts are computed on the device
    (:meth:`Windows.line_sums`), since copying them from the host would wait for it.
    """
    counts = [_line_counts(windows, spatial, i) for i in range(len(spatial))]
    if any(len(c) == 0 or min(c) == 0 for c in counts):
        return None
    one = torch.ones((), dtype=dtype, device=device).expand([1, 1] + [len(c) for c in counts])  # no memory
    full = all(min(c) == max(c) == k for c, k in zip(counts, windows.kernel_size))
    if windows.transposed or full:  # F / S with S = F, or winsize / S with every window full
        return WindowStats(one, one, True)
    if device.type == "cpu":
        # winsize / S as the product of per-dim factors k / count
        factors = [torch.tensor([k / c for c in line], dtype=dtype) for line, k in zip(counts, windows.kernel_size)]
        return WindowStats(_outer(factors), one, True)
    winsize = 1.0
    for k in windows.kernel_size:
        winsize *= k
    return WindowStats(winsize / _outer(windows.line_sums(spatial, dtype, device)), one, True)


def _outer(lines: List[Tensor]) -> Tensor:
    """The product of per-dim 1D tensors, (1, 1, *their lengths)."""
    n = len(lines)
    s = lines[0].reshape([1, 1, -1] + [1] * (n - 1))
    for i in range(1, n):
        shape = [1, 1] + [1] * n
        shape[2 + i] = lines[i].shape[0]
        s = s * lines[i].reshape(shape)
    return s


# ---------------------------------------------------------------------------------------------------
# host counts of an all-valid mask, one spatial dim at a time


def _line_counts(windows: Windows, spatial: List[int], i: int) -> tuple:
    """Input voxels that reach each output voxel along spatial dim ``i`` when all are valid."""
    k, stride, dilation = windows.kernel_size[i], windows.stride[i], windows.dilation[i]
    if windows.transposed:
        return _transposed_counts(spatial[i], k, stride, windows.padding[i], windows.output_padding[i], dilation)
    length, before, after = windows.padded_line(spatial[i], i)
    return _counts(length, k, stride, before, after, dilation)


# The counts are a pure function of their integer arguments: they cannot go stale, and hold no tensors.
@functools.lru_cache(maxsize=1024)
def _counts(length: int, k: int, stride: int, before: int, after: int, dilation: int) -> tuple:
    """Input voxels in each window of a 1D convolution over ``length`` voxels zero-padded by ``before``/``after``."""
    out = (length + before + after - dilation * (k - 1) - 1) // stride + 1
    return tuple(sum(0 <= o * stride - before + dilation * j < length for j in range(k)) for o in range(out))


@functools.lru_cache(maxsize=1024)
def _transposed_counts(length: int, k: int, stride: int, padding: int, output_padding: int, dilation: int) -> tuple:
    """Input voxels reaching each output voxel of a 1D transposed convolution over ``length`` voxels."""
    out = (length - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1
    counts = [0] * out
    for i in range(length):
        for j in range(k):
            o = i * stride + dilation * j - padding
            if 0 <= o < out:
                counts[o] += 1
    return tuple(counts)
