"""Validity masks: derived from an image (non-finite voxels, a fill value, missing slices) or given new holes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor, ensure_tuple

from pconv3d.transforms._utils import _as_mask, _weights
from pconv3d.transforms.checks import check_mask_values, check_same_grid, check_volume
from pconv3d.transforms.filling import FillHoles

__all__ = ["combine_mask", "DeriveMask", "DeriveMaskd"]


def combine_mask(mask: NdarrayOrTensor | None, keep: torch.Tensor | None, img: NdarrayOrTensor) -> NdarrayOrTensor:
    """A validity mask (all-valid when ``None``) with new holes where a boolean ``keep`` is False; weights
    elsewhere are kept.

    Args:
        mask: validity mask ``(1, X, Y, Z)`` of ``img``, or ``None``.
        keep: boolean ``(1, X, Y, Z)``, or ``None`` for no new holes.
        img: the image ``(C, X, Y, Z)`` (grid check, and metadata of a new mask).

    Returns:
        float32 mask with ``mask``'s metadata, or ``img``'s for a new one.

    Example:
        >>> combine_mask(None, torch.tensor([True, False]).reshape(1, 2, 1, 1), torch.ones(1, 2, 1, 1)).flatten()
        tensor([1., 0.])
    """
    check_volume(img)
    if mask is None:
        device = img.device if isinstance(img, torch.Tensor) else None
        weights = torch.ones((1, *img.shape[1:]), dtype=torch.float32, device=device)
    else:
        weights = _weights(mask, img)
    if keep is not None:
        weights = weights * keep.to(weights.device)
    return _as_mask(weights, img if mask is None else mask)


class DeriveMask(Transform):
    """Validity mask of an image from what it holds: non-finite voxels, a fill value, missing slices.

    A voxel is missing when any channel is NaN/inf (``nonfinite``) or equals ``fill_value``; a whole slice along
    one of ``slice_axes`` is missing when none of its voxels is valid or, with ``constant_slices``, every channel is
    constant over it (zero-filled, all-fill or all-NaN slices of an interleaved or thick-slice acquisition).
    Slices listed in ``missing_slices`` (or given to ``__call__``, e.g. from metadata) are missing, and an existing
    mask (e.g. loaded from a mask file) is combined with a logical AND.

    Run it before any resampling: interpolation smears NaN and fill values into valid voxels. Constant-slice
    detection also flags constant background slices at the edge of the field of view (harmless for
    partial convolution: those voxels carry no information), so it is opt-in.

    Args:
        nonfinite: NaN and +-inf voxels are missing.
        fill_value: voxels equal to this value are missing (``None``: no fill value).
        slice_axes: spatial axes (0, 1, 2 for X, Y, Z) along which to detect missing slices; ``None`` for none.
        constant_slices: a slice whose channels are each constant counts as missing (else only all-invalid ones).
        missing_slices: indices of slices known to be missing along ``missing_slices_axis``.
        missing_slices_axis: spatial axis the indices refer to. Default 2 (Z).

    Example:
        >>> img = torch.ones(1, 4, 4, 6); img[0, :, :, 2] = float("nan")
        >>> DeriveMask()(img)[0, 0, 0]
        tensor([1., 1., 0., 1., 1., 1.])
        >>> DeriveMask(missing_slices=[5])(img)[0, 0, 0]
        tensor([1., 1., 0., 1., 1., 0.])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        nonfinite: bool = True,
        fill_value: float | None = None,
        slice_axes: Sequence[int] | int | None = None,
        constant_slices: bool = True,
        missing_slices: Sequence[int] | None = None,
        missing_slices_axis: int = 2,
    ) -> None:
        self.nonfinite = nonfinite
        self.fill_value = fill_value
        self.slice_axes = tuple(ensure_tuple(slice_axes)) if slice_axes is not None else ()
        for axis in (*self.slice_axes, missing_slices_axis):
            if axis not in (0, 1, 2):
                raise ValueError(f"spatial axes are 0, 1 or 2, got {axis}")
        self.constant_slices = constant_slices
        self.missing_slices = missing_slices
        self.missing_slices_axis = missing_slices_axis

    def __call__(
        self,
        img: NdarrayOrTensor,
        mask: NdarrayOrTensor | None = None,
        missing_slices: Sequence[int] | None = None,
    ) -> NdarrayOrTensor:
        """The mask ``(1, X, Y, Z)`` of ``img`` ``(C, X, Y, Z)``.

        Args:
            img: the image.
            mask: an existing validity mask (same grid as ``img``): its weights are kept where ``img`` is valid.
            missing_slices: slice indices along ``missing_slices_axis``; override the constructor's list.
        """
        check_volume(img)
        x = convert_to_tensor(img, track_meta=False)
        if not x.is_floating_point():
            x = x.float()  # integer images: the comparisons below need inf
        valid = torch.ones(x.shape[1:], dtype=torch.bool, device=x.device)
        if self.nonfinite:
            valid &= torch.isfinite(x).all(0)
        if self.fill_value is not None:
            valid &= (x != self.fill_value).all(0)
        for axis in self.slice_axes:
            valid &= self._present_slices(x, valid, axis)
        slices = self.missing_slices if missing_slices is None else missing_slices
        if slices is not None and len(slices):
            valid &= self._listed_slices(x, slices)
        if mask is None:
            return _as_mask(valid[None], img)
        return _as_mask(_weights(mask, img) * valid, img)

    def _present_slices(self, x: torch.Tensor, valid: torch.Tensor, axis: int) -> torch.Tensor:
        """Boolean, broadcastable to the spatial shape: False for the missing slices along ``axis``."""
        others = tuple(d for d in (1, 2, 3) if d != axis + 1)
        # per channel and slice: min/max over valid voxels (+inf/-inf when there are none)
        lo = torch.where(valid, x, torch.full_like(x, float("inf"))).amin(dim=others)
        hi = torch.where(valid, x, torch.full_like(x, float("-inf"))).amax(dim=others)
        present = (hi > lo).any(0) if self.constant_slices else (hi >= lo).any(0)
        shape = [1, 1, 1]
        shape[axis] = -1
        return present.reshape(shape)

    def _listed_slices(self, x: torch.Tensor, slices: Sequence[int]) -> torch.Tensor:
        axis = self.missing_slices_axis
        n = x.shape[axis + 1]
        idx = [int(i) for i in slices]
        bad = [i for i in idx if not -n <= i < n]
        if bad:
            raise ValueError(f"missing slice indices {bad} out of range for {n} slices along spatial axis {axis}")
        present = torch.ones(n, dtype=torch.bool, device=x.device)
        present[idx] = False
        shape = [1, 1, 1]
        shape[axis] = -1
        return present.reshape(shape)


