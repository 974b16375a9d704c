"""Mask statistics for partial convolutions: the one place where windows of a validity mask are counted.

For a window of a convolution, ``S`` is the (weighted) sum of the mask over the window and ``winsize`` the
number of mask elements in it. Partial convolution rescales by ``ratio = winsize / S`` where ``S > 0`` and
zeroes the output where ``S == 0``; the updated mask is ``valid = [S > 0]``.

Statistics are computed in float32 (float64 for float64 inputs) with autocast disabled, never with an
epsilon. They are cached without any chance of a stale result:

* ``mask=None`` (zero padding treated as missing): one entry per (spatial shape, geometry, dtype, device),
  LRU-bounded. A mask known to be all valid (:func:`pconv3d.masking.all_valid`; deep in a network most
  masks are) has the same statistics and takes this entry.
* an explicit mask: a :class:`~pconv3d.tensor_cache.PerTensorCache`, keyed by the mask *object* and its
  version counter, so a new tensor at a freed address never hits and an in-place edit invalidates.
  Several layers of one geometry that receive the same mask compute its statistics once.

Transposed convolutions (:func:`cached_transposed_stats`) share both caches. :func:`renormalize` applies
the statistics to a convolution's output.

Each entry also records the version counters of the tensors it hands out, so a caller that edits a
returned mask in place invalidates it too. Edits that bypass torch's version counter (writing through
``tensor.numpy()`` or ``.data``) cannot be seen; call :func:`clear_cache` after such edits.
The caches are skipped while scripting, tracing, exporting or compiling, where the graph computes the
statistics itself.
"""

from __future__ import annotations

from contextlib import nullcontext
from collections import OrderedDict
from collections.abc import Callable
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from pconv3d.masking import all_valid, apply_mask, mark_binary
from pconv3d.tensor_cache import PerTensorCache, Stamped, clear_all, stamp, unstamp

__all__ = [
    "MaskStats",
    "compute_stats",
    "cached_stats",
    "cached_transposed_stats",
    "window_sum",
    "stat_dtype",
    "clear_cache",
    "transposed_window_sum",
    "compute_transposed_stats",
    "masked_moments",
    "renormalize",
]

_NONE_CACHE_SIZE = 64
_MASK_CACHE_SIZE = 32


