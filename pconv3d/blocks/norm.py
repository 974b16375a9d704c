"""Mask-aware instance, batch and group normalization.

Each class subclasses the matching ``torch.nn`` norm (same constructor, parameters, buffers and
``state_dict`` keys, so MONAI weights load strictly) and adds a mask to ``forward``::

    forward(input, mask=None) -> Tensor

Statistics (per instance and channel, per channel over the batch, or per instance and group) are the
mean and biased variance of the *valid* voxels only (``mask != 0``); holes are never read, whatever they
hold (NaN and inf too), and are exactly 0 in the output. ``mask=None`` means every voxel is valid: then,
and for masks without a hole, the torch norm's own kernels run (fewer passes). A region with no valid
voxel normalizes to 0, never NaN. Running statistics, where
tracked, are updated from valid voxels with torch's rules (unbiased variance, ``momentum``; ``momentum=None``
is a cumulative average for instance norm too) and used in eval mode; instances without a valid voxel
take no part in the update, and a batch without any leaves the running statistics unchanged.

Masks are ``(1 or N, 1 or C, *spatial)``: bool/integer masks are binary (nonzero = valid); floating masks
must hold 0/1, as the masks partial convolutions return do (they are used as they are, so that autograd
keeps no second copy). Soft weights are for the first partial convolution, not for norms.
"""


from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pconv3d.masks.apply import apply_mask, mark_clean
from pconv3d.masks.carrier import MaskLike, all_valid, tensor_of
from pconv3d.masks.counting import stat_dtype

__all__ = [
    "MaskedNorm",
    "MaskedInstanceNorm1d",
    "MaskedInstanceNorm2d",
    "MaskedInstanceNorm3d",
    "MaskedBatchNorm1d",
    "MaskedBatchNorm2d",
    "MaskedBatchNorm3d",
    "MaskedGroupNorm",
    "masked_moments",
]


class MaskedMoments(NamedTuple):
    """Moments of a tensor over its valid voxels (see :func:`masked_moments`), all with reduced dims kept."""

    mean: Tensor
    var: Tensor
    centered: Tensor
    count: Tensor


def masked_moments(x: Tensor, valid: Tensor, dims: List[int], mask: Optional[MaskLike] = None) -> MaskedMoments:
    """Mean and biased variance of ``x`` over ``dims``, counting only voxels where ``valid == 1``.

    Args:
        x: floating tensor; its holes may hold anything (NaN and inf too): they are never read.
        valid: binary (0/1) mask of ``x``'s dtype, broadcastable to ``x`` (size 1 or ``x``'s size in every
            dim). It is the one tensor autograd keeps for the masking, shared by reference.
        dims: the reduced dims.
        mask: the carrier ``valid`` came from, if any (then a tensor it knows to hold zeros in its holes
            is not masked again).

    Returns ``mean``, ``var`` and ``count`` (the number of valid elements) with the reduced dims kept, in
    :func:`~pconv3d.masks.counting.stat_dtype` (half-precision sums overflow and round), and
    ``centered = x - mean`` in ``x``'s dtype with holes exactly 0. Where nothing is valid the mean and
    variance are 0 (never NaN, gradients included).
    """
    acc = stat_dtype(x.dtype)
    count = valid.sum(dims, keepdim=True, dtype=acc)
    broadcast = 1  # elements of x per element of valid over the reduced dims
    for d in dims:
        if valid.shape[d] == 1:
            broadcast *= x.shape[d]
    count = count * broadcast
    denom = count.clamp_min(1.0)
    xm = apply_mask(x, valid if mask is None else mask)
    mean = xm.sum(dims, keepdim=True, dtype=acc) / denom
    # xm - mean on valid voxels, 0 in holes: one pass
    centered = torch.addcmul(xm, mean.to(x.dtype), valid, value=-1.0)
    # one pass, no squared temporary; its gradient is 2 * centered, also where everything is 0
    var = torch.linalg.vector_norm(centered, 2, dims, keepdim=True, dtype=acc).square() / denom
    return MaskedMoments(mean, var, centered, count)


def _channel_view(t: Tensor, dims: int) -> Tensor:
    """A per-channel vector (C,) as (1, C, 1, ...) for a tensor with ``dims`` spatial dims."""
    return t.view([1, -1] + [1] * dims)


