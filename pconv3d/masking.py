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

__all__ = ["apply_mask", "mark_clean", "mark_binary"]

_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


_binary_cache = PerTensorCache()
_clean_cache = PerTensorCache(64)


def _keep_bits(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """All-ones bit pattern (-1) where ``mask != 0``, 0 in holes, as the integer twin of ``dtype``."""
    return (mask != 0).to(_INT_VIEW[dtype]).neg_()


def _is_binary(mask: Tensor) -> bool:
    """Whether ``mask`` only holds 0 and 1 (then ``x * mask`` is ``x`` on valid voxels: a pass saved).

    Cached per mask tensor, as the layers of a block all clear holes with the mask the previous layer
    returned; a view of a mask known to be binary is binary too. Floating masks with several channels
    are not checked: the check would cost what it saves.
    """
    if not mask.is_floating_point():
        return True
    base = mask if mask._base is None else mask._base
    known = _binary_cache.peek(base, "binary")
    if known is not None and bool(known[0]):
        return True
    if mask.dim() > 1 and mask.shape[1] > 1:
        return False

    def compute() -> tuple[Tensor]:
        # a normal tensor even in inference mode: the cache records its version counter
        with torch.inference_mode(False), torch.no_grad():
            return (((mask == 0) | (mask == 1)).all(),)

    return bool(_binary_cache.get(mask, "binary", compute)[0])


_TRUE = torch.ones((), dtype=torch.bool)


@torch.jit.unused
def _mark_binary_eager(mask: Tensor) -> None:
    if not (torch.compiler.is_compiling() or torch.jit.is_tracing() or mask.is_inference()):
        _binary_cache.put(mask, "binary", (_TRUE,))


def mark_binary(mask: Tensor) -> Tensor:
    """Record that ``mask`` (and every view of it) holds only 0 and 1, as masks made by thresholding do,
    so that :func:`apply_mask` need not check it; returns ``mask``."""
    if not torch.jit.is_scripting():
        _mark_binary_eager(mask)
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


def _and_bits(x: Tensor, bits: Tensor) -> Tensor:
    return torch.bitwise_and(x.view(bits.dtype), bits).view(x.dtype)


class _ApplyMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, soft: bool) -> Tensor:
        # soft: multiply by the mask's weights; otherwise a binary mask only selects
        bits = _keep_bits(mask, x.dtype)
        # the mask is saved rather than its bits: the graph shares it with the layers that made it
        ctx.save_for_backward(mask)
        ctx.soft = soft
        if not soft:
            return _and_bits(x, bits)
        y = x * mask
        y.view(bits.dtype).bitwise_and_(bits)
        return y

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
    if _is_clean(x, mask):
        return x
    binary = _is_binary(mask)
    const = mask.detach()
    y = _ApplyMask.apply(x, const if binary else const.to(x.dtype), not binary)
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