class MaskStats(NamedTuple):
    """``ratio = winsize / S`` (0 where ``S == 0``) and ``valid = [S > 0]``, both (N or 1, G, *out)."""

    ratio: Tensor
    valid: Tensor


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are float64 for float64 data and float32 otherwise (fp16/bf16 would round window sums)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _weights(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A mask as window weights: floating masks as they are, bool/integer ones as 1 wherever nonzero."""
    mask = mask.detach()
    return mask.to(dtype) if mask.is_floating_point() else (mask != 0).to(dtype)


def window_sum(
    mask: Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    pre_pad: List[int],
    pad_mode: str,
) -> Tensor:
    """Sum of ``mask`` (N, C, *spatial) over every convolution window, per channel: (N, C, *out).

    ``pre_pad`` (``F.pad`` order) is applied with ``pad_mode`` before zero ``padding`` (per dim, both
    sides); it carries asymmetric 'same' padding and non-zero padding modes, which pad the mask like the
    input. The ones-kernel is separable, so the sum runs one spatial dim at a time over strided windows:
    several times faster than a convolution with a ones kernel, whose 1-channel case is a slow path on CPU.
    Under tracing (ONNX export) the ones-kernel convolution is used, since exporters need static windows.
    """
    if len(pre_pad) > 0:
        mask = F.pad(mask, pre_pad, mode=pad_mode)
    zero_pad: List[int] = []
    for p in padding[::-1]:
        zero_pad += [p, p]
    if max(zero_pad) > 0:
        mask = F.pad(mask, zero_pad)
    if torch.jit.is_tracing():
        n, c = mask.shape[0], mask.shape[1]
        ones = torch.ones([1, 1] + kernel_size, dtype=mask.dtype, device=mask.device)
        flat = mask.reshape([n * c, 1] + list(mask.shape[2:]))  # channels into the batch: one 1->1 conv
        sums = torch.convolution(flat, ones, None, stride, [0] * len(kernel_size), dilation, False, [0], 1)
        return sums.reshape([n, c] + list(sums.shape[2:]))
    for i in range(len(kernel_size)):
        span = dilation[i] * (kernel_size[i] - 1) + 1
        mask = mask.unfold(2 + i, span, stride[i])[..., :: dilation[i]].sum(-1)
    return mask


def compute_stats(
    mask: Optional[Tensor],
    spatial: List[int],
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    pre_pad: List[int],
    pad_mode: str,
    groups: int,
    dtype: torch.dtype,
    device: torch.device,
) -> MaskStats:
    """Window statistics of ``mask`` for one layer, uncached.

    Args:
        mask: (N, 1, *spatial) or (N, groups * k, *spatial) validity weights in [0, 1], any dtype;
            ``None`` means every voxel of ``spatial`` is valid and only padding is missing.
        spatial: spatial shape of the layer input.
        kernel_size, stride, padding, dilation, pre_pad, pad_mode: the layer's window geometry
            (see :func:`window_sum`).
        groups: number of mask channel groups counted separately (1 for a single-channel mask).
        dtype: statistics dtype (see :func:`stat_dtype`).
        device: where ``mask=None`` statistics are made.
    """
    if mask is None:
        m = torch.ones([1, 1] + spatial, dtype=dtype, device=device)
    else:
        m = _weights(mask, dtype)
        if m.shape[1] > 1:
            # a window of a group spans all of the group's input channels: sum them before sliding
            m = m.reshape([m.shape[0], groups, m.shape[1] // groups] + list(m.shape[2:])).sum(2)
    winsize = 1.0 if mask is None else float(mask.shape[1] // groups)
    for k in kernel_size:
        winsize *= k
    s = window_sum(m, kernel_size, stride, padding, dilation, pre_pad, pad_mode)
    valid = s > 0
    ratio = torch.where(valid, winsize / s, torch.zeros((), dtype=dtype, device=s.device))
    return MaskStats(ratio, mark_binary(valid.to(dtype), valid))


# ---------------------------------------------------------------------------------------------------
# caches (eager mode only)

_none_cache: OrderedDict[tuple, Stamped] = OrderedDict()
_mask_cache = PerTensorCache(_MASK_CACHE_SIZE)


def clear_cache() -> None:
    """Forget every cached statistic and mask property (needed only after editing a mask behind torch's back)."""
    _none_cache.clear()
    clear_all()


def _through_cache(
    compute: Callable[..., MaskStats], mask: Tensor | None, args: tuple, device: torch.device, shareable: bool
) -> MaskStats:
    """``compute(mask, *args)`` through the caches, with autocast off; computes directly where caching is
    unsafe. ``device``: where the statistics live (the last of ``args``); ``shareable``: an all-valid mask
    has the statistics of ``mask=None``."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return compute(mask, *args)
    key = (compute.__name__,) + tuple(tuple(a) if isinstance(a, list) else a for a in args)
    if mask is not None and shareable and all_valid(mask):
        mask = None  # the same statistics, shared by every all-valid mask of this geometry
    # look up first: the modes below cost more than a hit
    stats = unstamp(_none_cache.get(key)) if mask is None else _mask_cache.peek(mask, key)
    if stats is not None:
        if mask is None:
            _none_cache.move_to_end(key)
        return stats
    # normal tensors even in inference mode: they keep a version counter and may be saved for backward later
    no_autocast = torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) else nullcontext()
    with torch.inference_mode(False), torch.no_grad(), no_autocast:
        stats = compute(mask, *args)
    if mask is None:
        _none_cache[key] = stamp(stats)
        if len(_none_cache) > _NONE_CACHE_SIZE:
            _none_cache.popitem(last=False)
    else:
        _mask_cache.put(mask, key, stats)
    return stats


def cached_stats(
    mask: Tensor | None,
    spatial: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    pre_pad: list[int],
    pad_mode: str,
    groups: int,
    dtype: torch.dtype,
    device: torch.device,
) -> MaskStats:
    """:func:`compute_stats` through the caches (see the module doc)."""
    args = (spatial, kernel_size, stride, padding, dilation, pre_pad, pad_mode, groups, dtype, device)
    return _through_cache(compute_stats, mask, args, device, shareable=groups == 1)


def cached_transposed_stats(
    mask: Tensor | None,
    spatial: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    output_padding: list[int],
    dilation: list[int],
    dtype: torch.dtype,
    device: torch.device,
) -> MaskStats:
    """:func:`compute_transposed_stats` through the caches (see the module doc)."""
    args = (spatial, kernel_size, stride, padding, output_padding, dilation, dtype, device)
    return _through_cache(compute_transposed_stats, mask, args, device, shareable=True)


# ---------------------------------------------------------------------------------------------------
# applying the statistics to a convolution's output


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


def renormalize(out: Tensor, stats: MaskStats, bias: Optional[Tensor]) -> Tensor:
    """``out * ratio + valid * bias``, in place: a partial convolution's output from its bias-free
    convolution ``out`` (which the caller owns and autograd does not need).

    Args:
        out: (N, C_out, *out) convolution of the masked input, without bias.
        stats: the layer's :class:`MaskStats`, broadcastable to ``out``.
        bias: (C_out,) or ``None``.
    """
    ratio, valid = stats
    if bias is None:
        return out.mul_(ratio)
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        # the eager arithmetic, out of place (graph compilers fuse it), rounded once to the output's dtype
        return (torch.addcmul(bias.view([1, -1] + [1] * (out.dim() - 2)), out, ratio) * valid).to(out.dtype)
    return _renormalize_eager(out, ratio, valid, bias)


@torch.jit.unused
def _renormalize_eager(out: Tensor, ratio: Tensor, valid: Tensor, bias: Tensor) -> Tensor:
    if torch.is_grad_enabled() and (out.requires_grad or bias.requires_grad):
        return _Renormalize.apply(out, ratio, valid, bias, all_valid(valid))
    # nothing for autograd to record (no_grad, inference mode, frozen layer): skip its bookkeeping
    return _renormalize_in_place(out, ratio, valid, bias, all_valid(valid))


# ---------------------------------------------------------------------------------------------------
# transposed convolutions and masked normalization (used by pconv3d.blocks)


def _interleave_zeros(mask: Tensor, stride: List[int]) -> Tensor:
    """Insert ``stride - 1`` zeros between neighbouring voxels along every spatial dim: (N, C, *((L-1)*s+1))."""
    for i in range(len(stride)):
        s = stride[i]
        if s > 1:
            d = 2 + i
            shape = list(mask.shape)
            zeros = torch.zeros(shape[: d + 1] + [s - 1] + shape[d + 1 :], dtype=mask.dtype, device=mask.device)
            mask = torch.cat([mask.unsqueeze(d + 1), zeros], d + 1).flatten(d, d + 1).narrow(d, 0, (shape[d] - 1) * s + 1)
    return mask


def transposed_window_sum(
    mask: Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    output_padding: List[int],
    dilation: List[int],
) -> Tensor:
    """Sum of ``mask`` (N, C, *in) over the input voxels that reach each output voxel of a transposed
    convolution with this geometry: (N, C, *out), per channel.

    A transposed convolution is a stride-1 convolution of the zero-interleaved input with the flipped kernel,
    padded by ``dilation * (k - 1) - padding`` before and that plus ``output_padding`` after (negative
    values crop); the ones-kernel is its own flip, so this is :func:`window_sum` of the interleaved mask.
    """
    pre_pad: List[int] = []
    for i in range(len(kernel_size) - 1, -1, -1):
        before = dilation[i] * (kernel_size[i] - 1) - padding[i]
        pre_pad += [before, before + output_padding[i]]
    ones = [1] * len(kernel_size)
    return window_sum(_interleave_zeros(mask, stride), kernel_size, ones, [0] * len(kernel_size), dilation, pre_pad, "constant")


def compute_transposed_stats(
    mask: Optional[Tensor],
    spatial: List[int],
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    output_padding: List[int],
    dilation: List[int],
    dtype: torch.dtype,
    device: torch.device,
) -> MaskStats:
    """Statistics of a partial transposed convolution: ``ratio = F / S`` and ``valid = [S > 0]``.

    ``S`` is the (weighted) number of valid input voxels reaching an output voxel and ``F`` the number
    that reach it when every input voxel is valid, so an all-valid mask gives ``ratio == 1`` wherever
    ``F > 0`` (the plain transposed convolution) and output voxels no input reaches are invalid.

    Args:
        mask: (N or 1, 1, *spatial) validity weights in [0, 1], any dtype; ``None``: all valid.
        spatial: spatial shape of the layer input.
        kernel_size, stride, padding, output_padding, dilation: the layer's geometry.
        dtype: statistics dtype (see :func:`stat_dtype`).
        device: where the statistics are made.
    """
    full = transposed_window_sum(
        torch.ones([1, 1] + spatial, dtype=dtype, device=device), kernel_size, stride, padding, output_padding, dilation
    )
    s = full
    if mask is not None:
        s = transposed_window_sum(_weights(mask, dtype), kernel_size, stride, padding, output_padding, dilation)
    valid = s > 0
    ratio = torch.where(valid, full / s, torch.zeros((), dtype=dtype, device=s.device))
    return MaskStats(ratio, mark_binary(valid.to(dtype), valid))


class MaskedMoments(NamedTuple):
    """Moments of a tensor over its valid voxels (see :func:`masked_moments`), all with reduced dims kept."""

    mean: Tensor
    var: Tensor
    centered: Tensor
    count: Tensor


def masked_moments(x: Tensor, valid: Tensor, dims: List[int]) -> MaskedMoments:
    """Mean and biased variance of ``x`` over ``dims``, counting only voxels where ``valid == 1``.

    Args:
        x: floating tensor; its holes may hold anything (NaN and inf too): they are never read.
        valid: binary (0/1) mask of ``x``'s dtype, broadcastable to ``x`` (size 1 or ``x``'s size in every
            dim). It is the one tensor autograd keeps for the masking, shared by reference.
        dims: the reduced dims.

    Returns ``mean``, ``var`` and ``count`` (the number of valid elements) with the reduced dims kept, in
    :func:`stat_dtype` (half-precision sums overflow and round), and ``centered = x - mean`` in ``x``'s dtype
    with holes exactly 0. Where nothing is valid the mean and variance are 0 (never NaN, gradients included).
    """
    acc = stat_dtype(x.dtype)
    count = valid.sum(dims, keepdim=True, dtype=acc)
    broadcast = 1  # elements of x per element of valid over the reduced dims
    for d in dims:
        if valid.shape[d] == 1:
            broadcast *= x.shape[d]
    count = count * broadcast
    denom = count.clamp_min(1.0)
    xm = apply_mask(x, valid)
    mean = xm.sum(dims, keepdim=True, dtype=acc) / denom
    # xm - mean on valid voxels, 0 in holes: one pass
    centered = torch.addcmul(xm, mean.to(x.dtype), valid, value=-1.0)
    # one pass, no squared temporary; its gradient is 2 * centered, also where everything is 0
    var = torch.linalg.vector_norm(centered, 2, dims, keepdim=True, dtype=acc).square() / denom
    return MaskedMoments(mean, var, centered, count)