class MaskedNorm:
    """Masked normalization shared by every class here (mixed in before the torch norm).

    Subclasses compute the valid-voxel statistics in :meth:`_centered`; this class applies them and the
    affine transform. Autograd keeps one centred tensor per call, as the torch norms keep their input:
    the scale is folded before it meets the data, and the bias is added on valid voxels only.
    """

    def forward(self, input: Tensor, mask: Optional[MaskLike] = None) -> Tensor:
        if self._torch_kernels_apply(mask):
            return self._torch_norm(input)
        spatial = input.dim() - 2
        m = tensor_of(mask)
        if m is None:
            valid = torch.ones([1, 1] + list(input.shape[2:]), dtype=input.dtype, device=input.device)
        elif m.is_floating_point():
            # already 0/1: used as is, and autograd shares it with the conv
            valid = (m.detach() if m.requires_grad else m).to(input.dtype)
        else:
            valid = (m != 0).to(input.dtype)
        centered, rstd = self._centered(input, valid, mask)
        weight, bias = self.weight, self.bias
        scale = rstd if weight is None else rstd * _channel_view(weight, spatial)
        y = centered * scale
        if bias is not None:
            y = torch.addcmul(y, valid, _channel_view(bias, spatial))
        return mark_clean(y, mask)

    def _centered(self, input: Tensor, valid: Tensor, mask: Optional[MaskLike]) -> Tuple[Tensor, Tensor]:
        """``(input - mean)`` with holes exactly 0, and ``1 / sqrt(var + eps)`` per (instance or 1, channel);
        ``valid`` is ``mask`` (a tensor or carrier, ``None`` for all valid) as 0/1 of ``input``'s dtype."""
        raise NotImplementedError

    def _torch_kernels_apply(self, mask: Optional[MaskLike]) -> bool:
        """Whether nothing is missing (no mask, or one known all valid) and the torch norm follows the rules
        here: then its own kernels give the same result in fewer passes. All torch norms follow them but
        instance norm with ``momentum=None``, which leaves its running statistics as they are (here: a
        cumulative average). Under TorchScript the same rule (:func:`~pconv3d.masks.carrier.all_valid` reads a tensor
        mask as the carrier would), so a scripted network does the eager arithmetic."""
        return not self._cumulative_update() and all_valid(mask)

    def _cumulative_update(self) -> bool:
        """Whether this call updates running statistics as a cumulative average (see above)."""
        return False

    def _torch_norm(self, input: Tensor) -> Tensor:
        """Nothing is missing: the torch norm's own kernel (its functional form, as its ``forward`` calls
        it, so that scripting compiles it too)."""
        raise NotImplementedError


class _MaskedRunningNorm(MaskedNorm):
    """Instance and batch norm: per-channel statistics over ``_stat_dims``, optional running statistics."""

    def _stat_dims(self, input: Tensor) -> List[int]:
        raise NotImplementedError

    def _centered(self, input: Tensor, valid: Tensor, mask: Optional[MaskLike]) -> Tuple[Tensor, Tensor]:
        running_mean, running_var = self.running_mean, self.running_var
        if self.training or running_mean is None or running_var is None:
            mean, var, centered, count = masked_moments(input, valid, self._stat_dims(input), mask)
            if self.training and running_mean is not None and running_var is not None:
                self._update_running_stats(running_mean, running_var, mean, var, count)
            return centered, torch.rsqrt(var + self.eps).to(input.dtype)
        spatial = input.dim() - 2
        masked = apply_mask(input, valid if mask is None else mask)
        centered = torch.addcmul(masked, _channel_view(running_mean, spatial), valid, value=-1.0)
        return centered, _channel_view(torch.rsqrt(running_var + self.eps), spatial)

    def _update_running_stats(
        self, running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count: Tensor
    ) -> None:
        channels = running_mean.shape[0]
        with torch.no_grad():
            count = count.expand_as(mean).reshape(-1, channels)
            unbiased = var.reshape(-1, channels) * count / (count - 1).clamp_min(1.0)
            # instance norm averages the per-instance statistics over the batch, as torch does, counting
            # only instances with valid voxels; a channel with none anywhere keeps its running statistics
            seen = (count > 0).to(mean.dtype)
            n_seen = seen.sum(0)
            batch_mean = ((mean.reshape(-1, channels) * seen).sum(0) / n_seen.clamp_min(1.0)).to(running_mean.dtype)
            batch_var = ((unbiased * seen).sum(0) / n_seen.clamp_min(1.0)).to(running_var.dtype)
            num_batches_tracked = self.num_batches_tracked
            if num_batches_tracked is not None:
                num_batches_tracked.add_(1)
            momentum = self.momentum
            if momentum is not None:
                factor = torch.full_like(running_mean, momentum)
            elif num_batches_tracked is not None:  # cumulative moving average
                factor = (1.0 / num_batches_tracked).to(running_mean.dtype).expand_as(running_mean)
            else:
                return
            factor = factor * (n_seen > 0).to(running_mean.dtype)
            running_mean.lerp_(batch_mean, factor)
            running_var.lerp_(batch_var, factor)


