"""Dictionary versions of :mod:`pconv3d.transforms.array`: they route keys, the array transforms do the work.

The validity mask lives under ``mask_key`` (default ``"mask"``), ``(1, X, Y, Z)`` float32, 1 = valid. Transforms
that simulate missing data make one draw per sample and apply it to every key in ``keys`` (the images, which
are zero-filled) and to the mask; labels are not listed in ``keys`` and stay untouched.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_tensor, ensure_tuple

from pconv3d.transforms.array import (
    REGION_SHAPES,
    SLICE_PATTERNS,
    DeriveMask,
    DropSlices,
    MaskRegions,
    FillHoles,
    InterpolateMissing,
    InterpolateSlices,
    MaskedNormalizeIntensity,
    MaskedScaleIntensityRangePercentiles,
    OneHotAnnotated,
    RandDropSlices,
    RandMaskRegions,
    ValidFgBgToIndices,
    _SimulateHoles,
    check_mask_values,
    check_same_grid,
    check_volume,
    combine_mask,
)

__all__ = [
    "MaskRegionsd",
    "CheckGridd",
    "DeriveMaskd",
    "FillHolesd",
    "MaskedNormalizeIntensityd",
    "MaskedScaleIntensityRangePercentilesd",
    "ValidFgBgToIndicesd",
    "OneHotAnnotatedd",
    "DropSlicesd",
    "RandDropSlicesd",
    "RandMaskRegionsd",
]


def _get_mask(d: Mapping[Hashable, Any], mask_key: Hashable, key: Hashable) -> NdarrayOrTensor:
    if mask_key not in d:
        raise KeyError(f"no validity mask '{mask_key}' for '{key}'; run DeriveMaskd (or DropSlicesd) first")
    check_mask_values(d[mask_key], f"'{mask_key}'")
    return d[mask_key]


class CheckGridd(MapTransform):
    """Check that every key holds a channel-first 3D volume on the grid (shape, affine) of ``ref_key``.

    Put it right after ``LoadImaged``/``EnsureChannelFirstd`` so that an image, label and mask that disagree
    fail with a message naming the keys, the files and what differs, instead of deep inside a later transform.

    Args:
        keys: keys to check (``ref_key`` may be among them).
        ref_key: the reference key. Default ``"image"``.
        allow_missing_keys: skip absent keys.

    Example:
        >>> CheckGridd(["image", "label"])({"image": torch.zeros(1, 4, 4, 4), "label": torch.zeros(1, 4, 4, 5)})
        Traceback (most recent call last):
        ValueError: 'label' does not match 'image': shape (4, 4, 5) differs from (4, 4, 4)
    """

    backend = DeriveMask.backend

    def __init__(self, keys: KeysCollection, ref_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        ref = d[self.ref_key]
        check_volume(ref, f"'{self.ref_key}'")
        for key in self.key_iterator(d):
            check_volume(d[key], f"'{key}'")
            check_same_grid(d[key], ref, f"'{key}'", f"'{self.ref_key}'")
        return d


class DeriveMaskd(MapTransform):
    """Derive the validity mask of image keys (see :class:`~pconv3d.transforms.array.DeriveMask`) and zero
    their holes.

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


class _MaskedKeysd(MapTransform):
    """Routes each key to ``transform(d[key], d[mask_key])``."""

    def __init__(self, keys: KeysCollection, transform: Transform, mask_key: str, allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.mask_key = mask_key
        self.backend = transform.backend

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], _get_mask(d, self.mask_key, key))
        return d


class FillHolesd(_MaskedKeysd):
    """Set the holes (``d[mask_key] == 0``) of image keys to ``value``; see
    :class:`~pconv3d.transforms.array.FillHoles`. Use it after interpolating transforms, which blur image values
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


class InterpolateSlicesd(_MaskedKeysd):
    """Fill missing slices of image keys by linear interpolation; see
    :class:`~pconv3d.transforms.array.InterpolateSlices`. The mask is left as it is.

    Args:
        keys: image keys.
        mask_key: key of the validity mask.
        axis: spatial axis of the slices.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "mask", axis: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, InterpolateSlices(axis), mask_key, allow_missing_keys)


