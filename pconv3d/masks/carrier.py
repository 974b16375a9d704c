"""The mask carrier, :class:`Mask`: a validity mask with what is known about it, handed from layer to layer
in one call; and what blocks do with masks (channels, unions, padding), for tensors and carriers alike.

What "valid" means, everywhere in pconv3d (transforms, layers, blocks, networks, losses): a **binary** mask
(bool or integer) marks a voxel valid where it is nonzero (3 counts as 1); a **floating** mask holds weights
in [0, 1], 0 a hole and anything above 0 valid data of that weight. Partial convolutions count the weights
in their window sums; statistics, crop centres and hole filling select voxels where the weight is nonzero.
The transforms refuse values outside [0, 1] and NaN where masks enter the library.

A mask argument is a ``MaskLike``: a tensor, or (outside TorchScript, which has no carriers) a carrier.
Every function here returns its mask the way it was given one. What a carrier holds, who sets each fact
and why none can go stale: ``docs/design/mask-core.md``.

Example::

    >>> conv1 = PartialConv3d(1, 4, 3, padding=1)
    >>> conv2 = PartialConv3d(1, 4, 3, padding=1)
    >>> m = Mask(torch.rand(1, 1, 8, 8, 8) > 0.3)   # statistics counted once for both layers
    >>> y1, y2 = conv1(torch.randn(1, 1, 8, 8, 8), m), conv2(torch.randn(1, 1, 8, 8, 8), m)
    >>> m.binary, m.all_valid
    (True, False)
"""

import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from pconv3d.masks.mode import execution_mode

__all__ = ["Mask", "all_valid", "as_carrier", "as_given", "tensor_of", "first_channel", "any_channel", "mask_union",
           "mask_intersection", "pad_mask", "shuffle_mask"]


class Mask:
    """A validity mask and what is known about it, for the layers of one call.

    Args:
        tensor: the mask, ``(N or 1, C or 1, *spatial)``, any dtype (see the module doc for its meaning);
            ``None`` means every voxel valid, with zero padding missing.
        binary: known to hold only 0 and 1 (``None``: read on first use where that is cheap).
        all_valid: known to be 1 everywhere (``None``: read on first use where that is cheap).

    The carrier describes its tensor as it was when the carrier was made: after editing the tensor in
    place, make a new one.
    """

    __slots__ = ("tensor", "_binary", "_all_valid", "_zeroed", "_zeroed_version", "_mask_cache", "_call_cache",
                 "__weakref__")

    def __init__(self, tensor: Optional[Tensor] = None, *, binary: Optional[bool] = None,
                 all_valid: Optional[bool] = None) -> None:
        self.tensor = tensor
        if tensor is None:
            binary, all_valid = True, True
        elif not tensor.is_floating_point():
            binary = True
        self._binary = binary
        self._all_valid = all_valid
        # the one tensor known to hold exact zeros in this mask's holes, and its version when that was recorded
        self._zeroed: Optional[weakref.ref] = None
        self._zeroed_version = -1
        self._mask_cache: Dict[Hashable, Any] = {}
        self._call_cache: Dict[Hashable, Any] = {}  # shared by the carriers of one call (see `new_mask`)

    @classmethod
    def of(cls, mask: Union[Tensor, "Mask", None]) -> "Mask":
        """``mask`` if it is a carrier already, else a new carrier for it."""
        return mask if isinstance(mask, Mask) else cls(mask)

    def __repr__(self) -> str:
        shape = None if self.tensor is None else list(self.tensor.shape)
        return f"Mask(shape={shape}, binary={self._binary}, all_valid={self._all_valid})"

    @property
    def binary(self) -> bool:
        """Whether the mask holds only 0 and 1 (then masking selects, without multiplying). ``False`` where
        unknown."""
        if self._binary is None:
            self._read_facts()
        return bool(self._binary)

    @property
    def all_valid(self) -> bool:
        """Whether every element is fully valid (then there is nothing to mask, and statistics, norms and
        unions take their shortcuts). ``False`` where unknown."""
        if self._all_valid is None:
            self._read_facts()
        return bool(self._all_valid)

    def _read_facts(self) -> None:
        """Both facts from one look at the tensor, where :func:`_readable` allows it."""
        t = self.tensor
        if t is None or not _readable(t):
            return
        with torch.no_grad():
            # counts rather than all(), which is several times slower on CPU
            if not t.is_floating_point() or self._binary:
                binary, ones = True, torch.count_nonzero(t) == t.numel()
            else:
                count = torch.count_nonzero(t == 1)
                binary, ones = bool(torch.count_nonzero(t) == count), count == t.numel()
        self._binary, self._all_valid = binary, bool(ones)

    def mark_zeros_in_holes(self, x: Tensor) -> Tensor:
        """Record that ``x``, as it is now, holds exact zeros wherever this mask is 0; returns ``x``.

        :func:`~pconv3d.masks.apply.apply_mask` then hands ``x`` back untouched under a binary mask. Only
        the very tensor counts, and only until it is edited in place (its version counter); nothing is
        recorded in traced or compiled graphs, nor for inference tensors, which have no version counter.
        The carrier holds a weak reference: the record never keeps an activation alive.
        """
        if execution_mode() == "eager" and not x.is_inference():
            self._zeroed = weakref.ref(x)
            self._zeroed_version = x._version
        return x

    def has_zeros_in_holes(self, x: Tensor) -> bool:
        """Whether ``x`` is the tensor :meth:`mark_zeros_in_holes` recorded, unedited, and the mask is binary."""
        return (self._zeroed is not None and self._zeroed() is x and x._version == self._zeroed_version
                and self.binary)

    def cached_for_mask(self, key: Hashable, compute: Callable[..., Any], *args: Any) -> Any:
        """``compute(*args)``, once per ``key`` for this carrier: what depends on this mask (a layer's window
        statistics for each geometry, the mask as they count it)."""
        found = self._mask_cache.get(key)
        if found is None:
            found = self._mask_cache[key] = compute(*args)
        return found

    def cached_for_call(self, key: Hashable, compute: Callable[..., Any], *args: Any) -> Any:
        """``compute(*args)``, once per ``key`` for every carrier of this call: what does not depend on the
        mask (the statistics of an all-valid mask, per geometry)."""
        found = self._call_cache.get(key)
        if found is None:
            found = self._call_cache[key] = compute(*args)
        return found

    def new_mask(self, tensor: Tensor, *, binary: Optional[bool] = None, all_valid: Optional[bool] = None) -> "Mask":
        """A carrier for another mask of the same call (a layer's output mask, a union), with the facts its
        maker knows; it shares this carrier's :meth:`cached_for_call`."""
        made = Mask(tensor, binary=binary, all_valid=all_valid)
        made._call_cache = self._call_cache
        return made

    def same_holes(self, tensor: Tensor) -> "Mask":
        """A carrier for ``tensor``, which has the holes and values of this mask (a channel of a mask whose
        channels are alike, the union of its channels, another dtype): the facts and the record of
        :meth:`mark_zeros_in_holes` carry over."""
        made = self.new_mask(tensor, binary=self._binary, all_valid=self._all_valid)
        made._zeroed, made._zeroed_version = self._zeroed, self._zeroed_version
        return made


