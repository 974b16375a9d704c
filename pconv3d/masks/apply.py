"""Applying a mask: ``x * mask`` where every hole becomes an exact zero, whatever it held (NaN and inf too).

Plain multiplication leaks (``nan * 0 = nan``) and ``torch.where`` is several times slower than a multiply
on CPU, so eager mode clears holes with a bitwise AND on the float bits: valid voxels keep their exact
bits, holes become +0.0, at the cost of one multiply. In scripted, traced, exported and compiled graphs
the same result is expressed with ``torch.where``, which those compilers handle (and fuse).
The mask is treated as a constant: no gradient flows into it.

Inside a network most tensors already hold zeros in their holes: every partial block returns them so and
says so to the carrier it hands on (:func:`mark_clean`); :func:`apply_mask` then returns such a tensor as
it is, which saves a pass, a temporary and (in training) a saved copy per layer. With a plain tensor mask
nothing is remembered: the facts live in the carrier, and only there.
"""

from typing import Optional

import torch
from torch import Tensor

from pconv3d.masks.carrier import Mask, MaskLike, tensor_of
from pconv3d.masks.mode import execution_mode

__all__ = ["apply_mask", "mark_clean"]

_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def apply_mask(x: Tensor, mask: Optional[MaskLike]) -> Tensor:
    """Return ``x * mask`` with holes (``mask == 0``) set to exactly 0.

    Args:
        x: floating tensor ``(N, C, *spatial)``.
        mask: broadcastable to ``x``, a tensor or a :class:`~pconv3d.masks.carrier.Mask`; bool/integer masks
            are binary (nonzero = valid), floating masks are weights in [0, 1]. ``None`` returns ``x``
            unchanged. No gradient flows into the mask.

    Example::

        >>> x = torch.tensor([1.0, float("nan"), 3.0]); m = torch.tensor([1.0, 0.0, 0.5])
        >>> apply_mask(x, m)
        tensor([1.0000, 0.0000, 1.5000])
    """
    t = tensor_of(mask)
    if t is None:
        return x
    if execution_mode() != "eager":
        return _where_mask(x, t.detach())
    return _apply_mask_eager(x, mask)


def mark_clean(x: Tensor, mask: Optional[MaskLike]) -> Tensor:
    """Tell ``mask``, if it is a :class:`~pconv3d.masks.carrier.Mask`, that ``x`` is exactly 0 wherever it
    is 0 (:meth:`~pconv3d.masks.carrier.Mask.mark_zeros_in_holes`), so that ``apply_mask(x, mask)`` returns
    ``x`` itself while ``x`` is not edited; returns ``x``.

    Only a promise about the zeros: where ``mask`` holds weights other than 0 and 1, ``apply_mask`` still
    multiplies by them. A plain tensor mask remembers nothing.

    Example::

        >>> m = Mask(torch.tensor([1.0, 0.0, 1.0]))
        >>> y = mark_clean(apply_mask(torch.tensor([1.0, float("nan"), 3.0]), m) * 2, m)   # doubling keeps zeros
        >>> apply_mask(y, m) is y
        True
    """
    if mask is None:
        return x
    if isinstance(mask, Tensor):
        return x
    return mask.mark_zeros_in_holes(x)


@torch.jit.unused
def _apply_mask_eager(x: Tensor, mask: Optional[MaskLike]) -> Tensor:
    carrier = Mask.of(mask)
    if x.dtype not in _INT_VIEW:
        return _where_mask(x, carrier.tensor.detach())
    if carrier.all_valid or carrier.has_zeros_in_holes(x):
        return x  # nothing to clear (x * 1 is x, NaN and all)
    binary = carrier.binary
    const = carrier.tensor.detach()
    const = const if binary else const.to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        y = _ApplyMask.apply(x, const, not binary)
    else:
        y = _masked(x, const, not binary)
    return carrier.mark_zeros_in_holes(y) if binary else y


def _where_mask(x: Tensor, mask: Tensor) -> Tensor:
    if mask.is_floating_point():
        x = x * mask.to(x.dtype)
    return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _keep_bits(mask: Tensor, dtype: torch.dtype, binary: bool = False) -> Tensor:
    """All-ones bit pattern (-1) where ``mask != 0``, 0 in holes, as the integer twin of ``dtype``.

    A bool mask, or a floating one known to hold only 0 and 1 (``binary``), converts directly; integer
    masks are compared, since any nonzero value (3 too) means valid.
    """
    direct = mask.dtype == torch.bool or (binary and mask.is_floating_point())
    return (mask if direct else mask != 0).to(_INT_VIEW[dtype], copy=True).neg_()  # never the caller's mask


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
