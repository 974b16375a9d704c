"""The mask carrier: a validity mask with what is known about it, handed from layer to layer in one call.

What "valid" means, everywhere in pconv3d (transforms, layers, blocks, networks, losses):

* a **binary** mask (bool or integer dtype) marks a voxel valid where it is nonzero (3 counts as 1);
* a **floating** mask holds weights in [0, 1]: 0 is a hole, anything above 0 is valid data weighted by the
  mask (1 = fully valid). Partial convolutions count weights in their window sums, voxels are selected
  (statistics, crop centres, hole filling) where the weight is nonzero. Values outside [0, 1] or NaN are
  refused where masks enter the library (the transforms).

A :class:`Mask` holds one mask tensor and the facts that let layers skip work:

* ``binary``: the tensor only holds 0 and 1 (always true for bool/integer masks);
* ``all_valid``: every element is 1 (every voxel fully valid);
* which tensor it *vouches for*: the one tensor known to hold exact zeros in every hole of this mask;
* the window statistics computed for it, per layer geometry, so that layers of one geometry that read
  the same carrier count its windows once; and, shared by every carrier of the call (those made from
  one another), the statistics of an all-valid mask, which depend on the geometry only.

Facts are set where they are known: a partial layer knows that its output mask is binary, and that it is
all valid when its input was and every window reaches the image. A fact that was not set is read from
the tensor once, on first use, and only on the CPU (where reading costs no device synchronisation) and
outside tracing and compilation; elsewhere it is taken as unknown (``False``), which only costs speed.

Nothing outlives the carrier: it is an ordinary object that the caller (a network's ``forward``, or a
user who calls many layers with one mask) holds, and it is gone when they let go of it. Every partial
layer and block accepts either a tensor or a carrier in place of a mask and returns its mask the same
way: a tensor for a tensor (or ``None``), a carrier for a carrier. Networks build the carrier once per
call. Under TorchScript, carriers do not exist: masks are plain tensors there (the annotations say
``Tensor`` for that reason), and every shortcut is skipped.

The carrier describes its tensor as it was when the carrier was built: after editing the tensor in place,
build a new one.

Example::

    >>> conv1 = PartialConv3d(1, 4, 3, padding=1)
    >>> conv2 = PartialConv3d(1, 4, 3, padding=1)
    >>> m = Mask(torch.rand(1, 1, 8, 8, 8) > 0.3)   # statistics counted once for both layers
    >>> y1, y2 = conv1(torch.randn(1, 1, 8, 8, 8), m), conv2(torch.randn(1, 1, 8, 8, 8), m)
    >>> m.binary, m.all_valid
    (True, False)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Mask", "as_carrier", "as_given", "tensor_of", "first_channel", "any_channel", "mask_union",
           "mask_intersection", "pad_mask", "shuffle_mask"]


def _graph_mode() -> bool:
    """Tracing or compiling: the graph must not depend on facts read from data, nor record them."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class Mask:
    """A validity mask and what is known about it (see the module doc).

    Args:
        tensor: the mask, ``(N or 1, C or 1, *spatial)``, any dtype (see the module doc for its meaning);
            ``None`` means every voxel valid, with zero padding missing.
        binary: known to hold only 0 and 1 (``None``: read on first use where possible).
        all_valid: known to be 1 everywhere (``None``: read on first use where possible).
    """

    __slots__ = ("tensor", "_binary", "_all_valid", "_clean", "_clean_version", "_memo", "_call", "__weakref__")

    def __init__(self, tensor: Optional[Tensor] = None, *, binary: Optional[bool] = None,
                 all_valid: Optional[bool] = None) -> None:
        self.tensor = tensor
        if tensor is None:
            binary, all_valid = True, True
        elif not tensor.is_floating_point():
            binary = True
        self._binary = binary
        self._all_valid = all_valid
        self._clean: Optional[weakref.ref] = None
        self._clean_version = -1
        self._memo: dict[Hashable, Any] = {}
        self._call: dict[Hashable, Any] = {}  # shared with the carriers made from this one (see `then`)

    @classmethod
    def of(cls, mask: Mask | Tensor | None) -> Mask:
        """``mask`` if it is a carrier already, else a new carrier for it."""
        return mask if isinstance(mask, Mask) else cls(mask)

    def __repr__(self) -> str:
        shape = None if self.tensor is None else list(self.tensor.shape)
        return f"Mask(shape={shape}, binary={self._binary}, all_valid={self._all_valid})"

    @property
    def binary(self) -> bool:
        """Whether the mask holds only 0 and 1 (then masking selects, without multiplying)."""
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
        """Both facts from one look at the tensor, where that costs no device synchronisation, and only
        for single-channel masks (a mask with a channel per input channel is as large as the input:
        reading it would cost what the answer saves)."""
        t = self.tensor
        if t is None or t.device.type != "cpu" or _graph_mode() or (t.dim() > 1 and t.shape[1] != 1):
            return
        with torch.no_grad():
            # counts rather than all(), which is several times slower on CPU
            if not t.is_floating_point() or self._binary:
                binary, ones = True, torch.count_nonzero(t) == t.numel()
            else:
                count = torch.count_nonzero(t == 1)
                binary, ones = bool(torch.count_nonzero(t) == count), count == t.numel()
        self._binary, self._all_valid = binary, bool(ones)

    def vouch(self, x: Tensor) -> Tensor:
        """Record that ``x``, as it is now, holds exact zeros wherever this mask is 0; returns ``x``.

        :func:`~pconv3d.masking.apply_mask` then hands ``x`` back untouched under a binary mask. Only the
        very tensor counts, and only until it is edited in place (its version counter); nothing is
        recorded while tracing or compiling, nor for inference tensors, which have no version counter.
        The carrier holds a weak reference: a vouch never keeps an activation alive.
        """
        if not (_graph_mode() or x.is_inference()):
            self._clean = weakref.ref(x)
            self._clean_version = x._version
        return x

    def vouches_for(self, x: Tensor) -> bool:
        """Whether ``x`` is the tensor :meth:`vouch` recorded, unedited, and the mask is binary."""
        return (self._clean is not None and self._clean() is x and x._version == self._clean_version
                and self.binary)

    def memo(self, key: Hashable, compute: Callable[..., Any], *args: Any) -> Any:
        """``compute(*args)``, once per ``key`` for this carrier: the window statistics of each geometry, the
        mask as they count it."""
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = compute(*args)
        return found

    def call_memo(self, key: Hashable, compute: Callable[..., Any], *args: Any) -> Any:
        """``compute(*args)``, once per ``key`` for every carrier of this call: what does not depend on the
        mask (the statistics of an all-valid mask, per geometry)."""
        found = self._call.get(key)
        if found is None:
            found = self._call[key] = compute(*args)
        return found

    def then(self, tensor: Tensor, *, binary: Optional[bool] = None, all_valid: Optional[bool] = None) -> Mask:
        """A carrier for ``tensor``, a mask computed from this one in the same call (a layer's output, a
        union): a new mask with its own facts, sharing the call's statistics."""
        following = Mask(tensor, binary=binary, all_valid=all_valid)
        following._call = self._call
        return following

    def derive(self, tensor: Tensor) -> Mask:
        """A carrier for ``tensor``, which has the holes and values of this mask (a channel of a mask whose
        channels are alike, the union of its channels, another dtype): the facts and the vouch carry over."""
        derived = self.then(tensor, binary=self._binary, all_valid=self._all_valid)
        derived._clean, derived._clean_version = self._clean, self._clean_version
        return derived


