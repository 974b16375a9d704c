"""Array transforms for volumes with missing data.

Conventions shared by everything in :mod:`pconv3d.transforms`:

* an image is channel-first ``(C, X, Y, Z)``, as after MONAI's ``EnsureChannelFirst``;
* a validity mask is ``(1, X, Y, Z)`` on the image's grid with the meaning of valid of :mod:`pconv3d.masks.carrier`:
  bool/integer masks are nonzero = valid, floating masks are weights in [0, 1] (0 = missing, 1 = valid);
  a floating mask with values outside [0, 1] or NaN is refused with a ``ValueError``. Masks made here are
  float32, and floating weights pass through unchanged (a new hole sets a weight to 0); when the image is a
  ``MetaTensor`` the mask is one too, with a copy of the image's metadata (affine included);
* after any transform here the holes (weight 0) of an image are exact zeros (never NaN).

Transforms that produce an image and a mask return ``(image, mask)``; their dictionary versions in
:mod:`pconv3d.transforms.dictionary` route keys and make one draw per sample for every key.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import RandomizableTransform, Transform
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import ImageMetaKey, TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple
from scipy import ndimage

from pconv3d.io.datalist import grid_mismatch

__all__ = [
    "MaskRegions",
    "SLICE_PATTERNS",
    "REGION_SHAPES",
    "check_volume",
    "check_same_grid",
    "check_mask_values",
    "combine_mask",
    "drop_slice_pattern",
    "DeriveMask",
    "FillHoles",
    "InterpolateMissing",
    "hole_distance",
    "missing_slice_axes",
    "MaskedNormalizeIntensity",
    "MaskedScaleIntensityRangePercentiles",
    "ValidFgBgToIndices",
    "OneHotAnnotated",
    "DropSlices",
    "RandDropSlices",
    "RandMaskRegions",
]

SLICE_PATTERNS = ("random", "regular", "block")
REGION_SHAPES = ("box", "blob")


def _source(x: NdarrayOrTensor) -> str:
    """`` 'file.nii.gz'`` when ``x`` remembers the file it came from, else ``""`` (for error messages)."""
    name = x.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(x, MetaTensor) else None
    return f" '{name}'" if isinstance(name, (str, os.PathLike)) and str(name) else ""


def check_volume(x: NdarrayOrTensor, name: str = "image") -> None:
    """Raise ``ValueError`` unless ``x`` is a channel-first 3D volume ``(C, X, Y, Z)``.

    Args:
        x: the array.
        name: what to call it in the message (a key name, say).

    Example:
        >>> check_volume(torch.zeros(1, 8, 8))
        Traceback (most recent call last):
        ValueError: image: expected a channel-first 3D volume (C, X, Y, Z), got shape (1, 8, 8)
    """
    if x.ndim != 4:
        raise ValueError(
            f"{name}{_source(x)}: expected a channel-first 3D volume (C, X, Y, Z), got shape {tuple(x.shape)}"
        )


def check_same_grid(x: NdarrayOrTensor, ref: NdarrayOrTensor, name: str = "mask", ref_name: str = "image") -> None:
    """Raise ``ValueError`` unless ``x`` and ``ref`` have the same spatial shape (and affine, for MetaTensors).

    Args:
        x: the array to check, channel-first.
        ref: the reference array, channel-first.
        name: what to call ``x`` in the message.
        ref_name: what to call ``ref`` in the message.

    Example:
        >>> check_same_grid(torch.zeros(1, 8, 8, 8), torch.zeros(1, 8, 8, 9), "label")
        Traceback (most recent call last):
        ValueError: label does not match image: shape (8, 8, 8) differs from (8, 8, 9)
    """
    both_meta = isinstance(x, MetaTensor) and isinstance(ref, MetaTensor)
    affine, ref_affine = (np.asarray(x.affine), np.asarray(ref.affine)) if both_meta else (np.eye(4), np.eye(4))
    problem = grid_mismatch(x.shape[1:], affine, ref.shape[1:], ref_affine)
    if problem:
        raise ValueError(f"{name}{_source(x)} does not match {ref_name}{_source(ref)}: {problem}")


def check_mask_values(mask: NdarrayOrTensor, name: str = "mask") -> None:
    """Raise ``ValueError`` unless ``mask`` is bool/integer or holds weights in [0, 1] (no NaN).

    Args:
        mask: the mask.
        name: what to call it in the message (its key).

    Example:
        >>> check_mask_values(torch.tensor([0.0, 1.0, 255.0]), "'mask'")
        Traceback (most recent call last):
        ValueError: 'mask': a floating validity mask holds weights in [0, 1], found 255.0 (store binary masks as bool or integer, or rescale)
    """
    m = convert_to_tensor(mask, track_meta=False)
    if not m.is_floating_point() or m.numel() == 0:
        return
    bad = m[torch.isnan(m) | (m < 0) | (m > 1)]
    if bad.numel():
        raise ValueError(
            f"{name}{_source(mask)}: a floating validity mask holds weights in [0, 1], found {bad[0].item()} "
            "(store binary masks as bool or integer, or rescale)"
        )


def _weights(mask: NdarrayOrTensor, img: NdarrayOrTensor) -> torch.Tensor:
    """``mask`` as float32 weights ``(1, X, Y, Z)`` on ``img``'s device (bool/integer: 1 where nonzero), after
    checking that it fits ``img`` and holds weights in [0, 1]."""
    check_volume(mask, "mask")
    if mask.shape[0] != 1:
        raise ValueError(f"mask{_source(mask)}: expected one channel (1, X, Y, Z), got shape {tuple(mask.shape)}")
    check_same_grid(mask, img)
    check_mask_values(mask)
    device = img.device if isinstance(img, torch.Tensor) else None
    m = convert_to_tensor(mask, track_meta=False, device=device)
    return m.to(torch.float32) if m.is_floating_point() else (m != 0).to(torch.float32)


def _valid(mask: NdarrayOrTensor, img: NdarrayOrTensor) -> torch.Tensor:
    """Boolean ``(1, X, Y, Z)`` validity of ``mask`` (a nonzero weight), on ``img``'s device (see :func:`_weights`)."""
    return _weights(mask, img) != 0


