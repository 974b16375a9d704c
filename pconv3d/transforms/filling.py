"""Filling holes: with a value, by interpolating missing slices, or everywhere with a confidence for each voxel."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple
from scipy import ndimage

from pconv3d.transforms._utils import _MaskedKeysd, _as_mask, _fill, _get_mask, _valid, _weights
from pconv3d.transforms.checks import check_volume

__all__ = [
    "FillHoles",
    "FillHolesd",
    "InterpolateSlices",
    "InterpolateSlicesd",
    "missing_slice_axes",
    "hole_distance",
    "hole_reach",
    "InterpolateMissing",
    "InterpolateMissingd",
]


class FillHoles(Transform):
    """Set the holes of an image (mask 0) to a value, NaN and inf included.

    Args:
        value: the fill value. Default 0 (the convention of pconv3d and of partial convolution).

    Example:
        >>> FillHoles()(torch.full((1, 2, 2, 2), float("nan")), torch.zeros(1, 2, 2, 2)).sum()
        tensor(0.)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        """``img`` ``(C, X, Y, Z)`` with ``value`` wherever ``mask`` ``(1, X, Y, Z)`` is 0."""
        check_volume(img)
        return _fill(img, _valid(mask, img), self.value)


class FillHolesd(_MaskedKeysd):
    """Set the holes (``d[mask_key] == 0``) of image keys to ``value``; see
    :class:`FillHoles`. Use it after interpolating transforms, which blur image values
    into holes while the mask (nearest interpolation) keeps them sharp.

    Args:
        keys: image keys.
        mask_key: key of the validity mask.
        value: fill value. Default 0.
        allow_missing_keys: skip absent keys.

    Example:
        >>> d = FillHolesd("image")({"image": torch.ones(1, 2, 2, 2), "mask": torch.zeros(1, 2, 2, 2)})
        >>> float(d["image"].sum())
        0.0
    """

    def __init__(
        self, keys: KeysCollection, mask_key: str = "mask", value: float = 0.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, FillHoles(value), mask_key, allow_missing_keys)


class InterpolateSlices(Transform):
    """Fill missing slices by linear interpolation between the nearest valid slices along an axis.

    A slice is missing when its mask is 0 everywhere; slices before the first or after the last valid slice
    copy the nearest valid one. Holes that do not span a whole slice are left as they are. This is the
    classical way to feed volumes with missing slices to a network that has no mask input (the baseline of
    the robustness study), not something a partial-convolution network needs.

    Args:
        axis: spatial axis of the slices (0, 1 or 2 for ``(C, X, Y, Z)``).

    Example:
        >>> img = torch.arange(4.0).reshape(1, 1, 1, 4); mask = torch.tensor([1.0, 0, 0, 1]).reshape(1, 1, 1, 4)
        >>> InterpolateSlices(axis=2)(img * mask, mask).flatten()
        tensor([0., 1., 2., 3.])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, axis: int = 2) -> None:
        self.axis = axis

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        check_volume(img)
        present = _slice_presence(_valid(mask, img)[0])[self.axis]
        if present.all() or not present.any():
            return img
        data = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        return convert_to_dst_type(_interpolate_slices(data, present, 1 + self.axis), img, dtype=img.dtype)[0]


def _interpolate_slices(data: torch.Tensor, present: torch.Tensor, dim: int) -> torch.Tensor:
    """``data`` with the slices along ``dim`` that ``present`` marks missing (some, not all) set linearly between
    the nearest present slices, or to the nearest one beyond the ends; only the missing slices are computed."""
    known = torch.nonzero(present).flatten()
    missing = torch.nonzero(~present).flatten()
    # for every missing slice: the present slices just below and above it, and its weight between them
    upper = torch.searchsorted(known, missing).clamp(max=known.numel() - 1)
    lower = (upper - (known[upper] > missing).long()).clamp(min=0)
    lo, hi = known[lower], known[upper]
    w = ((missing - lo).float() / (hi - lo).clamp(min=1).float()).clamp(0, 1)
    shape = [1] * data.dim()
    shape[dim] = -1
    filled = data.index_select(dim, lo) * (1 - w).view(shape) + data.index_select(dim, hi) * w.view(shape)
    return data.index_copy(dim, missing, filled)


class InterpolateSlicesd(_MaskedKeysd):
    """Fill missing slices of image keys by linear interpolation; see
    :class:`InterpolateSlices`. The mask is left as it is.

    Args:
        keys: image keys.
        mask_key: key of the validity mask.
        axis: spatial axis of the slices.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "mask", axis: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, InterpolateSlices(axis), mask_key, allow_missing_keys)