if TYPE_CHECKING:
    MaskLike = Union[Tensor, Mask]
else:
    # TorchScript reads the annotations when it compiles, and it has no carriers: there a mask is a tensor
    MaskLike = Tensor


def _readable(t: Tensor) -> bool:
    """Whether facts may be read from ``t``: on the CPU (elsewhere reading waits for the device), outside
    traced, exported and compiled graphs (which must not depend on mask values), and for a single-channel
    mask (one with a channel per input channel is as large as the input: reading it would cost what the
    answer saves). Where they may not, they are unknown, which only costs speed."""
    return t.device.type == "cpu" and execution_mode() in ["eager", "script"] and (t.dim() <= 1 or t.shape[1] == 1)


def all_valid(mask: Optional[MaskLike]) -> bool:
    """Whether every element of ``mask`` is known to be fully valid (``None``: yes): a carrier's
    :attr:`Mask.all_valid`; for a tensor the same rule, read from it where that is cheap (TorchScript
    included, so that a scripted network takes the shortcuts the eager one takes).

    Example::

        >>> all_valid(torch.ones(1, 1, 4)), all_valid(torch.tensor([[[1.0, 0.5]]])), all_valid(None)
        (True, False, True)
    """
    if mask is None:
        return True
    if isinstance(mask, Tensor):
        if not _readable(mask):
            return False
        ones = torch.count_nonzero(mask == 1) if mask.is_floating_point() else torch.count_nonzero(mask)
        return bool(ones == mask.numel())
    return mask.all_valid


# ---------------------------------------------------------------------------------------------------
# what blocks do with masks, for tensors (TorchScript, or a user's mask) and carriers alike


def as_carrier(mask: Optional[MaskLike]) -> Optional[MaskLike]:
    """The carrier a network or block hands its layers (:meth:`Mask.of`); under TorchScript ``mask`` itself."""
    if execution_mode() == "script":
        return mask
    return _carrier_of(mask)


@torch.jit.unused
def _carrier_of(mask: Optional[MaskLike]) -> MaskLike:
    return Mask.of(mask)


def as_given(mask: MaskLike, given: Optional[MaskLike]) -> MaskLike:
    """A block's mask as it returns it: a carrier if it was ``given`` one, else the tensor."""
    if isinstance(mask, Tensor):
        return mask
    return mask if isinstance(given, Mask) else mask.tensor


def tensor_of(mask: Optional[MaskLike]) -> Optional[Tensor]:
    """The mask tensor of a carrier, or ``mask`` itself."""
    if mask is None:
        return None
    if isinstance(mask, Tensor):
        return mask
    return mask.tensor


def first_channel(mask: MaskLike) -> MaskLike:
    """Channel 0 of a mask whose channels are all alike (a layer's mask per output channel)."""
    if isinstance(mask, Tensor):
        return mask[:, :1]
    return mask if mask.tensor.shape[1] == 1 else mask.same_holes(mask.tensor[:, :1])