class InterpolateMissingd(MapTransform):
    """Fill the missing voxels of image keys and, with ``soft``, replace the mask by the confidence of each
    voxel; see :class:`~pconv3d.transforms.array.InterpolateMissing`. The mask is computed from the first
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


class MaskedNormalizeIntensityd(_MaskedKeysd):
    """Z-score image keys with statistics of valid voxels only; see
    :class:`~pconv3d.transforms.array.MaskedNormalizeIntensity`.

    Args:
        keys: image keys.
        mask_key: key of the validity mask.
        channel_wise: statistics per channel.
        dtype: output dtype.
        allow_missing_keys: skip absent keys.

    Example:
        >>> image = torch.tensor([1.0, 3.0, 9.0]).reshape(1, 3, 1, 1)
        >>> mask = torch.tensor([1.0, 1, 0]).reshape(1, 3, 1, 1)
        >>> MaskedNormalizeIntensityd("image")({"image": image, "mask": mask})["image"].flatten()
        tensor([-1.,  1.,  0.])
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        channel_wise: bool = True,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, MaskedNormalizeIntensity(channel_wise, dtype), mask_key, allow_missing_keys)


class MaskedScaleIntensityRangePercentilesd(_MaskedKeysd):
    """Percentile scaling of image keys with percentiles of valid voxels only; see
    :class:`~pconv3d.transforms.array.MaskedScaleIntensityRangePercentiles`.

    Args:
        keys: image keys.
        mask_key: key of the validity mask.
        lower: lower percentile (0-100).
        upper: upper percentile (0-100).
        b_min: output value of the lower percentile.
        b_max: output value of the upper percentile.
        clip: clip to ``[b_min, b_max]``.
        channel_wise: percentiles per channel.
        dtype: output dtype.
        allow_missing_keys: skip absent keys.

    Example:
        >>> t = MaskedScaleIntensityRangePercentilesd("image", lower=1, upper=99, clip=True)
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        lower: float = 0.5,
        upper: float = 99.5,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = False,
        channel_wise: bool = True,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = MaskedScaleIntensityRangePercentiles(lower, upper, b_min, b_max, clip, channel_wise, dtype)
        super().__init__(keys, transform, mask_key, allow_missing_keys)


class ValidFgBgToIndicesd(MapTransform):
    """Foreground/background indices of label keys restricted to valid voxels, for
    ``RandCropByPosNegLabeld(fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices")``;
    see :class:`~pconv3d.transforms.array.ValidFgBgToIndices`.

    Compute them right before the crop (after every transform that changes geometry), and drop the index keys
    after cropping (``DeleteItemsd``): their lengths differ between samples, so they cannot be collated.

    Args:
        keys: label keys; the indices go to ``f"{key}{fg_postfix}"`` and ``f"{key}{bg_postfix}"``.
        mask_key: key of the validity mask.
        fg_postfix: postfix of the foreground-indices key.
        bg_postfix: postfix of the background-indices key.
        allow_missing_keys: skip absent keys.

    Example:
        >>> label = torch.tensor([0.0, 1, 1, 0]).reshape(1, 4, 1, 1)
        >>> mask = torch.tensor([1.0, 1, 0, 0]).reshape(1, 4, 1, 1)
        >>> out = ValidFgBgToIndicesd("label")({"label": label, "mask": mask})
        >>> out["label_fg_indices"], out["label_bg_indices"]
        (tensor([1]), tensor([0]))
    """

    backend = ValidFgBgToIndices.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        fg_postfix: str = "_fg_indices",
        bg_postfix: str = "_bg_indices",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.fg_postfix, self.bg_postfix = mask_key, fg_postfix, bg_postfix
        self.converter = ValidFgBgToIndices()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            fg, bg = self.converter(d[key], _get_mask(d, self.mask_key, key))
            d[f"{key}{self.fg_postfix}"], d[f"{key}{self.bg_postfix}"] = fg, bg
        return d


class OneHotAnnotatedd(MapTransform):
    """One-hot label keys whose unannotated voxels (``ignore_index``) are 0 in every channel, and the same voxels
    set to 0 in one-hot predictions, so that a metric over them (MONAI's ``MeanDice``) leaves those voxels out;
    see :class:`~pconv3d.transforms.array.OneHotAnnotated`. Use it in place of ``AsDiscreted``'s ``to_onehot``
    for the label, after ``AsDiscreted(argmax=True, to_onehot=num_classes)`` of the predictions.

    Args:
        keys: label keys (class indices ``(1, X, Y, Z)``), each replaced by its one-hot.
        num_classes: classes, background (0) included.
        ignore_index: the label value of unannotated voxels (``None``: every voxel is annotated).
        pred_keys: one-hot prediction keys, set to 0 wherever a label key is unannotated.
        allow_missing_keys: skip absent keys.

    Example:
        >>> label = torch.tensor([1, 255, 0, 1]).reshape(1, 4, 1, 1)
        >>> pred = torch.tensor([[0.0, 0, 1, 0], [1, 1, 0, 1]]).reshape(2, 4, 1, 1)
        >>> d = OneHotAnnotatedd("label", 2, ignore_index=255, pred_keys="pred")({"label": label, "pred": pred})
        >>> d["label"][1].flatten(), d["pred"][1].flatten()
        (tensor([1., 0., 0., 1.]), tensor([1., 0., 0., 1.]))
    """

    backend = OneHotAnnotated.backend

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        ignore_index: int | None = None,
        pred_keys: KeysCollection = (),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.one_hot = OneHotAnnotated(num_classes, ignore_index)
        self.pred_keys = ensure_tuple(pred_keys)
        self.fill = FillHoles()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.one_hot(d[key])
            annotated = convert_to_tensor(d[key], track_meta=False).any(0, keepdim=True)
            for pred_key in self.pred_keys:
                d[pred_key] = self.fill(d[pred_key], annotated)
        return d


class _SimulateHolesd(MapTransform):
    """Routes a missing-data simulator: one draw per sample (from the first key), the same holes in every image
    key, the mask (created all-valid when absent) updated, other keys untouched."""

    backend = _SimulateHoles.backend

    def __init__(
        self, keys: KeysCollection, simulator: _SimulateHoles, mask_key: str, allow_missing_keys: bool
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.simulator = simulator
        self.mask_key = mask_key
        self.filler = FillHoles()

    def _active(self, img: NdarrayOrTensor) -> bool:
        """Whether to add holes to this sample (random subclasses draw here)."""
        return True

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        img = d[first]
        check_volume(img, f"'{first}'")
        keep = self.simulator.keep_mask(img) if self._active(img) else None
        mask = d.get(self.mask_key)
        if mask is not None:
            check_mask_values(mask, f"'{self.mask_key}'")
        mask = combine_mask(mask, keep, img)
        for key in self.key_iterator(d):
            d[key] = self.filler(d[key], mask)
        d[self.mask_key] = mask
        return d


class DropSlicesd(_SimulateHolesd):
    """Deterministic slice dropping for evaluation at an exact missing fraction; see
    :class:`~pconv3d.transforms.array.DropSlices` (per-case patterns from the seed and the first key's file name).

    Args:
        keys: image keys (zero-filled); the label is not listed and stays untouched.
        mask_key: key of the mask, created all-valid if absent.
        axis: spatial axis of the slices. Default 2.
        fraction: fraction of slices to drop.
        pattern: ``"random"``, ``"regular"`` or ``"block"``.
        seed: base seed.
        per_case: mix the source file name into the seed.
        allow_missing_keys: skip absent keys.

    Example:
        >>> d = DropSlicesd("image", fraction=0.5, pattern="regular")({"image": torch.ones(1, 4, 4, 8)})
        >>> float(d["mask"].mean())
        0.5
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        axis: int = 2,
        fraction: float = 0.5,
        pattern: str = "random",
        seed: int = 0,
        per_case: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, DropSlices(axis, fraction, pattern, seed, per_case), mask_key, allow_missing_keys)


class MaskRegionsd(_SimulateHolesd):
    """Deterministic masked regions for evaluation at an exact missing fraction; see
    :class:`~pconv3d.transforms.array.MaskRegions` (per-case boxes from the seed and the first key's file name).

    Args:
        keys: image keys (zero-filled); the label is not listed and stays untouched.
        mask_key: key of the mask, created all-valid if absent.
        fraction: fraction of the volume to mask.
        size: range of each box's extent as a fraction of the volume's extent per axis.
        seed: base seed.
        per_case: mix the source file name into the seed.
        allow_missing_keys: skip absent keys.

    Example:
        >>> d = MaskRegionsd("image", fraction=0.5)({"image": torch.ones(1, 8, 8, 8)})
        >>> float(d["mask"].mean()) <= 0.5
        True
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        fraction: float = 0.25,
        size: Sequence[float] = (0.2, 0.4),
        seed: int = 0,
        per_case: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, MaskRegions(fraction, size, seed, per_case), mask_key, allow_missing_keys)


class _RandSimulateHolesd(RandomizableTransform, _SimulateHolesd):
    """Random version: the wrapper draws whether to act (``prob``), the simulator draws the holes."""

    def __init__(
        self,
        keys: KeysCollection,
        simulator: RandDropSlices | RandMaskRegions,
        mask_key: str,
        prob: float,
        allow_missing_keys: bool,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        _SimulateHolesd.__init__(self, keys, simulator, mask_key, allow_missing_keys)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> _RandSimulateHolesd:
        super().set_random_state(seed, state)
        self.simulator.set_random_state(seed, state)
        return self

    def _active(self, img: NdarrayOrTensor) -> bool:
        self.randomize(None)
        if self._do_transform:
            self.simulator.randomize(img.shape[1:])
        return self._do_transform


class RandDropSlicesd(_RandSimulateHolesd):
    """Randomly drop slices in image keys (zero-filled) and the mask, leaving labels untouched; see
    :class:`~pconv3d.transforms.array.RandDropSlices`. The mask is created all-valid when absent, so every
    sample has one whether or not slices were dropped.

    Args:
        keys: image keys.
        mask_key: key of the mask.
        prob: probability of dropping slices in a sample.
        axes: spatial axes to choose from.
        fraction: ``(low, high)`` range of the dropped fraction.
        patterns: patterns to choose from (``"random"``, ``"regular"``, ``"block"``).
        allow_missing_keys: skip absent keys.

    Example:
        >>> t = RandDropSlicesd("image", fraction=0.5, patterns="regular").set_random_state(0)
        >>> float(t({"image": torch.ones(1, 4, 4, 8)})["mask"].mean())
        0.5
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        prob: float = 1.0,
        axes: Sequence[int] | int = (2,),
        fraction: Sequence[float] | float = (0.1, 0.5),
        patterns: Sequence[str] | str = SLICE_PATTERNS,
        allow_missing_keys: bool = False,
    ) -> None:
        simulator = RandDropSlices(1.0, axes, fraction, patterns)
        super().__init__(keys, simulator, mask_key, prob, allow_missing_keys)


class RandMaskRegionsd(_RandSimulateHolesd):
    """Random 3D holes (boxes, free-form blobs) in image keys (zero-filled) and the mask, leaving labels
    untouched; see :class:`~pconv3d.transforms.array.RandMaskRegions`.

    Args:
        keys: image keys.
        mask_key: key of the mask, created all-valid if absent.
        prob: probability of adding holes to a sample.
        num_regions: inclusive range of the number of regions.
        size: range of region extents as fractions of the volume's extents.
        shapes: shapes to choose from (``"box"``, ``"blob"``).
        roughness: blob boundary perturbation.
        allow_missing_keys: skip absent keys.

    Example:
        >>> d = RandMaskRegionsd("image").set_random_state(0)({"image": torch.ones(1, 16, 16, 16)})
        >>> bool(d["mask"].min() == 0)
        True
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        prob: float = 1.0,
        num_regions: Sequence[int] | int = (1, 3),
        size: Sequence[float] | float = (0.1, 0.35),
        shapes: Sequence[str] | str = REGION_SHAPES,
        roughness: float = 0.35,
        allow_missing_keys: bool = False,
    ) -> None:
        simulator = RandMaskRegions(1.0, num_regions, size, shapes, roughness)
        super().__init__(keys, simulator, mask_key, prob, allow_missing_keys)