def _slice_presence(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each spatial axis of a boolean ``valid`` ``(X, Y, Z)``: which of its slices hold at least one valid
    voxel (boolean vectors of length X, Y and Z, on ``valid``'s device; two passes over the volume)."""
    across = valid.amax(0)  # (Y, Z)
    return valid.flatten(1).amax(1), across.amax(1), across.amax(0)


def _along(vector: torch.Tensor, axis: int) -> torch.Tensor:
    """A per-slice ``vector`` of spatial ``axis`` as a view that broadcasts against ``(X, Y, Z)``."""
    return vector.view([-1 if a == axis else 1 for a in range(3)])


def _missing_axes(presence: Sequence[torch.Tensor]) -> tuple[int, ...]:
    return tuple(axis for axis, present in enumerate(presence) if present.any() and not present.all())


def missing_slice_axes(mask: NdarrayOrTensor) -> tuple[int, ...]:
    """Spatial axes (0, 1, 2) along which at least one whole slice of ``mask`` ``(1, X, Y, Z)`` is missing
    while another is not: the axes a slice interpolation can fill.

    Example:
        >>> m = torch.ones(1, 4, 4, 6); m[..., 2] = 0
        >>> missing_slice_axes(m)
        (2,)
    """
    return _missing_axes(_slice_presence(convert_to_tensor(mask, track_meta=False)[0] != 0))


def hole_distance(valid: torch.Tensor) -> torch.Tensor:
    """Euclidean distance (voxels, float32) from each voxel of a spatial boolean ``valid`` ``(X, Y, Z)`` to the
    nearest valid voxel: 0 on valid voxels.

    Where every hole is made of whole slices (along one axis or several), the valid voxels are the product of the
    present slices of each axis, so the nearest one is found axis by axis: the distance is the root of the sum of
    each axis's squared one-dimensional distance to its nearest present slice. That is computed in torch on
    ``valid``'s device, exactly what the full transform gives and a fraction of its time. Other holes take scipy's
    exact Euclidean distance transform.

    Example:
        >>> valid = torch.ones(2, 2, 5, dtype=torch.bool); valid[..., 1:4] = False
        >>> hole_distance(valid)[0, 0]
        tensor([0., 1., 2., 1., 0.])
    """
    return _hole_distance(valid, _slice_presence(valid)).expand(valid.shape).contiguous()


def _hole_distance(valid: torch.Tensor, presence: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`hole_distance`, given ``valid``'s presence of slices (:func:`_slice_presence`), and where the holes
    are slices along one axis (or none) only broadcastable to ``valid``: a vector along that axis, so that what is
    computed from it costs a slice's worth, not a volume's."""
    product = _along(presence[0], 0) & _along(presence[1], 1) & _along(presence[2], 2)  # valid if only slices miss
    if valid.any() and torch.equal(valid, product):
        distances = [_along(_slice_distance(presence[axis]), axis) for axis in _missing_axes(presence)]
        if len(distances) <= 1:  # along one axis (or none): integers, exact in float32
            return distances[0].to(torch.float32) if distances else valid.new_zeros((1, 1, 1), dtype=torch.float32)
        squared = sum(d**2 for d in distances)
        return squared.expand(valid.shape).to(torch.float64).sqrt().to(torch.float32)  # rounded as scipy's is
    hole = ~valid.cpu().numpy()
    return torch.as_tensor(ndimage.distance_transform_edt(hole), dtype=torch.float32, device=valid.device)


def hole_reach(valid: torch.Tensor) -> float:
    """How far the holes of a spatial boolean ``valid`` ``(X, Y, Z)`` reach: the largest distance (voxels) from a
    missing voxel to the nearest valid one (:func:`hole_distance`), 0 with nothing missing. Interpolation fills a
    hole well where this is small (thin slices, small boxes) and guesses where it is large (slabs, large regions).

    Example:
        >>> valid = torch.ones(9, 9, 9, dtype=torch.bool); valid[..., 2:7] = False  # a slab of 5 slices
        >>> hole_reach(valid), hole_reach(torch.ones(2, 2, 2, dtype=torch.bool))
        (3.0, 0.0)
    """
    return float(_hole_distance(valid, _slice_presence(valid)).max()) if not valid.all() else 0.0


def _slice_distance(present: torch.Tensor) -> torch.Tensor:
    """Per slice, the distance in slices to the nearest present one (at least one is present)."""
    n = present.numel()
    index = torch.arange(n, device=present.device)
    far = torch.full_like(index, 2 * n)
    before = torch.where(present, index, -far).cummax(0).values  # last present slice at or before each slice
    after = torch.where(present, index, far).flip(0).cummin(0).values.flip(0)  # first present at or after
    return torch.minimum(index - before, after - index)


class InterpolateMissing(Transform):
    """Fill every missing voxel from the acquired ones, and give each filled voxel a confidence in (0, 1).

    1. Whole missing slices are interpolated linearly between the nearest acquired slices along each of
       ``axes`` (:class:`InterpolateSlices`; ``None``: every axis along which whole slices are missing,
       detected from the mask).
    2. The holes that remain (masked regions, partial slices) are filled by normalized convolution: the
       mask-weighted Gaussian average of the acquired voxels, at the smallest of sigma = 1, 2, 4, ... voxels
       that reaches them.
    3. With ``soft``, the returned mask keeps the weights of the acquired voxels and gives a filled voxel the
       confidence ``1 / (1 + d / scale)``, ``d`` its Euclidean distance in voxels to the nearest acquired
       voxel: interpolated data counts, in partial convolutions, less the further it is from what was
       measured. Without ``soft`` the mask is returned as it was (for networks without a mask input).

    ``__call__(img, mask)`` returns ``(img, mask)``; a mask without any acquired voxel is returned unchanged,
    with the image.

    Args:
        axes: spatial axes (0, 1, 2) of missing slices to interpolate, or ``None`` to detect them.
        soft: return the confidence mask; otherwise the mask as it was.
        scale: distance (voxels) at which the confidence is 1/2.

    Example:
        >>> img = torch.arange(6.0).reshape(1, 1, 1, 6); mask = torch.tensor([1.0, 0, 0, 1, 1, 1]).reshape(1, 1, 1, 6)
        >>> x, m = InterpolateMissing()(img * mask, mask)
        >>> x.flatten(), m.flatten()
        (tensor([0., 1., 2., 3., 4., 5.]), tensor([1.0000, 0.5000, 0.5000, 1.0000, 1.0000, 1.0000]))
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, axes: Sequence[int] | int | None = None, soft: bool = True, scale: float = 1.0) -> None:
        self.axes = None if axes is None else tuple(ensure_tuple(axes))
        for axis in self.axes or ():
            if axis not in (0, 1, 2):
                raise ValueError(f"axes: spatial axes are 0, 1 or 2, got {axis}")
        if not scale > 0:
            raise ValueError(f"scale: expected a distance > 0 (voxels), got {scale}")
        self.soft, self.scale = soft, float(scale)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        check_volume(img)
        weights = _weights(mask, img)
        valid = weights != 0
        if valid.all() or not valid.any():
            return img, mask
        # whatever the holes held (NaN too) is not data
        x = torch.where(valid, convert_to_tensor(img, track_meta=False, dtype=torch.float32), 0.0)
        presence = _slice_presence(valid[0])
        missing = _missing_axes(presence)
        slices = torch.zeros((1, 1, 1), dtype=torch.bool, device=valid.device)  # voxels of interpolated slices
        for axis in missing if self.axes is None else [a for a in self.axes if a in missing]:
            x = _interpolate_slices(x, presence[axis], 1 + axis)
            slices = slices | ~_along(presence[axis], axis)
        filled = valid[0] | slices
        if not filled.all():
            x = self._normalized_convolution(x, filled)
        out_mask = weights
        if self.soft:
            distance = _hole_distance(valid[0], presence)
            out_mask = torch.where(valid, weights, 1.0 / (1.0 + distance / self.scale))
        return convert_to_dst_type(x, img, dtype=img.dtype)[0], _as_mask(out_mask, mask)

    @staticmethod
    def _normalized_convolution(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        w = known.cpu().numpy().astype(np.float64)
        data = x.cpu().numpy().astype(np.float64)
        out, todo, sigma = data.copy(), ~known.cpu().numpy(), 1.0
        while todo.any():
            den = ndimage.gaussian_filter(w, sigma, mode="constant")
            reach = todo & (den > 1e-6)
            for c in range(data.shape[0]):
                num = ndimage.gaussian_filter(data[c] * w, sigma, mode="constant")
                out[c][reach] = num[reach] / den[reach]
            todo &= ~reach
            sigma *= 2
        return torch.as_tensor(out, dtype=x.dtype, device=x.device)


class InterpolateMissingd(MapTransform):
    """Fill the missing voxels of image keys and, with ``soft``, replace the mask by the confidence of each
    voxel; see :class:`InterpolateMissing`. The mask is computed from the first
    image key (all keys share one mask).

    Args:
        keys: image keys.
        mask_key: key of the validity mask.
        axes: spatial axes of missing slices to interpolate, or ``None`` to detect them from the mask.
        soft: write the confidence mask to ``mask_key``; otherwise leave the mask as it is.
        scale: distance (voxels) at which a filled voxel's confidence is 1/2.
        allow_missing_keys: skip absent keys.

    Example:
        >>> img = torch.ones(1, 2, 2, 4); mask = torch.ones(1, 2, 2, 4); mask[..., 1] = 0
        >>> d = InterpolateMissingd("image")({"image": img * mask, "mask": mask})
        >>> d["image"][0, 0, 0], d["mask"][0, 0, 0]
        (tensor([1., 1., 1., 1.]), tensor([1.0000, 0.5000, 1.0000, 1.0000]))
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        axes: Sequence[int] | int | None = None,
        soft: bool = True,
        scale: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.transform = InterpolateMissing(axes, soft, scale)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        mask, new_mask = None, None
        for key in self.key_iterator(d):
            mask = _get_mask(d, self.mask_key, key) if mask is None else mask
            d[key], out = self.transform(d[key], mask)
            new_mask = out if new_mask is None else new_mask
        if new_mask is not None:
            d[self.mask_key] = new_mask
        return d