def _as_mask(weights: torch.Tensor, like: NdarrayOrTensor) -> NdarrayOrTensor:
    """``weights`` (bool or float) as a float32 mask of ``like``'s type and device, carrying ``like``'s metadata."""
    return convert_to_dst_type(weights, like, dtype=torch.float32)[0]


def _fill(img: NdarrayOrTensor, valid: torch.Tensor, value: float = 0.0) -> NdarrayOrTensor:
    """``img`` with ``value`` wherever ``valid`` is False (NaN and inf there too); type and metadata kept."""
    x = convert_to_tensor(img, track_meta=False)
    out = torch.where(valid.to(x.device), x, torch.tensor(value, dtype=x.dtype, device=x.device))
    return convert_to_dst_type(out, img)[0]


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
        data = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        dim = 1 + self.axis
        valid = _valid(mask, img)
        present = valid.movedim(dim, 0).reshape(valid.shape[dim], -1).any(1).cpu()
        if present.all() or not present.any():
            return img
        n = present.numel()
        known = torch.nonzero(present).flatten()
        pos = torch.arange(n, dtype=torch.float32)
        # for every slice: the valid slices just below and above it, and its weight between them
        upper = torch.searchsorted(known, torch.arange(n)).clamp(max=known.numel() - 1)
        lower = (upper - (known[upper] > torch.arange(n)).long()).clamp(min=0)
        lo, hi = known[lower], known[upper]
        span = (hi - lo).clamp(min=1).float()
        w = ((pos - lo.float()) / span).clamp(0, 1)
        shape = [1] * data.dim()
        shape[dim] = n
        filled = data.index_select(dim, lo) * (1 - w).view(shape) + data.index_select(dim, hi) * w.view(shape)
        out = torch.where(present.view(shape), data, filled)
        return convert_to_dst_type(out, img, dtype=img.dtype)[0]