class DeriveMaskd(MapTransform):
    """Derive the validity mask of image keys (see :class:`DeriveMask`) and zero their holes.

    The masks of all ``keys`` and an existing ``d[mask_key]`` (e.g. a loaded mask file) are combined with a
    logical AND into ``d[mask_key]``; then every image key is zero-filled there. Missing-slice indices can come
    from the constructor, from ``d[missing_slices_key]`` or from the first image's metadata under that name (a
    list of ints or a string ``"3,7,12"``). Run it before any resampling.

    Args:
        keys: image keys.
        mask_key: key of the mask (read if present, always written).
        nonfinite: NaN and +-inf voxels are missing.
        fill_value: voxels equal to this value are missing.
        slice_axes: spatial axes along which to detect missing (constant or all-invalid) slices.
        constant_slices: constant slices count as missing (else only all-invalid ones).
        missing_slices: slice indices known to be missing along ``missing_slices_axis``.
        missing_slices_axis: spatial axis of the slice indices. Default 2.
        missing_slices_key: data key, or metadata field of the first image, holding missing slice indices.
        fill: zero-fill the image keys at the holes.
        allow_missing_keys: skip absent image keys.

    Example:
        >>> img = torch.ones(1, 4, 4, 4); img[0, 0, 0, 0] = float("nan")
        >>> d = DeriveMaskd("image")({"image": img})
        >>> float(d["mask"].sum()), float(d["image"].sum())
        (63.0, 63.0)
    """

    backend = DeriveMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        nonfinite: bool = True,
        fill_value: float | None = None,
        slice_axes: Sequence[int] | int | None = None,
        constant_slices: bool = True,
        missing_slices: Sequence[int] | None = None,
        missing_slices_axis: int = 2,
        missing_slices_key: str | None = None,
        fill: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.deriver = DeriveMask(
            nonfinite, fill_value, slice_axes, constant_slices, missing_slices, missing_slices_axis
        )
        self.missing_slices_key = missing_slices_key
        self.filler = FillHoles() if fill else None

    def _listed_slices(self, d: Mapping[Hashable, Any], img: NdarrayOrTensor) -> Sequence[int] | None:
        if self.missing_slices_key is None:
            return None
        value = d.get(self.missing_slices_key)
        if value is None and isinstance(img, MetaTensor):
            value = img.meta.get(self.missing_slices_key)
        if isinstance(value, str):
            value = [int(v) for v in value.replace(";", ",").split(",") if v.strip()]
        return None if value is None else [int(v) for v in np.asarray(value).ravel()]

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        mask = d.get(self.mask_key)
        slices = self._listed_slices(d, d[keys[0]])
        for key in keys:
            check_volume(d[key], f"'{key}'")
            if mask is not None:
                check_volume(mask, f"'{self.mask_key}'")
                check_same_grid(mask, d[key], f"'{self.mask_key}'", f"'{key}'")
                check_mask_values(mask, f"'{self.mask_key}'")
            mask = self.deriver(d[key], mask=mask, missing_slices=slices)
        d[self.mask_key] = mask
        if self.filler is not None:
            for key in keys:
                d[key] = self.filler(d[key], mask)
        return d
