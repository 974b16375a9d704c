"""Mask statistics for partial convolutions: the one place where windows of a validity mask are counted.

For a window of a convolution, ``S`` is the (weighted) sum of the mask over the window and ``winsize`` the
number of mask elements in it. Partial convolution rescales by ``ratio = winsize / S`` where ``S > 0`` and
zeroes the output where ``S == 0``; the updated mask is ``valid = [S > 0]``.

Statistics are computed in float32 (float64 for float64 inputs) with autocast disabled, never with an
epsilon. They are cached without any chance of a stale result:

* ``mask=None`` (zero padding treated as missing): one entry per (spatial shape, geometry, dtype, device),
  LRU-bounded.
* an explicit mask: keyed by the mask *object* (checked with a weak reference, so a new tensor at a freed
  address never hits) and its version counter (any in-place edit through torch invalidates the entry).
  Several layers of one geometry that receive the same mask compute its statistics once.

Each entry also records the version counters of the tensors it hands out, so a caller that edits a
returned mask in place invalidates it too. Edits that bypass torch's version counter (writing through
``tensor.numpy()`` or ``.data``) cannot be seen; call :func:`clear_cache` after such edits.
The caches are skipped while scripting, tracing, exporting or compiling, where the graph computes the
statistics itself.
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from collections import OrderedDict
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MaskStats", "compute_stats", "cached_stats", "window_sum", "stat_dtype", "clear_cache"]

_NONE_CACHE_SIZE = 64
_MASK_CACHE_SIZE = 32


class MaskStats(NamedTuple):
    """``ratio = winsize / S`` (0 where ``S == 0``) and ``valid = [S > 0]``, both (N or 1, G, *out)."""

    ratio: Tensor
    valid: Tensor


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are float64 for float64 data and float32 otherwise (fp16/bf16 would round window sums)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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

    ``pre_pad`` (``F.pad`` order) is applied with ``pad_mode`` before a convolution with ``padding``; it
    carries asymmetric 'same' padding and non-zero padding modes, which pad the mask like the input.
    """
    n, c = mask.shape[0], mask.shape[1]
    flat = mask.reshape([n * c, 1] + list(mask.shape[2:]))  # channels into the batch: one 1->1 conv
    if len(pre_pad) > 0:
        flat = F.pad(flat, pre_pad, mode=pad_mode)
    ones = torch.ones([1, 1] + kernel_size, dtype=mask.dtype, device=mask.device)
    sums = torch.convolution(flat, ones, None, stride, padding, dilation, False, [0], 1)
    return sums.reshape([n, c] + list(sums.shape[2:]))


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
        m = mask.detach().to(dtype)
        if m.shape[1] > 1:
            # a window of a group spans all of the group's input channels: sum them before sliding
            m = m.reshape([m.shape[0], groups, m.shape[1] // groups] + list(m.shape[2:])).sum(2)
    winsize = 1.0 if mask is None else float(mask.shape[1] // groups)
    for k in kernel_size:
        winsize *= k
    s = window_sum(m, kernel_size, stride, padding, dilation, pre_pad, pad_mode)
    valid = s > 0
    ratio = torch.where(valid, winsize / s, torch.zeros((), dtype=dtype, device=s.device))
    return MaskStats(ratio, valid.to(dtype))


# ---------------------------------------------------------------------------------------------------
# caches (eager mode only)

_none_cache: OrderedDict[tuple, tuple[MaskStats, int, int]] = OrderedDict()
_mask_cache: dict[int, tuple[weakref.ref, int, dict[tuple, tuple[MaskStats, int, int]]]] = {}


def clear_cache() -> None:
    """Forget every cached statistic (needed only after editing a mask behind torch's back)."""
    _none_cache.clear()
    _mask_cache.clear()


def _fresh(entry: tuple[MaskStats, int, int] | None) -> MaskStats | None:
    if entry is None:
        return None
    stats, rv, vv = entry
    return stats if stats.ratio._version == rv and stats.valid._version == vv else None


def _stamp(stats: MaskStats) -> tuple[MaskStats, int, int]:
    return stats, stats.ratio._version, stats.valid._version


def _forget(key: int) -> None:
    _mask_cache.pop(key, None)


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
    """:func:`compute_stats` through the caches, with autocast off; computes directly where caching is unsafe."""
    args = (spatial, kernel_size, stride, padding, dilation, pre_pad, pad_mode, groups, dtype, device)
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or (mask is not None and mask.is_inference()):
        return compute_stats(mask, *args)
    key = tuple(tuple(a) if isinstance(a, list) else a for a in args)
    # normal tensors even in inference mode: they keep a version counter and may be saved for backward later
    no_autocast = torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) else nullcontext()
    with torch.inference_mode(False), torch.no_grad(), no_autocast:
        if mask is None:
            stats = _fresh(_none_cache.get(key))
            if stats is None:
                stats = compute_stats(None, *args)
                _none_cache[key] = _stamp(stats)
                if len(_none_cache) > _NONE_CACHE_SIZE:
                    _none_cache.popitem(last=False)
            else:
                _none_cache.move_to_end(key)
            return stats
        slot = _mask_cache.get(id(mask))
        if slot is None or slot[0]() is not mask or slot[1] != mask._version:
            if len(_mask_cache) >= _MASK_CACHE_SIZE:
                _mask_cache.pop(next(iter(_mask_cache)))
            oid = id(mask)
            slot = (weakref.ref(mask, lambda _r, oid=oid: _forget(oid)), mask._version, {})
            _mask_cache[oid] = slot
        stats = _fresh(slot[2].get(key))
        if stats is None:
            stats = compute_stats(mask, *args)
            slot[2][key] = _stamp(stats)
        return stats