def missing_slice_axes(mask: NdarrayOrTensor) -> tuple[int, ...]:
    """Spatial axes (0, 1, 2) along which at least one whole slice of ``mask`` ``(1, X, Y, Z)`` is missing
    while another is not: the axes a slice interpolation can fill.

    Example:
        >>> m = torch.ones(1, 4, 4, 6); m[..., 2] = 0
        >>> missing_slice_axes(m)
        (2,)
    """
    valid = convert_to_tensor(mask, track_meta=False) != 0
    axes = []
    for axis in range(3):
        present = valid.movedim(1 + axis, 0).reshape(valid.shape[1 + axis], -1).any(1)
        if present.any() and not present.all():
            axes.append(axis)
    return tuple(axes)


def hole_distance(valid: torch.Tensor) -> torch.Tensor:
    """Euclidean distance (voxels, float32) from each voxel of a spatial boolean ``valid`` ``(X, Y, Z)`` to the
    nearest valid voxel: 0 on valid voxels.

    Where every hole is a whole slice along one axis, the nearest valid voxel lies in the nearest acquired slice
    at the same in-plane position, so the distance is the one-dimensional distance along that axis: computed in
    torch on ``valid``'s device, exactly what the full transform gives and a fraction of its time. Other holes
    take scipy's exact Euclidean distance transform.

    Example:
        >>> valid = torch.ones(2, 2, 5, dtype=torch.bool); valid[..., 1:4] = False
        >>> hole_distance(valid)[0, 0]
        tensor([0., 1., 2., 1., 0.])
    """
    for axis in missing_slice_axes(valid[None]):
        present = valid.movedim(axis, 0).reshape(valid.shape[axis], -1).any(1)
        shape = [1, 1, 1]
        shape[axis] = -1
        if torch.equal(valid, present.view(shape).expand_as(valid)):
            return _slice_distance(present).view(shape).expand(valid.shape).to(torch.float32)
    hole = ~valid.cpu().numpy()
    return torch.as_tensor(ndimage.distance_transform_edt(hole), dtype=torch.float32, device=valid.device)


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
        x = convert_to_tensor(img, track_meta=False, dtype=torch.float32).clone()
        x[:, ~valid[0]] = 0  # whatever the holes held (NaN too) is not data
        for axis in missing_slice_axes(valid) if self.axes is None else self.axes:
            x = InterpolateSlices(axis)(x, valid)
        filled = valid[0] | self._whole_slices(valid)
        if not filled.all():
            x = self._normalized_convolution(x, filled)
        out_mask = weights
        if self.soft:
            distance = hole_distance(valid[0])
            out_mask = torch.where(valid, weights, 1.0 / (1.0 + distance / self.scale))
        return convert_to_dst_type(x, img, dtype=img.dtype)[0], _as_mask(out_mask, mask)

    def _whole_slices(self, valid: torch.Tensor) -> torch.Tensor:
        """Voxels of the whole missing slices that step 1 interpolated (between or beside acquired slices)."""
        done = torch.zeros(valid.shape[1:], dtype=torch.bool, device=valid.device)
        for axis in missing_slice_axes(valid) if self.axes is None else self.axes:
            present = valid[0].movedim(axis, 0).reshape(valid.shape[1 + axis], -1).any(1)
            if present.any():
                shape = [1, 1, 1]
                shape[axis] = -1
                done |= ~present.view(shape)
        return done

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


class _MaskedIntensity(Transform):
    """Base of masked normalizations: statistics from the valid voxels only, holes 0 in the output."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channel_wise: bool = True, dtype: torch.dtype = torch.float32) -> None:
        self.channel_wise = channel_wise
        self.dtype = dtype

    def _normalize(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` using the statistics of ``values`` (its valid voxels, at least one)."""
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor) -> NdarrayOrTensor:
        """Normalized ``img`` ``(C, X, Y, Z)``, statistics over voxels where ``mask`` ``(1, X, Y, Z)`` is 1.

        A channel without any valid voxel is returned as zeros.
        """
        check_volume(img)
        valid = _valid(mask, img)
        x = convert_to_tensor(img, track_meta=False).to(self.dtype)
        x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
        out = torch.zeros_like(x)
        groups = [slice(c, c + 1) for c in range(x.shape[0])] if self.channel_wise else [slice(None)]
        for group in groups:
            values = x[group][valid.expand_as(x[group])]
            if values.numel():
                out[group] = self._normalize(x[group], values)
        return convert_to_dst_type(torch.where(valid, out, torch.zeros_like(out)), img, dtype=self.dtype)[0]