# ---------------------------------------------------------------------------------------------------
# what blocks do with masks, for tensors (TorchScript, or a user's mask) and carriers alike


def as_carrier(mask: Optional[Tensor]) -> Optional[Tensor]:
    """The carrier a block hands its layers: ``mask`` itself under TorchScript, else :meth:`Mask.of`."""
    if torch.jit.is_scripting():
        return mask
    return Mask.of(mask)


def as_given(mask: Tensor, given: Optional[Tensor]) -> Tensor:
    """A block's mask as it returns it: a carrier if it was ``given`` one, else the tensor."""
    if torch.jit.is_scripting():
        return mask
    return mask if isinstance(given, Mask) or not isinstance(mask, Mask) else mask.tensor


def tensor_of(mask: Optional[Tensor]) -> Optional[Tensor]:
    """The mask tensor of a carrier, or ``mask`` itself."""
    if torch.jit.is_scripting():
        return mask
    return mask.tensor if isinstance(mask, Mask) else mask


def first_channel(mask: Tensor) -> Tensor:
    """Channel 0 of a mask whose channels are all alike (a layer's mask per output channel)."""
    if torch.jit.is_scripting():
        return mask[:, :1]
    if not isinstance(mask, Mask):
        return mask[:, :1]
    return mask if mask.tensor.shape[1] == 1 else mask.derive(mask.tensor[:, :1])


def any_channel(mask: Tensor) -> Tensor:
    """Single-channel version of a mask: a voxel is valid if any channel is (weights: the largest)."""
    if torch.jit.is_scripting():
        return mask.amax(1, keepdim=True) if mask.shape[1] > 1 else mask
    if not isinstance(mask, Mask):
        return mask.amax(1, keepdim=True) if mask.shape[1] > 1 else mask
    return mask if mask.tensor.shape[1] == 1 else mask.derive(mask.tensor.amax(1, keepdim=True))