class _MaskedInstanceNorm(_MaskedRunningNorm):
    def _stat_dims(self, input: Tensor) -> List[int]:
        return list(range(2, input.dim()))

    def _cumulative_update(self) -> bool:
        return self.training and self.track_running_stats and self.momentum is None

    def _torch_norm(self, input: Tensor) -> Tensor:
        momentum = self.momentum if self.momentum is not None else 0.0  # None (cumulative) never comes here
        return F.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                               self.training or not self.track_running_stats, momentum, self.eps)


class _MaskedBatchNorm(_MaskedRunningNorm):
    def _stat_dims(self, input: Tensor) -> List[int]:
        return [0] + list(range(2, input.dim()))

    def _torch_norm(self, input: Tensor) -> Tensor:
        # torch's BatchNorm.forward, step for step
        momentum = self.momentum
        factor = 0.0 if momentum is None else momentum
        num_batches_tracked = self.num_batches_tracked
        if self.training and self.track_running_stats and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
            factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if tracked else None, self.running_var if tracked else None,
                            self.weight, self.bias, use_batch_stats, factor, self.eps)


class MaskedInstanceNorm1d(_MaskedInstanceNorm, nn.InstanceNorm1d):
    """``nn.InstanceNorm1d`` over valid voxels only; ``forward(input, mask=None)`` (see the module doc).

    Example::

        >>> norm = MaskedInstanceNorm1d(4, affine=True)
        >>> y = norm(torch.randn(2, 4, 10), torch.rand(2, 1, 10) > 0.3)
    """


class MaskedInstanceNorm2d(_MaskedInstanceNorm, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` over valid voxels only; ``forward(input, mask=None)`` (see the module doc)."""


class MaskedInstanceNorm3d(_MaskedInstanceNorm, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` over valid voxels only; ``forward(input, mask=None)`` (see the module doc).

    Example::

        >>> norm = MaskedInstanceNorm3d(8)
        >>> y = norm(torch.randn(2, 8, 16, 16, 16), torch.rand(2, 1, 16, 16, 16) > 0.3)
    """


class MaskedBatchNorm1d(_MaskedBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over valid voxels only; ``forward(input, mask=None)`` (see the module doc)."""


class MaskedBatchNorm2d(_MaskedBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over valid voxels only; ``forward(input, mask=None)`` (see the module doc)."""


class MaskedBatchNorm3d(_MaskedBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` over valid voxels only; ``forward(input, mask=None)`` (see the module doc).

    Example::

        >>> norm = MaskedBatchNorm3d(8)
        >>> y = norm(torch.randn(2, 8, 16, 16, 16), torch.rand(2, 1, 16, 16, 16) > 0.3)
    """


class MaskedGroupNorm(MaskedNorm, nn.GroupNorm):
    """``nn.GroupNorm`` over valid voxels only; ``forward(input, mask=None)`` (see the module doc).

    Example::

        >>> norm = MaskedGroupNorm(num_groups=2, num_channels=8)
        >>> y = norm(torch.randn(2, 8, 16, 16, 16), torch.rand(2, 1, 16, 16, 16) > 0.3)
    """

    def _torch_norm(self, input: Tensor) -> Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def _centered(self, input: Tensor, valid: Tensor, mask: Optional[MaskLike]) -> Tuple[Tensor, Tensor]:
        grouped, valid_grouped = self._group(input, valid)
        _, var, centered, _ = masked_moments(grouped, valid_grouped, list(range(2, grouped.dim())))
        # one rstd per group, repeated for the group's channels: (N, C, 1, ...)
        ones = [1] * (input.dim() - 2)
        rstd = torch.rsqrt(var + self.eps).to(input.dtype).expand([grouped.shape[0], self.num_groups, grouped.shape[2]] + ones)
        return centered.reshape(input.shape), rstd.reshape([input.shape[0], input.shape[1]] + ones)

    def _group(self, input: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, C, *s) as (N, G, C // G, *s); the mask likewise, or (N, 1, 1, *s) if single-channel."""
        spatial = list(input.shape[2:])
        grouped = input.reshape([input.shape[0], self.num_groups, -1] + spatial)
        if valid.shape[1] == 1:
            return grouped, valid.unsqueeze(1)
        return grouped, valid.reshape([valid.shape[0], self.num_groups, -1] + list(valid.shape[2:]))