def any_channel(mask: MaskLike) -> MaskLike:
    """Single-channel version of a mask: a voxel is valid if any channel is (weights: the largest)."""
    if isinstance(mask, Tensor):
        return mask.amax(1, keepdim=True) if mask.shape[1] > 1 else mask
    return mask if mask.tensor.shape[1] == 1 else mask.same_holes(mask.tensor.amax(1, keepdim=True))


def mask_union(a: MaskLike, b: Optional[MaskLike]) -> MaskLike:
    """Single-channel union of two masks, ``max(a, b)``, in ``a``'s dtype (``b=None``: all valid, so
    ones like ``a``). An all-valid operand is the union itself (its statistics and record of zeros kept).

    Example::

        >>> mask_union(torch.tensor([[[0.0, 1.0, 0.0]]]), torch.tensor([[[1.0, 0.0, 0.0]]]))
        tensor([[[1., 1., 0.]]])
    """
    if execution_mode() == "script":
        a = any_channel(a)
        if b is None:
            return torch.ones_like(a)
        return torch.maximum(a, any_channel(b).to(a.dtype))
    return _union_with_facts(a, b)


@torch.jit.unused
def _union_with_facts(a: MaskLike, b: Optional[MaskLike]) -> MaskLike:
    carriers = isinstance(a, Mask) or isinstance(b, Mask)
    a, b = Mask.of(any_channel(a)), any_channel(b) if b is not None and tensor_of(b) is not None else None
    if b is None:
        union = a.new_mask(torch.ones_like(a.tensor), binary=True, all_valid=True)
    else:
        b = Mask.of(b)
        if a.all_valid and _covers(a.tensor, b.tensor):
            union = a
        elif b.all_valid and _covers(b.tensor, a.tensor):
            union = b.same_holes(b.tensor.to(a.tensor.dtype))
        else:
            binary = (a._binary and b._binary) or None  # unknown unless both are known binary
            union = a.new_mask(torch.maximum(a.tensor, b.tensor.to(a.tensor.dtype)), binary=binary)
    return union if carriers else union.tensor


def _covers(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` already has the shape ``a`` and ``b`` broadcast to, so that it can stand for the result."""
    return a.dim() == b.dim() and all(x >= y for x, y in zip(a.shape, b.shape))


def mask_intersection(a: MaskLike, b: Optional[MaskLike]) -> MaskLike:
    """Single-channel intersection of two masks, ``min(a, b)``, in ``a``'s dtype (``b=None``: all valid)."""
    if execution_mode() == "script":
        a = any_channel(a)
        return a if b is None else torch.minimum(a, any_channel(b).to(a.dtype))
    return _intersection_with_facts(a, b)


@torch.jit.unused
def _intersection_with_facts(a: MaskLike, b: Optional[MaskLike]) -> MaskLike:
    carriers = isinstance(a, Mask) or isinstance(b, Mask)
    a = Mask.of(any_channel(a))
    if b is not None and tensor_of(b) is not None:
        b = Mask.of(any_channel(b))
        if not (b.all_valid and _covers(a.tensor, b.tensor)):
            binary = (a._binary and b._binary) or None  # unknown unless both are known binary
            a = a.new_mask(torch.minimum(a.tensor, b.tensor.to(a.tensor.dtype)), binary=binary)
    return a if carriers else a.tensor


def pad_mask(mask: MaskLike, pad: List[int], mode: str) -> MaskLike:
    """``F.pad`` of a mask (binary masks stay binary; a padded all-valid mask stays all valid in the
    modes that copy it: ``"replicate"``, ``"reflect"`` and ``"circular"``)."""
    if isinstance(mask, Tensor):
        return F.pad(mask, pad, mode)
    copies = mode in ("replicate", "reflect", "circular")
    return mask.new_mask(F.pad(mask.tensor, pad, mode), binary=mask._binary,
                         all_valid=mask._all_valid if copies else None)


def shuffle_mask(mask: MaskLike, scale_factor: int) -> MaskLike:
    """The mask of a pixel shuffle (``monai.networks.utils.pixelshuffle``) of features whose channels share
    ``mask``: every sub-pixel voxel has the validity of the voxel it came from, so each voxel is repeated
    ``scale_factor`` times along every spatial axis (the pixel shuffle of the mask copied to every
    sub-pixel channel). Binary and all-valid masks stay so.

    Example::

        >>> shuffle_mask(torch.tensor([[[1.0, 0.0, 1.0]]]), 2)
        tensor([[[1., 1., 0., 0., 1., 1.]]])
    """
    if isinstance(mask, Tensor):
        return _repeat_voxels(mask, scale_factor)
    return mask.new_mask(_repeat_voxels(mask.tensor, scale_factor), binary=mask._binary, all_valid=mask._all_valid)


def _repeat_voxels(t: Tensor, times: int) -> Tensor:
    for dim in range(2, t.dim()):
        t = t.repeat_interleave(times, dim=dim)
    return t
