"""Hole-safe masking: ``x * mask`` where every hole becomes an exact zero, whatever it held (NaN and inf too).

Plain multiplication leaks (``nan * 0 = nan``) and ``torch.where`` is several times slower than a multiply
on CPU, so eager mode clears holes with a bitwise AND on the float bits: valid voxels keep their exact
bits, holes become +0.0, at the cost of one multiply. Under scripting, tracing, export and compilation
the same result is expressed with ``torch.where``, which those graph compilers handle (and fuse).
The mask is treated as a constant: no gradient flows into it.

Inside a network most tensors already hold zeros in their holes: every partial block returns them so.
Blocks say so with :func:`mark_clean`, and ``apply_mask`` then hands such a tensor back as it is, which
saves a pass, a temporary and (in training) a saved copy per layer. Marks live in a
:class:`~pconv3d.tensor_cache.PerTensorCache`: they vanish with the tensor and with any in-place edit of
it or of its mask, and they are only taken for binary masks, whose product changes nothing on valid voxels.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pconv3d.tensor_cache import PerTensorCache

__all__ = ["apply_mask", "mark_clean", "mark_binary", "all_valid"]

_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


_facts = PerTensorCache(64)  # per mask tensor: binary? all valid?
_clean_cache = PerTensorCache(64)


def _keep_bits(mask: Tensor, dtype: torch.dtype, binary: bool = False) -> Tensor:
    """All-ones bit pattern (-1) where ``mask != 0``, 0 in holes, as the integer twin of ``dtype``.

    A bool mask, or a floating one known to hold only 0 and 1 (``binary``), converts directly; integer
    masks are compared, since any nonzero value (3 too) means valid.
    """
    direct = mask.dtype == torch.bool or (binary and mask.is_floating_point())
    return (mask if direct else mask != 0).to(_INT_VIEW[dtype], copy=True).neg_()  # never the caller's mask


def _known(mask: Tensor, fact: str) -> Optional[bool]:
    """``fact`` as on record for ``mask``, else true if on record as true for the tensor it is a view of
    (a view of a binary or all-valid tensor is binary or all valid too), else ``None``."""
    entry = _facts.peek(mask, fact)
    if entry is not None:
        return bool(entry[0])
    if mask._base is not None:
        entry = _facts.peek(mask._base, fact)
        if entry is not None and bool(entry[0]):
            return True
    return None


def _classify(mask: Tensor) -> tuple[bool, bool]:
    """Whether ``mask`` is binary (only 0 and 1, or bool/integer) and whether it is all valid; recorded
    for as long as the tensor is not edited.

    Counts rather than ``all()`` (several times slower on CPU): a floating mask is binary exactly when
    each of its nonzero elements is a 1, and all valid when its 1s are all of it.
    """
    # normal tensors even in inference mode: the cache records their version counters
    with torch.inference_mode(False), torch.no_grad():
        if not mask.is_floating_point():
            binary, ones = _TRUE, torch.count_nonzero(mask) == mask.numel()
        else:
            count = torch.count_nonzero(mask == 1)
            binary, ones = torch.count_nonzero(mask) == count, count == mask.numel()
    _facts.put(mask, "binary", (binary,))
    _facts.put(mask, "all_valid", (ones,))
    return bool(binary), bool(ones)


def _is_binary(mask: Tensor) -> bool:
    """Whether ``mask`` only holds 0 and 1 (then ``x * mask`` is ``x`` on valid voxels: a pass saved).

    Cached per mask tensor, as the layers of a block all clear holes with the mask the previous layer
    returned.
    """
    if not mask.is_floating_point():
        return True
    known = _known(mask, "binary")
    if known is not None:
        return known
    return _checkable(mask) and _classify(mask)[0]


def _checkable(mask: Tensor) -> bool:
    """Masks worth checking: single-channel ones. A mask with a channel per input channel is as large as
    the input, and checking it would cost what the answer saves."""
    return mask.dim() < 2 or mask.shape[1] == 1


def all_valid(mask: Tensor) -> bool:
    """Whether every element of ``mask`` is fully valid (1, or nonzero for bool/integer masks).

    Asked on the CPU only (elsewhere the answer would wait for the device), and of single-channel masks
    (others are all valid only if known to be: see :func:`_checkable`); never while tracing or compiling,
    where the graph must not depend on it. Cached per tensor, and known for the masks layers hand on
    (views of their ``valid``): deep in a network most masks are all valid, and then statistics, norms
    and unions take their shortcuts.
    """
    if mask.device.type != "cpu" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    known = _known(mask, "all_valid")
    if known is not None:
        return known
    return _checkable(mask) and _classify(mask)[1]


_TRUE = torch.ones((), dtype=torch.bool)


@torch.jit.unused
def _mark_binary_eager(mask: Tensor, valid: Tensor) -> None:
    if not (torch.compiler.is_compiling() or torch.jit.is_tracing() or mask.is_inference()):
        _facts.put(mask, "binary", (_TRUE,))
        if mask.device.type == "cpu":
            _facts.put(mask, "all_valid", (torch.count_nonzero(valid) == valid.numel(),))


def mark_binary(mask: Tensor, valid: Tensor) -> Tensor:
    """Record that ``mask`` (and every view of it) holds only 0 and 1, so that :func:`apply_mask` and
    :func:`all_valid` need not check it; ``valid`` is the same mask as a bool tensor, from which whether
    it is all valid is read. Returns ``mask``."""
    if not torch.jit.is_scripting():
        _mark_binary_eager(mask, valid)
    return mask


@torch.jit.unused
def _mark_clean_eager(x: Tensor, mask: Tensor) -> None:
    if not (torch.compiler.is_compiling() or torch.jit.is_tracing() or x.is_inference() or mask.is_inference()):
        _clean_cache.put(x, "clean", (mask,))


def mark_clean(x: Tensor, mask: Tensor) -> Tensor:
    """Record that ``x`` is exactly 0 wherever ``mask`` is 0, so that ``apply_mask(x, mask)`` with this very
    mask tensor returns ``x`` itself while neither is edited; returns ``x``.

    Only a promise about the zeros: where ``mask`` holds weights other than 0 and 1, ``apply_mask`` still
    multiplies by them. Marks are skipped while scripting, tracing or compiling (the graph masks, and fuses).

    Example::

        >>> y = mark_clean(apply_mask(x, m) * 2, m)   # doubling keeps the zeros
        >>> apply_mask(y, m) is y
        True
    """
    if not torch.jit.is_scripting():
        _mark_clean_eager(x, mask)
    return x


def _is_clean(x: Tensor, mask: Tensor) -> bool:
    entry = _clean_cache.peek(x, "clean")
    return entry is not None and entry[0] is mask and _is_binary(mask)


def _all_finite(x: Tensor) -> bool:
    """Whether ``x`` holds no NaN or inf (then ``0 * x`` is a zero everywhere), from one read of ``x``:
    its sum is finite only then (or it overflowed: a false "no"). Asked on the CPU only, where the
    answer costs no wait, and where it saves a mask-sized bit pattern for masks as large as ``x``."""
    if x.device.type != "cpu":
        return False
    return bool(torch.isfinite(x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)))


def _and_bits(x: Tensor, bits: Tensor) -> Tensor:
    return torch.bitwise_and(x.view(bits.dtype), bits).view(x.dtype)


def _masked(x: Tensor, mask: Tensor, soft: bool) -> Tensor:
    """``x * mask`` with exact zeros in the holes; ``soft``: multiply by the mask's weights, otherwise a
    binary mask only selects."""
    if not soft:
        return _and_bits(x, _keep_bits(mask, x.dtype, binary=True))
    y = x * mask
    if not _all_finite(x):
        y.view(_INT_VIEW[x.dtype]).bitwise_and_(_keep_bits(mask, x.dtype))
    return y


class _ApplyMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, soft: bool) -> Tensor:
        # the mask is saved rather than its bits: the graph shares it with the layers that made it
        ctx.save_for_backward(mask)
        ctx.soft = soft
        return _masked(x, mask, soft)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        return _ApplyMask.apply(grad, mask, ctx.soft), None, None


def _where_mask(x: Tensor, mask: Tensor) -> Tensor:
    if mask.is_floating_point():
        x = x * mask.to(x.dtype)
    return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


@torch.jit.unused
def _apply_mask_eager(x: Tensor, mask: Tensor) -> Tensor:
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or x.dtype not in _INT_VIEW:
        return _where_mask(x, mask.detach())
    if _is_clean(x, mask) or all_valid(mask):
        return x  # nothing to clear (x * 1 is x, NaN and all)
    binary = _is_binary(mask)
    const = mask.detach()
    const = const if binary else const.to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        y = _ApplyMask.apply(x, const, not binary)
    else:
        y = _masked(x, const, not binary)
    return mark_clean(y, mask) if binary else y


def apply_mask(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Return ``x * mask`` with holes (``mask == 0``) set to exactly 0.

    Args:
        x: floating tensor (N, C, *spatial).
        mask: broadcastable to ``x``; bool/integer masks are binary (nonzero = valid), floating masks
            are weights in [0, 1]. ``None`` returns ``x`` unchanged. No gradient flows into the mask.

    Example::

        >>> x = torch.tensor([1.0, float("nan"), 3.0]); m = torch.tensor([1.0, 0.0, 0.5])
        >>> apply_mask(x, m)
        tensor([1.0000, 0.0000, 1.5000])
    """
    if mask is None:
        return x
    if torch.jit.is_scripting():
        return _where_mask(x, mask.detach())
    return _apply_mask_eager(x, mask)