def mask_union(a: Tensor, b: Optional[Tensor]) -> Tensor:
    """Single-channel union of two masks, ``max(a, b)``, in ``a``'s dtype (``b=None``: all valid, so
    ones like ``a``). An all-valid operand is the union itself (its statistics and vouches kept).

    Example::

        >>> mask_union(torch.tensor([[[0.0, 1.0, 0.0]]]), torch.tensor([[[1.0, 0.0, 0.0]]]))
        tensor([[[1., 1., 0.]]])
    """
    if torch.jit.is_scripting():
        a = any_channel(a)
        if b is None:
            return torch.ones_like(a)
        return torch.maximum(a, any_channel(b).to(a.dtype))
    return _union_eager(a, b)


def _union_eager(a: Tensor | Mask, b: Tensor | Mask | None) -> Tensor | Mask:
    carriers = isinstance(a, Mask) or isinstance(b, Mask)
    a, b = Mask.of(any_channel(a)), any_channel(b) if b is not None and tensor_of(b) is not None else None
    if b is None:
        union = a.then(torch.ones_like(a.tensor), binary=True, all_valid=True)
    else:
        b = Mask.of(b)
        if a.all_valid and _covers(a.tensor, b.tensor):
            union = a
        elif b.all_valid and _covers(b.tensor, a.tensor):
            union = b.derive(b.tensor.to(a.tensor.dtype))
        else:
            binary = (a._binary and b._binary) or None  # unknown unless both are known binary
            union = a.then(torch.maximum(a.tensor, b.tensor.to(a.tensor.dtype)), binary=binary)
    return union if carriers else union.tensor


def _covers(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` already has the shape ``a`` and ``b`` broadcast to, so that it can stand for the result."""
    return a.dim() == b.dim() and all(x >= y for x, y in zip(a.shape, b.shape))


def mask_intersection(a: Tensor, b: Optional[Tensor]) -> Tensor:
    """Single-channel intersection of two masks, ``min(a, b)``, in ``a``'s dtype (``b=None``: all valid)."""
    if torch.jit.is_scripting():
        a = any_channel(a)
        return a if b is None else torch.minimum(a, any_channel(b).to(a.dtype))
    carriers = isinstance(a, Mask) or isinstance(b, Mask)
    a = Mask.of(any_channel(a))
    if b is not None and tensor_of(b) is not None:
        b = Mask.of(any_channel(b))
        if not (b.all_valid and _covers(a.tensor, b.tensor)):
            binary = (a._binary and b._binary) or None  # unknown unless both are known binary
            a = a.then(torch.minimum(a.tensor, b.tensor.to(a.tensor.dtype)), binary=binary)
    return a if carriers else a.tensor


def pad_mask(mask: Tensor, pad: list[int], mode: str) -> Tensor:
    """``F.pad`` of a mask (binary masks stay binary; a padded all-valid mask stays all valid in the
    modes that copy it: ``"replicate"``, ``"reflect"`` and ``"circular"``)."""
    if torch.jit.is_scripting():
        return F.pad(mask, pad, mode)
    if not isinstance(mask, Mask):
        return F.pad(mask, pad, mode)
    copies = mode in ("replicate", "reflect", "circular")
    return mask.then(F.pad(mask.tensor, pad, mode), binary=mask._binary, all_valid=mask._all_valid if copies else None)


def shuffle_mask(mask: Tensor, scale_factor: int) -> Tensor:
    """The mask of a pixel shuffle (``monai.networks.utils.pixelshuffle``) of features whose channels share
    ``mask``: every sub-pixel voxel has the validity of the voxel it came from, so each voxel is repeated
    ``scale_factor`` times along every spatial axis (the pixel shuffle of the mask copied to every
    sub-pixel channel). Binary and all-valid masks stay so.

    Example::

        >>> shuffle_mask(torch.tensor([[[1.0, 0.0, 1.0]]]), 2)
        tensor([[[1., 1., 0., 0., 1., 1.]]])
    """
    if torch.jit.is_scripting():
        return _repeat_voxels(mask, scale_factor)
    if not isinstance(mask, Mask):
        return _repeat_voxels(mask, scale_factor)
    return mask.then(_repeat_voxels(mask.tensor, scale_factor), binary=mask._binary, all_valid=mask._all_valid)


def _repeat_voxels(t: Tensor, times: int) -> Tensor:
    for dim in range(2, t.dim()):
        t = t.repeat_interleave(times, dim=dim)
    return t