class MaskedNormalizeIntensity(_MaskedIntensity):
    """Z-score normalization ``(x - mean) / std`` with mean and std of the valid voxels only; holes stay 0.

    A zero std (constant valid region) divides by 1.

    Args:
        channel_wise: statistics per channel (else over all channels together).
        dtype: output dtype.

    Example:
        >>> img = torch.tensor([1.0, 3.0, 100.0]).reshape(1, 3, 1, 1)
        >>> MaskedNormalizeIntensity()(img, torch.tensor([1.0, 1.0, 0.0]).reshape(1, 3, 1, 1)).flatten()
        tensor([-1.,  1.,  0.])
    """

    def _normalize(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        mean, std = values.double().mean(), values.double().std(unbiased=False)
        return ((x - mean) / (std if std > 0 else 1.0)).to(x.dtype)


class MaskedScaleIntensityRangePercentiles(_MaskedIntensity):
    """Map the ``lower``/``upper`` percentiles of the valid voxels to ``b_min``/``b_max``; holes stay 0.

    Args:
        lower: lower percentile (0-100).
        upper: upper percentile (0-100), greater than ``lower``.
        b_min: output value of the lower percentile.
        b_max: output value of the upper percentile.
        clip: clip the output to ``[b_min, b_max]``.
        channel_wise: percentiles per channel (else over all channels together).
        dtype: output dtype.

    Example:
        >>> img = torch.arange(5.0).reshape(1, 5, 1, 1)
        >>> mask = torch.tensor([1.0, 1, 1, 0, 0]).reshape(1, 5, 1, 1)
        >>> MaskedScaleIntensityRangePercentiles(0, 100, 0, 1)(img, mask).flatten()
        tensor([0.0000, 0.5000, 1.0000, 0.0000, 0.0000])
    """

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = False,
        channel_wise: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(channel_wise=channel_wise, dtype=dtype)
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self.lower, self.upper, self.b_min, self.b_max, self.clip = lower, upper, b_min, b_max, clip

    def _normalize(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        lo, hi = (float(v) for v in percentile(values, [self.lower, self.upper]))
        scale = (self.b_max - self.b_min) / (hi - lo) if hi > lo else 1.0
        out = (x - lo) * scale + self.b_min
        return out.clamp(min(self.b_min, self.b_max), max(self.b_min, self.b_max)) if self.clip else out


class ValidFgBgToIndices(Transform):
    """Flat indices of foreground and background voxels that are valid, for crop-centre sampling.

    Give the result to ``RandCropByPosNegLabeld(fg_indices_key=..., bg_indices_key=...)`` so that patch centres
    fall on valid voxels and training patches are not empty holes (MONAI's ``FgBgToIndices`` restricts only the
    background, by image intensity). Foreground is ``label > 0`` in any channel (background channel 0 of a
    one-hot label is ignored, as in MONAI). If the mask has no valid voxel at all, the indices ignore it (with a
    warning) so that cropping still works.

    Example:
        >>> label = torch.tensor([0.0, 1, 1, 0]).reshape(1, 4, 1, 1)
        >>> fg, bg = ValidFgBgToIndices()(label, torch.tensor([1.0, 1, 0, 0]).reshape(1, 4, 1, 1))
        >>> fg, bg
        (tensor([1]), tensor([0]))
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, label: NdarrayOrTensor, mask: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """``(fg_indices, bg_indices)``, 1D int64 on the CPU, of ``label`` ``(C, X, Y, Z)`` within ``mask``."""
        check_volume(label, "label")
        lab = convert_to_tensor(label, track_meta=False, device=torch.device("cpu"))
        if lab.shape[0] > 1:
            lab = lab[1:]
        fg = (lab > 0).any(0).flatten()
        valid = _valid(mask, label).cpu()[0].flatten()
        if not valid.any():
            warnings.warn(f"mask{_source(mask)} has no valid voxel; crop centres ignore it", stacklevel=2)
            valid = torch.ones_like(valid)
        out = (torch.nonzero(fg & valid).flatten(), torch.nonzero(~fg & valid).flatten())
        if isinstance(label, np.ndarray):
            return out[0].numpy(), out[1].numpy()
        return out


class OneHotAnnotated(Transform):
    """One-hot of a map of class indices in which one value marks unannotated voxels: those voxels are 0 in every
    channel, so that a metric over one-hot maps (Dice, surface distances) leaves them out when the prediction's
    one-hot is also set to 0 there (``onehot.any(0)`` is the annotated voxels).

    Args:
        num_classes: classes, background (0) included.
        ignore_index: the label value of unannotated voxels (``None``: every voxel is annotated).

    Example:
        >>> OneHotAnnotated(3, ignore_index=255)(torch.tensor([0, 2, 255]).reshape(1, 3, 1, 1))[:, :, 0, 0]
        tensor([[1., 0., 0.],
                [0., 0., 0.],
                [0., 1., 0.]])
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        """The float32 one-hot ``(num_classes, X, Y, Z)`` of ``label`` ``(1, X, Y, Z)``, of its type and device."""
        check_volume(label, "label")
        if label.shape[0] != 1:
            raise ValueError(
                f"label{_source(label)}: expected one channel of class indices, got shape {tuple(label.shape)}"
            )
        lab = convert_to_tensor(label, track_meta=False)[0]
        annotated = torch.ones_like(lab, dtype=torch.bool) if self.ignore_index is None else lab != self.ignore_index
        onehot = torch.nn.functional.one_hot(torch.where(annotated, lab, 0).long(), self.num_classes).movedim(-1, 0)
        return convert_to_dst_type(onehot * annotated, label, dtype=torch.float32)[0]


def drop_slice_pattern(n: int, fraction: float, pattern: str, rng: np.random.RandomState) -> np.ndarray:
    """Which of ``n`` slices are kept (True) when exactly ``round(fraction * n)`` of them are dropped.

    Patterns:

    * ``"random"``: dropped slices drawn uniformly without replacement;
    * ``"regular"``: dropped slices evenly spaced with a random phase, as in thick-slice or interleaved
      acquisitions (0.5: every other slice; 0.25: every 4th; 0.75: all but every 4th);
    * ``"block"``: one contiguous block at a random position (a truncated field of view, a lost slab).

    Args:
        n: number of slices.
        fraction: fraction to drop, in ``[0, 1]``.
        pattern: one of :data:`SLICE_PATTERNS`.
        rng: random state for the draw.

    Example:
        >>> drop_slice_pattern(8, 0.5, "regular", np.random.RandomState(0)).astype(int)
        array([1, 0, 1, 0, 1, 0, 1, 0])
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction of dropped slices must be in [0, 1], got {fraction}")
    if pattern not in SLICE_PATTERNS:
        raise ValueError(f"slice pattern must be one of {SLICE_PATTERNS}, got {pattern!r}")
    count = int(round(fraction * n))
    keep = np.ones(n, dtype=bool)
    if count == 0:
        return keep
    if pattern == "random":
        keep[rng.choice(n, size=count, replace=False)] = False
    elif pattern == "regular":
        step = n / count  # >= 1, so the floors below are distinct and stay below n
        keep[np.floor(rng.uniform(0, step) + step * np.arange(count)).astype(int)] = False
    else:
        start = rng.randint(0, n - count + 1)
        keep[start : start + count] = False
    return keep


class _SimulateHoles(Transform):
    """Base of missing-data simulators: a keep-mask (False = simulated hole) applied to an image and its mask.

    Subclasses implement ``_keep(spatial_shape, img)``. The image's holes become 0, the mask (created all-valid
    when ``None``) is ANDed with the keep-mask; labels are never passed here, so they stay untouched.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def _keep(self, spatial_shape: tuple[int, ...], img: NdarrayOrTensor) -> np.ndarray:
        """Boolean array broadcastable to ``spatial_shape``: False for the simulated holes."""
        raise NotImplementedError

    def keep_mask(self, img: NdarrayOrTensor) -> torch.Tensor:
        """The simulated holes for ``img`` as a boolean ``(1, X, Y, Z)`` tensor on its device (False = hole)."""
        check_volume(img)
        spatial_shape = tuple(img.shape[1:])
        keep = torch.as_tensor(np.broadcast_to(self._keep(spatial_shape, img), spatial_shape).copy())
        return keep[None].to(img.device if isinstance(img, torch.Tensor) else "cpu")

    def __call__(
        self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """``(image, mask)`` with the simulated holes; ``mask`` ``None`` starts from all-valid."""
        mask = combine_mask(mask, self.keep_mask(img), img)
        return _fill(img, _valid(mask, img)), mask


def _along(keep: np.ndarray, axis: int) -> np.ndarray:
    """A per-slice keep vector reshaped to broadcast along spatial ``axis``."""
    shape = [1, 1, 1]
    shape[axis] = -1
    return keep.reshape(shape)


class DropSlices(_SimulateHoles):
    """Deterministic slice dropping, for evaluation at an exact missing fraction (25, 50, 75 %, ...).

    The draw depends only on ``seed`` and, with ``per_case``, on the base name of the image's source file
    (``meta["filename_or_obj"]``), so every case gets its own pattern that is identical across runs, data
    loader workers and orderings (and MONAI's ``set_random_state`` does not change it: this is not a random
    transform).

    Args:
        axis: spatial axis of the slices (0, 1, 2 for X, Y, Z). Default 2.
        fraction: fraction of slices to drop; exactly ``round(fraction * n)`` are dropped.
        pattern: ``"random"``, ``"regular"`` or ``"block"`` (see :func:`drop_slice_pattern`).
        seed: base seed.
        per_case: mix the source file name into the seed.

    Example:
        >>> img, mask = DropSlices(axis=2, fraction=0.25, pattern="block")(torch.ones(1, 4, 4, 8))
        >>> int((mask[0, 0, 0] == 0).sum()), bool((img[mask == 0] == 0).all())
        (2, True)
    """

    def __init__(
        self, axis: int = 2, fraction: float = 0.5, pattern: str = "random", seed: int = 0, per_case: bool = True
    ) -> None:
        if axis not in (0, 1, 2):
            raise ValueError(f"spatial axis must be 0, 1 or 2, got {axis}")
        drop_slice_pattern(2, fraction, pattern, np.random.RandomState(0))  # validates fraction and pattern
        self.axis, self.fraction, self.pattern, self.seed, self.per_case = axis, fraction, pattern, seed, per_case

    def _keep(self, spatial_shape: tuple[int, ...], img: NdarrayOrTensor) -> np.ndarray:
        entropy = [self.seed]
        source = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
        if self.per_case and isinstance(source, (str, os.PathLike)):
            entropy.append(zlib.crc32(os.path.basename(str(source)).encode()))
        rng = np.random.RandomState(entropy)
        return _along(drop_slice_pattern(spatial_shape[self.axis], self.fraction, self.pattern, rng), self.axis)


class MaskRegions(_SimulateHoles):
    """Deterministic masked regions, for evaluation at an exact missing fraction: axis-aligned boxes, each
    ``size`` of the volume's extent per axis, added until at least ``fraction`` of the volume is missing.

    As for :class:`DropSlices`, the draw depends only on ``seed`` and, with ``per_case``, on the base name of
    the image's source file, so every case gets its own boxes, the same in every run and for every method.

    Args:
        fraction: fraction of the volume to mask, in [0, 1).
        size: ``(low, high)`` range of each box's extent as a fraction of the volume's extent per axis.
        seed: base seed.
        per_case: mix the source file name into the seed.

    Example:
        >>> img, mask = MaskRegions(fraction=0.25)(torch.ones(1, 16, 16, 16))
        >>> bool(0.25 <= 1 - mask.mean() < 1), bool((img[mask == 0] == 0).all())
        (True, True)
    """

    def __init__(
        self, fraction: float = 0.25, size: Sequence[float] = (0.2, 0.4), seed: int = 0, per_case: bool = True
    ) -> None:
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        size = ensure_tuple(size)
        if not 0 < float(size[0]) <= float(size[-1]) <= 1:
            raise ValueError(f"size must be a range of fractions 0 < low <= high <= 1, got {size}")
        self.fraction, self.size, self.seed, self.per_case = fraction, (float(size[0]), float(size[-1])), seed, per_case

    def _keep(self, spatial_shape: tuple[int, ...], img: NdarrayOrTensor) -> np.ndarray:
        source = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(img, MetaTensor) else None
        name = os.path.basename(str(source)) if self.per_case and isinstance(source, (str, os.PathLike)) else ""
        rng = np.random.default_rng([self.seed, *name.encode()])
        shape = np.array(spatial_shape)
        keep = np.ones(spatial_shape, dtype=bool)
        while 1 - keep.mean() < self.fraction:
            extent = np.maximum(1, (rng.uniform(*self.size, 3) * shape).astype(int))
            start = (rng.uniform(0, 1, 3) * (shape - extent + 1)).astype(int)
            keep[tuple(slice(a, a + e) for a, e in zip(start, extent))] = False
        return keep


class _RandHoles(RandomizableTransform, _SimulateHoles):
    """Base of random simulators: ``randomize`` stores one draw (``_sample``) that ``__call__`` applies."""

    def __init__(self, prob: float) -> None:
        RandomizableTransform.__init__(self, prob)
        self._draw: tuple[tuple[int, ...], np.ndarray] | None = None

    def _sample(self, spatial_shape: tuple[int, ...]) -> np.ndarray:
        """Draw holes for ``spatial_shape`` with ``self.R``: boolean, broadcastable, False = hole."""
        raise NotImplementedError

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        """Draw whether to add holes and, if so, the holes for a volume of ``spatial_shape``."""
        super().randomize(None)
        shape = tuple(int(s) for s in spatial_shape)
        self._draw = (shape, self._sample(shape)) if self._do_transform else None

    def _keep(self, spatial_shape: tuple[int, ...], img: NdarrayOrTensor) -> np.ndarray:
        if self._draw is None:
            return np.ones((1, 1, 1), dtype=bool)
        shape, keep = self._draw
        if shape != spatial_shape:
            raise ValueError(f"the current draw is for spatial shape {shape}, got {spatial_shape}; randomize first")
        return keep

    def __call__(
        self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None, randomize: bool = True
    ) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """``(image, mask)`` with new random holes; ``randomize=False`` reuses the current draw."""
        if randomize:
            check_volume(img)
            self.randomize(img.shape[1:])
        return _SimulateHoles.__call__(self, img, mask)


class RandDropSlices(_RandHoles):
    """Randomly drop slices (zero-filled in the image, 0 in the mask), for training with missing data.

    Each draw picks an axis from ``axes``, a pattern from ``patterns`` and a fraction uniformly in ``fraction``;
    see :func:`drop_slice_pattern` for the patterns. Randomness comes from ``self.R`` (``set_random_state``).

    Args:
        prob: probability of dropping slices at all.
        axes: spatial axes to choose from (0, 1, 2). Default ``(2,)``.
        fraction: ``(low, high)`` range of the dropped fraction, or a single fraction.
        patterns: patterns to choose from.

    Example:
        >>> t = RandDropSlices(fraction=0.25, patterns="block").set_random_state(0)
        >>> img, mask = t(torch.ones(1, 8, 8, 8))
        >>> int((mask[0, 0, 0] == 0).sum())
        2
    """

    def __init__(
        self,
        prob: float = 1.0,
        axes: Sequence[int] | int = (2,),
        fraction: Sequence[float] | float = (0.1, 0.5),
        patterns: Sequence[str] | str = SLICE_PATTERNS,
    ) -> None:
        super().__init__(prob)
        self.axes = tuple(ensure_tuple(axes))
        if not self.axes or any(a not in (0, 1, 2) for a in self.axes):
            raise ValueError(f"spatial axes must be among 0, 1, 2, got {axes}")
        fraction = ensure_tuple(fraction)
        self.fraction = (float(fraction[0]), float(fraction[-1]))
        self.patterns = tuple(ensure_tuple(patterns))
        if not self.patterns:
            raise ValueError("patterns must not be empty")
        for pattern in self.patterns:
            for f in self.fraction:
                drop_slice_pattern(2, f, pattern, np.random.RandomState(0))  # validates fractions and patterns

    def _sample(self, spatial_shape: tuple[int, ...]) -> np.ndarray:
        axis = self.axes[self.R.randint(len(self.axes))]
        pattern = self.patterns[self.R.randint(len(self.patterns))]
        fraction = self.R.uniform(*self.fraction)
        return _along(drop_slice_pattern(spatial_shape[axis], fraction, pattern, self.R), axis)


class RandMaskRegions(_RandHoles):
    """Random 3D holes: axis-aligned boxes and irregular free-form blobs (zero-filled image, 0 in the mask).

    Each region has extents drawn per axis as a fraction (``size``) of the volume's extent, so anisotropic grids
    get proportionate holes. A blob is an ellipsoid whose boundary is perturbed by smooth random noise
    (``roughness`` relative to its radius), which gives lesion- or artefact-like shapes.

    Args:
        prob: probability of adding holes at all.
        num_regions: ``(low, high)`` inclusive range of the number of regions, or a single number.
        size: ``(low, high)`` range of each region's extent as a fraction of the volume's extent per axis.
        shapes: region shapes to choose from: ``"box"``, ``"blob"``.
        roughness: amplitude of the blob boundary perturbation (0: plain ellipsoids).

    Example:
        >>> img, mask = RandMaskRegions(num_regions=2).set_random_state(0)(torch.ones(1, 16, 16, 16))
        >>> bool((img[mask == 0] == 0).all()), bool(0 < mask.mean() < 1)
        (True, True)
    """

    def __init__(
        self,
        prob: float = 1.0,
        num_regions: Sequence[int] | int = (1, 3),
        size: Sequence[float] | float = (0.1, 0.35),
        shapes: Sequence[str] | str = REGION_SHAPES,
        roughness: float = 0.35,
    ) -> None:
        super().__init__(prob)
        num_regions, size = ensure_tuple(num_regions), ensure_tuple(size)
        self.num_regions = (int(num_regions[0]), int(num_regions[-1]))
        self.size = (float(size[0]), float(size[-1]))
        self.shapes = tuple(ensure_tuple(shapes))
        if not 0 <= self.num_regions[0] <= self.num_regions[1]:
            raise ValueError(f"num_regions must be a range 0 <= low <= high, got {num_regions}")
        if not 0 < self.size[0] <= self.size[1] <= 1:
            raise ValueError(f"size must be a range of fractions 0 < low <= high <= 1, got {size}")
        if not self.shapes or any(s not in REGION_SHAPES for s in self.shapes):
            raise ValueError(f"shapes must be among {REGION_SHAPES}, got {shapes}")
        self.roughness = roughness

    def _sample(self, spatial_shape: tuple[int, ...]) -> np.ndarray:
        shape = np.asarray(spatial_shape)
        keep = np.ones(spatial_shape, dtype=bool)
        for _ in range(self.R.randint(self.num_regions[0], self.num_regions[1] + 1)):
            kind = self.shapes[self.R.randint(len(self.shapes))]
            half = np.maximum(self.R.uniform(*self.size, size=3) * shape / 2, 0.5)
            centre = self.R.uniform(0, shape)
            lo = np.clip(np.floor(centre - half), 0, shape).astype(int)
            hi = np.clip(np.ceil(centre + half), 0, shape).astype(int)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            keep[box] &= ~self._blob(lo, hi, centre, half) if kind == "blob" else False
        return keep

    def _blob(self, lo: np.ndarray, hi: np.ndarray, centre: np.ndarray, half: np.ndarray) -> np.ndarray:
        """Boolean blob in the box ``lo:hi``: where normalized radius plus smooth unit noise is below 1."""
        axes = [(np.arange(a, b) + 0.5 - c) / h for a, b, c, h in zip(lo, hi, centre, half)]
        radius = np.sqrt(sum(g**2 for g in np.meshgrid(*axes, indexing="ij")))
        noise = ndimage.gaussian_filter(self.R.standard_normal(radius.shape), sigma=np.maximum((hi - lo) / 4, 0.5))
        noise /= max(float(noise.std()), 1e-12)
        return radius + self.roughness * noise < 1.0
